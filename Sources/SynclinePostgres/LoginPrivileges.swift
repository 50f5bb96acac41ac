import Logging
import PostgresNIO

/// What the login `syncline serve` uses may do beyond what it needs (docs/security.md): being a
/// superuser, owning the syncline schema or a tracked table (either lets it run DDL, and an owner
/// is not subject to the table's row-level security), and tracked tables whose RLS the deployer
/// never said the feed policy covers (RLS enabled after `syncline.track`).
public struct LoginPrivileges: Sendable, Equatable {
    public var login: String
    public var isSuperuser: Bool
    public var ownsSynclineSchema: Bool
    /// Collections whose table the login owns (directly or through a role it inherits).
    public var ownedCollections: [String]
    /// Collections whose table has RLS enabled but was tracked without `rls => 'feed_policy_covers'`.
    public var unstatedRLS: [String]

    public static func read(_ connection: PostgresConnection, logger: Logger) async throws -> LoginPrivileges {
        let rows = try await connection.query("""
            SELECT current_user::text, r.rolsuper,
                   pg_has_role(current_user, (SELECT nspowner FROM pg_namespace WHERE nspname = 'syncline'), 'USAGE'),
                   coalesce((SELECT array_agg(c.name ORDER BY c.name) FROM syncline.collections c
                             JOIN pg_class t ON t.oid = c.relation WHERE pg_has_role(current_user, t.relowner, 'USAGE')), '{}'),
                   coalesce((SELECT array_agg(c.name ORDER BY c.name) FROM syncline.collections c
                             JOIN pg_class t ON t.oid = c.relation WHERE t.relrowsecurity AND c.rls IS NULL), '{}')
            FROM pg_roles r WHERE r.rolname = current_user
            """, logger: logger)
        for try await (login, superuser, schema, owned, unstated) in rows.decode((String, Bool, Bool, [String], [String]).self) {
            return LoginPrivileges(login: login, isSuperuser: superuser, ownsSynclineSchema: schema,
                                   ownedCollections: owned, unstatedRLS: unstated)
        }
        throw SynclinePostgresError(.unavailable, "could not read the login's privileges")
    }

    /// One sentence per finding; empty when the login is a least-privilege runtime role.
    public var findings: [String] {
        var out: [String] = []
        if isSuperuser {
            out.append("the login \(login) is a superuser: a bug or a leaked connection could read or change anything; "
                       + "serve with a runtime role (docs/security.md, `syncline migrate --grant-runtime ROLE`)")
        } else {
            if ownsSynclineSchema {
                out.append("the login \(login) owns the syncline schema (it can run DDL there); serve with a runtime role")
            }
            if !ownedCollections.isEmpty {
                out.append("the login \(login) owns the tracked tables \(ownedCollections.joined(separator: ", ")) "
                           + "(it can alter or drop them, and row-level security does not apply to it); serve with a runtime role")
            }
        }
        if !unstatedRLS.isEmpty {
            out.append("row-level security is enabled on the tracked tables \(unstatedRLS.joined(separator: ", ")) but does not filter "
                       + "feeds (their feed policy does); re-track them with rls => 'feed_policy_covers' once the feed policy covers them")
        }
        return out
    }
}
