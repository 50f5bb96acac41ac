import Foundation
import NIOSSL
import PostgresNIO

/// Connection settings parsed from a `postgres://user:password@host:port/database?sslmode=…` URL.
public struct PostgresSettings: Sendable, CustomStringConvertible {
    public var host: String
    public var port: Int
    public var username: String
    public var password: String?
    public var database: String
    public var sslMode: String

    public init(url: String) throws {
        guard let components = URLComponents(string: url),
              components.scheme == "postgres" || components.scheme == "postgresql",
              let host = components.host, !host.isEmpty
        else {
            throw SynclinePostgresError(.clusterSetup, "database URL must look like postgres://user@host:port/database")
        }
        self.host = host
        self.port = components.port ?? 5432
        self.username = components.user ?? "postgres"
        self.password = components.password
        let path = components.path.hasPrefix("/") ? String(components.path.dropFirst()) : components.path
        self.database = path.isEmpty ? self.username : path
        self.sslMode = components.queryItems?.first(where: { $0.name == "sslmode" })?.value ?? "prefer"
    }

    /// The URL without the password, for logs.
    public var description: String { "postgres://\(username)@\(host):\(port)/\(database)" }

    private var tls: PostgresConnection.Configuration.TLS {
        get throws {
            let loopback = host == "127.0.0.1" || host == "localhost" || host == "::1"
            switch sslMode {
            case "disable": return .disable
            case "require", "verify-ca", "verify-full":
                var tls = TLSConfiguration.makeClientConfiguration()
                if sslMode == "require" { tls.certificateVerification = .none }
                return .require(try NIOSSLContext(configuration: tls))
            default:
                if loopback { return .disable }
                var tls = TLSConfiguration.makeClientConfiguration()
                tls.certificateVerification = .none
                return .prefer(try NIOSSLContext(configuration: tls))
            }
        }
    }

    public func connectionConfiguration(applicationName: String) throws -> PostgresConnection.Configuration {
        var configuration = PostgresConnection.Configuration(
            host: host, port: port, username: username, password: password, database: database, tls: try tls)
        configuration.options.additionalStartupParameters = [("application_name", applicationName)] + Self.keepalive
        return configuration
    }

    public func clientConfiguration(applicationName: String, maximumConnections: Int) throws -> PostgresClient.Configuration {
        var configuration = PostgresClient.Configuration(
            host: host, port: port, username: username, password: password, database: database,
            tls: try clientTLS)
        configuration.options.maximumConnections = maximumConnections
        configuration.options.minimumConnections = 0
        configuration.options.additionalStartupParameters = [("application_name", applicationName)] + Self.keepalive
        return configuration
    }

    /// TCP keepalive on every Syncline connection, set as startup parameters so the backend probes
    /// its end (a peer gone without a FIN is found in about 10 + 3 × 5 s instead of hours).
    /// PostgresNIO 1.x exposes no socket options for the client's end (its bootstrap is internal);
    /// the lanes notice a closed connection through its close future, and PostgresClient pings
    /// idle pooled connections (its `keepAliveBehavior`, on by default).
    static let keepalive: [(String, String)] = [
        ("tcp_keepalives_idle", "10"), ("tcp_keepalives_interval", "5"), ("tcp_keepalives_count", "3"),
    ]

    private var clientTLS: PostgresClient.Configuration.TLS {
        get throws {
            let loopback = host == "127.0.0.1" || host == "localhost" || host == "::1"
            switch sslMode {
            case "disable": return .disable
            case "require", "verify-ca", "verify-full":
                var tls = TLSConfiguration.makeClientConfiguration()
                if sslMode == "require" { tls.certificateVerification = .none }
                return .require(tls)
            default:
                if loopback { return .disable }
                var tls = TLSConfiguration.makeClientConfiguration()
                tls.certificateVerification = .none
                return .prefer(tls)
            }
        }
    }
}

extension Error {
    /// The SQLSTATE of a Postgres server error, if this is one.
    public var sqlState: String? {
        (self as? PSQLError)?.serverInfo?[.sqlState]
    }
}
