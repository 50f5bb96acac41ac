import Logging
import NIOConcurrencyHelpers
import NIOCore
import PostgresNIO
import SynclineCore
import SynclineProtocol

/// Running one batch: one `apply_batch` round trip, re-runs one by one, rejects decided alone.
extension MutationExecutor {
    struct BatchFailure: Error {
        var sqlState: String?
        var underlying: any Error
    }

    /// A batch whose connection was lost before its result arrived; none of it was answered.
    struct BatchLost: Error {
        var batch: [Request]
        var underlying: any Error
    }

    func execute(_ batch: [Request], on connection: PostgresConnection) async throws {
        batchSizes.record(batch.count)
        let started = ContinuousClock.now
        defer { batchDuration.recordNanoseconds((ContinuousClock.now - started).nanosecondsClamped) }
        do {
            let outcomes = try await apply(batch, decided: [:], on: connection, timeout: configuration.batchTimeout)
            deliver(batch, outcomes)
        } catch let failure as BatchFailure where Self.isRetryableAlone(failure.sqlState) && batch.count > 1 {
            logger.info("mutation batch failed as a whole; re-running its members one by one", metadata: [
                "size": "\(batch.count)", "sqlstate": "\(failure.sqlState ?? "")",
            ])
            try await runOneByOne(batch, on: connection)
        } catch let failure as BatchFailure where Self.isRetryableAlone(failure.sqlState) {
            // Alone, past the batch limit (≥ its own): decided now.
            try await decideAlone(batch[0], after: failure, on: connection)
        } catch let failure as BatchFailure {
            logger.error("mutation batch failed", metadata: [
                "size": "\(batch.count)", "error": "\(String(reflecting: failure.underlying))",
            ])
            answer(batch, .error(.unavailable, message: "the mutation could not be applied right now; send it again", retryAfterMS: 500))
        } catch {
            // The connection is gone (or stopped answering): nobody knows whether the batch
            // committed. The lane re-runs it on its next connection (see `serve`).
            throw BatchLost(batch: batch, underlying: error)
        }
    }

    /// Timeouts, constraints checked at commit, serialization failures and deadlocks: a member
    /// alone may pass, or be found to be the culprit.
    static func isRetryableAlone(_ sqlState: String?) -> Bool {
        guard let sqlState else { return false }
        return sqlState == "57014" || sqlState.hasPrefix("23") || sqlState == "40001" || sqlState == "40P01" || sqlState == "55P03"
    }

    func runOneByOne(_ batch: [Request], on connection: PostgresConnection) async throws {
        try await setTimeout(configuration.mutationTimeout, on: connection)
        for (i, request) in batch.enumerated() {
            do {
                do {
                    let outcomes = try await apply([request], decided: [:], on: connection, timeout: configuration.mutationTimeout)
                    deliver([request], outcomes)
                } catch let failure as BatchFailure where Self.isRetryableAlone(failure.sqlState) {
                    try await decideAlone(request, after: failure, on: connection)
                } catch let failure as BatchFailure {
                    logger.error("mutation failed", metadata: ["error": "\(String(reflecting: failure.underlying))"])
                    answer([request], .error(.unavailable, message: "the mutation could not be applied right now; send it again", retryAfterMS: 500))
                }
            } catch {
                // decideAlone answered `request` already when it threw.
                answer(batch[(i + 1)...], .error(.unavailable, message: "the database connection was lost; send the mutation again", retryAfterMS: 500))
                throw error
            }
        }
        try await setTimeout(configuration.batchTimeout, on: connection)
    }

    /// A mutation that failed alone: a timeout or a constraint is its own doing and is decided as a
    /// reject (stored, `mid` consumed); lock trouble is not, and is answered `unavailable`.
    /// Answers `request` in every case; throws (after answering) when the connection is lost.
    func decideAlone(_ request: Request, after failure: BatchFailure, on connection: PostgresConnection) async throws {
        let state = failure.sqlState ?? ""
        let decision: (code: String, message: String)
        if state == "57014" {
            let ms = configuration.mutationTimeout.components.seconds * 1000 + configuration.mutationTimeout.components.attoseconds / 1_000_000_000_000_000
            decision = ("timeout", "the mutation ran longer than its time limit of \(ms) ms")
        } else if state == "23505" {
            decision = ("conflict", "a row with this key already exists")
        } else if state.hasPrefix("23") {
            decision = ("invalid", "the mutation violates a constraint of the data")
        } else {
            answer([request], .error(.unavailable, message: "the mutation met a concurrent one; send it again", retryAfterMS: 50))
            return
        }
        logger.info("mutation decided as a reject after failing alone", metadata: [
            "client_id": "\(request.clientID)", "mid": "\(request.mid)", "code": "\(decision.code)",
        ])
        do {
            let outcomes = try await apply([request], decided: [0: decision], on: connection, timeout: configuration.mutationTimeout)
            deliver([request], outcomes)
        } catch let failure as BatchFailure {
            logger.error("recording a rejected mutation failed", metadata: ["error": "\(String(reflecting: failure.underlying))"])
            answer([request], .error(.unavailable, message: "the mutation could not be applied right now; send it again", retryAfterMS: 500))
        } catch {
            answer([request], .error(.unavailable, message: "the outcome is unknown (database connection lost); send the mutation again", retryAfterMS: 500))
            throw error
        }
    }

    func setTimeout(_ timeout: Duration, on connection: PostgresConnection) async throws {
        let ms = max(1, timeout.components.seconds * 1000 + timeout.components.attoseconds / 1_000_000_000_000_000)
        try await connection.query(PostgresQuery(unsafeSQL: "SET statement_timeout = \(ms)"), logger: logger)
    }

    /// One `apply_batch` round trip. Throws `BatchFailure` for an error Postgres reported (the
    /// transaction rolled back, the connection is fine); anything else means the connection is lost.
    func apply(_ batch: [Request], decided: [Int: (code: String, message: String)], on connection: PostgresConnection,
                       timeout: Duration) async throws -> [MutationOutcome] {
        var json = "{\"role\":"
        if let role = configuration.role { json += JSONValue.quoted(role) } else { json += "null" }
        json += ",\"items\":["
        for (i, request) in batch.enumerated() {
            if i > 0 { json += "," }
            json += "{\"c\":\(JSONValue.quoted(request.clientID)),\"s\":\(JSONValue.quoted(request.sub)),\"m\":\(request.mid),"
            json += "\"n\":\(JSONValue.quoted(request.name)),\"a\":\(request.args),\"j\":\(JSONValue.quoted(request.claims))"
            if let d = decided[i] {
                json += ",\"d\":{\"code\":\(JSONValue.quoted(d.code)),\"message\":\(JSONValue.quoted(d.message))}"
            }
            json += "}"
        }
        json += "]}"
        let text: String
        do {
            text = try await Self.queryWithDeadline(
                "SELECT syncline.apply_batch(\(json)::jsonb)::text", on: connection, deadline: timeout + .seconds(5), logger: logger)
        } catch let error as PSQLError where error.serverInfo != nil && !(error.sqlState ?? "").hasPrefix("57P") {
            // Postgres answered and rolled back; the connection is fine. (57P01–57P05 — the
            // backend is being shut down or terminated — mean the connection is gone.)
            throw BatchFailure(sqlState: error.sqlState, underlying: error)
        }
        return try parse(text, count: batch.count)
    }

    /// Runs a one-value query, giving up (and closing the connection) when the deadline passes or
    /// the connection closes: a query caught by a dying connection is not guaranteed to return.
    static func queryWithDeadline(_ query: PostgresQuery, on connection: PostgresConnection, deadline: Duration,
                                          logger: Logger) async throws -> String {
        let settled = NIOLockedValueBox(false)
        return try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<String, any Error>) in
            @Sendable func settle(_ result: Result<String, any Error>) {
                guard settled.withLockedValue({ s in defer { s = true }; return !s }) else { return }
                continuation.resume(with: result)
            }
            let nanos = deadline.components.seconds * 1_000_000_000 + deadline.components.attoseconds / 1_000_000_000
            let timer = connection.eventLoop.scheduleTask(in: .nanoseconds(nanos)) {
                settle(.failure(MutationExecutorError.deadlineExceeded))
                let _: EventLoopFuture<Void> = connection.close()
            }
            connection.closeFuture.whenComplete { _ in settle(.failure(MutationExecutorError.connectionClosed)) }
            Task {
                do {
                    let rows = try await connection.query(query, logger: logger)
                    var value: String?
                    for try await row in rows.decode(String.self) { value = row }
                    timer.cancel()
                    if let value { settle(.success(value)) } else { settle(.failure(MutationExecutorError.emptyResult)) }
                } catch {
                    timer.cancel()
                    settle(.failure(error))
                }
            }
        }
    }

    func parse(_ text: String, count: Int) throws -> [MutationOutcome] {
        let value: JSONValue
        do { value = try JSONParser.parse(text) } catch { throw MutationExecutorError.malformedResult }
        guard case .array(let items)? = value["r"], items.count == count,
              case .number(let posText)? = value["pos"], let batchPosition = Int64(posText)
        else { throw MutationExecutorError.malformedResult }
        return items.map { item in
            let duplicate = item["dup"] == .bool(true)
            switch item["k"]?.stringValue {
            case "ack":
                var position = batchPosition
                if case .number(let p)? = item["pos"], let own = Int64(p) { position = own }
                return .ack(position: position, result: item["result"]?.jsonText ?? "null", duplicate: duplicate)
            case "reject":
                if let log = item["log"]?.stringValue {
                    logger.warning("mutator failed", metadata: ["postgres": "\(log)"])
                }
                return .reject(code: item["code"]?.stringValue ?? "internal", message: item["message"]?.stringValue ?? "rejected",
                               details: item["details"]?.jsonText, duplicate: duplicate)
            default:
                return .error(ErrorCode(rawValue: item["code"]?.stringValue ?? "internal"),
                              message: item["message"]?.stringValue ?? "not decided", retryAfterMS: nil)
            }
        }
    }

    func deliver(_ batch: [Request], _ outcomes: [MutationOutcome]) {
        queued.withLockedValue { $0 -= batch.count }
        decidedCounter.increment(by: batch.count)
        for (request, outcome) in zip(batch, outcomes) { request.reply(outcome) }
    }
}
