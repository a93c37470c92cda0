import Foundation
import Logging
import NIOCore
import NIOPosix

/// A leader-following client of the replicated store.
///
/// Only the dqlite leader answers SQL, so the client finds it (asking every known member at once), reconnects
/// when leadership moves and retries reads and idempotent writes within a time budget. A write carries a request
/// id recorded in `store_requests` inside the same transaction: a retry of a write that did commit finds its id
/// and reports the first outcome instead of applying it twice.
public actor StoreClient {
    public struct Options: Sendable {
        public var nodes: [String]
        public var database: String = "legion"
        /// How long one request may take before the connection is dropped and the call retried.
        public var requestTimeout: TimeAmount = .milliseconds(1500)
        public var connectTimeout: TimeAmount = .milliseconds(300)
        /// Total time a call may spend retrying (leader changes, elections).
        public var budget: Duration = .seconds(5)
        /// Fail with "no quorum" once no member has named a leader for this long.
        public var noLeaderGrace: Duration = .milliseconds(2500)

        public init(nodes: [String]) { self.nodes = nodes }
    }

    public let options: Options
    private let group: EventLoopGroup
    private var logger: Logger
    private var connection: DqliteConnection?
    private var known: [String]
    private let clientID = UInt64.random(in: 1...UInt64.max)

    public init(options: Options, group: EventLoopGroup = MultiThreadedEventLoopGroup.singleton, logger: Logger = Logger(label: "legion.store.client")) {
        self.options = options
        self.group = group
        self.logger = logger
        self.known = options.nodes
    }

    /// The current leader's address, if connected.
    public var leaderAddress: String? { connection?.address }

    public func close() {
        connection?.close()
        connection = nil
    }

    // MARK: - Leader discovery

    /// Asks every known member for the leader at once; returns the first leader named.
    func findLeader() async -> (address: String?, answered: Int, asked: Int) {
        let addresses = known
        let group = self.group
        let timeout = options.connectTimeout
        let results = await withTaskGroup(of: (Bool, String?).self) { tasks in
            for address in addresses {
                tasks.addTask {
                    guard let conn = try? await DqliteConnection.connect(to: address, group: group, timeout: timeout) else { return (false, nil) }
                    defer { conn.close() }
                    guard let leader = try? await conn.leader(timeout: timeout) else { return (true, nil) }
                    return (true, leader.address)
                }
            }
            var answered = 0
            var leader: String?
            for await (ok, found) in tasks {
                if ok { answered += 1 }
                if leader == nil, let found {
                    leader = found
                }
            }
            return (answered, leader)
        }
        return (results.1, results.0, addresses.count)
    }

    /// A connection to the leader with the database open, reusing the last one while it is alive.
    func leaderConnection(deadline: ContinuousClock.Instant) async throws -> DqliteConnection {
        if let connection, connection.isActive { return connection }
        connection = nil
        let clock = ContinuousClock()
        var lastLeaderSeen = clock.now
        var lastFailure = "no member answered"
        while true {
            let (leader, answered, asked) = await findLeader()
            if let leader {
                do {
                    let conn = try await DqliteConnection.connect(to: leader, group: group, timeout: options.connectTimeout)
                    try await conn.hello(clientID: clientID, timeout: options.requestTimeout)
                    try await conn.open(options.database, timeout: options.requestTimeout)
                    // Per-connection setting, enforced where statements run (the leader).
                    try await conn.exec("PRAGMA foreign_keys = ON", timeout: options.requestTimeout)
                    connection = conn
                    await learnMembers(conn)
                    return conn
                } catch {
                    lastFailure = "leader \(leader) did not accept a connection: \(error)"
                }
                lastLeaderSeen = clock.now
            } else {
                lastFailure = "\(answered) of \(asked) members answered (\(known.joined(separator: ", "))) and none knows a leader"
            }
            let now = clock.now
            if now - lastLeaderSeen > options.noLeaderGrace || now > deadline {
                throw StoreError.noQuorum(lastFailure)
            }
            try await Task.sleep(for: .milliseconds(40))
        }
    }

    private func learnMembers(_ conn: DqliteConnection) async {
        guard let members = try? await conn.cluster(timeout: options.requestTimeout) else { return }
        for member in members where !known.contains(member.address) {
            known.append(member.address)
        }
    }

    private func drop() {
        connection?.close()
        connection = nil
    }

    func dropConnection() { drop() }

    static func isRetriable(_ error: Error) -> Bool {
        guard let error = error as? DqliteError else { return false }
        switch error {
        case .connection, .timeout: return true
        case .failure(let code, let message):
            return error.isNotLeader || code == DqliteError.busyCode || code & 0xff == 5 || message.contains("database is locked")
        case .invalidInput, .protocolViolation: return false
        }
    }

    static func storeError(_ error: Error) -> StoreError {
        if let error = error as? StoreError { return error }
        if let error = error as? DqliteError {
            switch error {
            case .invalidInput(let why): return .invalidInput(why)
            case .failure(_, let message): return .rejected(message)
            default: return .rejected(error.description)
            }
        }
        return .rejected("\(error)")
    }

    // MARK: - Reads

    /// Runs a read on the leader (reads are retried freely).
    public func query(_ sql: String, _ parameters: [DqliteValue] = []) async throws(StoreError) -> DqliteRows {
        let timeout = options.requestTimeout
        return try await onLeader("the read") { try await $0.query(sql, parameters, timeout: timeout) }
    }

    /// Runs a request that is safe to repeat on the leader, reconnecting across leader changes within the budget.
    private func onLeader<T: Sendable>(_ what: String, _ body: (DqliteConnection) async throws -> T) async throws(StoreError) -> T {
        let deadline = ContinuousClock.now + options.budget
        while true {
            do {
                let conn = try await leaderConnection(deadline: deadline)
                return try await body(conn)
            } catch {
                if let error = error as? StoreError { throw error }
                guard Self.isRetriable(error) else { throw Self.storeError(error) }
                drop()
                if ContinuousClock.now > deadline { throw .noQuorum("\(what) kept failing: \(error)") }
                logger.debug("retried", metadata: ["what": "\(what)", "error": "\(error)"])
            }
        }
    }

    /// Runs statements outside the idempotency table (schema changes in migrations, maintenance). Not retried
    /// after the request was sent unless `retry` is set (only for statements that are safe to repeat).
    @discardableResult
    public func exec(_ sql: String, _ parameters: [DqliteValue] = [], retry: Bool = false) async throws(StoreError) -> DqliteResult {
        let deadline = ContinuousClock.now + options.budget
        while true {
            do {
                let conn = try await leaderConnection(deadline: deadline)
                return try await conn.exec(sql, parameters, timeout: options.requestTimeout)
            } catch {
                if let error = error as? StoreError { throw error }
                if let dq = error as? DqliteError, Self.isBusy(dq), connection?.isActive == true {
                    // Not applied: another writer held the lock. Safe to send again after a short pause.
                    if ContinuousClock.now > deadline { throw StoreError.rejected("the store stayed busy (\(dq)); retry later") }
                    try? await Task.sleep(for: .microseconds(Int.random(in: 50...1000)))
                    continue
                }
                guard Self.isRetriable(error) else { throw Self.storeError(error) }
                drop()
                guard retry else { throw StoreError.unconfirmed(requestID: "-", detail: "\(error)") }
                if ContinuousClock.now > deadline { throw .noQuorum("the statement kept failing: \(error)") }
            }
        }
    }

    // MARK: - Idempotent writes

    public struct Statement: Sendable {
        public var sql: String
        public var parameters: [DqliteValue]
        /// When set, a statement that changes no row aborts the write with this message (e.g. "no such customer").
        public var mustChange: String?

        public init(_ sql: String, _ parameters: [DqliteValue] = [], mustChange: String? = nil) {
            self.sql = sql
            self.parameters = parameters
            self.mustChange = mustChange
        }
    }

    public struct WriteReceipt: Sendable, Equatable {
        public var requestID: String
        /// last_insert_id of every statement (as first applied).
        public var insertIDs: [Int64]
        /// Rows changed by every statement (as first applied).
        public var rowsAffected: [Int64]
        /// True when this call found the write already applied by an earlier attempt.
        public var replayed: Bool
        /// How many attempts it took.
        public var attempts: Int
    }

    /// Applies `statements` in one transaction, at most once per `requestID`.
    ///
    /// Three round trips for a one-statement write: `BEGIN` + the request-id row (literals only), the statement
    /// with its bound parameters, then the outcome + `COMMIT`. A retry after an unknown outcome finds the id and
    /// returns the first outcome. `SQLITE_BUSY` (another writer holds the lock) is retried on the same connection
    /// after a short randomized pause.
    public func write(requestID: String = UUID().uuidString, _ statements: [Statement]) async throws(StoreError) -> WriteReceipt {
        guard !requestID.isEmpty, requestID.utf8.count <= 128,
              requestID.unicodeScalars.allSatisfy({ $0.isASCII && ($0.properties.isAlphabetic || ("0"..."9").contains($0) || "-_.:".unicodeScalars.contains($0)) })
        else {
            throw .invalidInput("a request id must be 1-128 characters of A-Z a-z 0-9 - _ . : (got \"\(requestID.prefix(40))\")")
        }
        let deadline = ContinuousClock.now + options.budget
        var attempts = 0
        var sentCommit = false
        var busyPauseMicros = 100
        while true {
            attempts += 1
            var conn: DqliteConnection?
            var inTransaction = false
            do {
                let c = try await leaderConnection(deadline: deadline)
                conn = c
                let timeout = options.requestTimeout
                let nowMs = Int64(Date().timeIntervalSince1970 * 1000)
                do {
                    inTransaction = true
                    try await c.exec("BEGIN; INSERT INTO store_requests(id, at_ms, insert_ids, rows_affected) VALUES('\(requestID)', \(nowMs), '', '')",
                                     timeout: timeout)
                } catch let error as DqliteError where error.isConstraint {
                    _ = try? await c.exec("ROLLBACK", timeout: timeout)
                    let rows = try await c.query("SELECT insert_ids, rows_affected FROM store_requests WHERE id = ?", [.text(requestID)], timeout: timeout)
                    let ids = Self.numbers(rows.rows.first?[0].string)
                    let affected = Self.numbers(rows.rows.first?[1].string)
                    return WriteReceipt(requestID: requestID, insertIDs: ids, rowsAffected: affected, replayed: true, attempts: attempts)
                }
                var ids: [Int64] = []
                var affected: [Int64] = []
                for statement in statements {
                    let result = try await c.exec(statement.sql, statement.parameters, timeout: timeout)
                    if let message = statement.mustChange, result.rowsAffected == 0 {
                        _ = try? await c.exec("ROLLBACK", timeout: timeout)
                        throw StoreError.rejected(message)
                    }
                    ids.append(result.lastInsertID)
                    affected.append(result.rowsAffected)
                }
                sentCommit = true
                try await c.exec("""
                    UPDATE store_requests SET insert_ids = '\(ids.map(String.init).joined(separator: ","))',
                      rows_affected = '\(affected.map(String.init).joined(separator: ","))' WHERE id = '\(requestID)';
                    INSERT INTO change_log(request_id, at_ms) VALUES('\(requestID)', \(nowMs)); COMMIT
                    """, timeout: timeout)
                return WriteReceipt(requestID: requestID, insertIDs: ids, rowsAffected: affected, replayed: false, attempts: attempts)
            } catch {
                if let error = error as? StoreError {
                    if case .noQuorum(let detail) = error, sentCommit {
                        throw StoreError.unconfirmed(requestID: requestID, detail: "no quorum after the commit was sent: \(detail)")
                    }
                    throw error
                }
                if let dq = error as? DqliteError, Self.isBusy(dq), let conn, conn.isActive {
                    // Another writer holds the lock: roll back and try again shortly on the same connection.
                    _ = try? await conn.exec("ROLLBACK", timeout: options.requestTimeout)
                    sentCommit = false
                    if ContinuousClock.now > deadline { throw StoreError.rejected("the store stayed busy (\(dq)); retry later") }
                    try? await Task.sleep(for: .microseconds(Int.random(in: busyPauseMicros / 2...busyPauseMicros)))
                    busyPauseMicros = min(busyPauseMicros * 2, 5_000)
                    continue
                }
                guard Self.isRetriable(error) else {
                    if let conn, inTransaction { _ = try? await conn.exec("ROLLBACK", timeout: options.requestTimeout) }
                    throw Self.storeError(error)
                }
                conn?.close()
                drop()
                logger.debug("write retried", metadata: ["request": "\(requestID)", "attempt": "\(attempts)", "error": "\(error)"])
                if ContinuousClock.now > deadline {
                    if sentCommit { throw StoreError.unconfirmed(requestID: requestID, detail: "\(error)") }
                    throw StoreError.noQuorum("the write kept failing: \(error)")
                }
                try? await Task.sleep(for: .milliseconds(20))
            }
        }
    }

    static func isBusy(_ error: DqliteError) -> Bool {
        if case .failure(let code, let message) = error {
            return code & 0xff == DqliteError.busyCode || message.contains("database is locked")
        }
        return false
    }

    /// Whether a write with this request id was applied.
    public func isApplied(requestID: String) async throws(StoreError) -> Bool {
        let rows = try await query("SELECT 1 FROM store_requests WHERE id = ?", [.text(requestID)])
        return !rows.rows.isEmpty
    }

    static func numbers(_ text: String?) -> [Int64] {
        guard let text, !text.isEmpty else { return [] }
        return text.split(separator: ",").compactMap { Int64($0) }
    }

    // MARK: - Membership (sent to the leader)

    public func members() async throws(StoreError) -> [DqliteMember] {
        let timeout = options.requestTimeout
        return try await onLeader("CLUSTER") { try await $0.cluster(timeout: timeout) }
    }

    /// The leader's id and address as the leader itself reports it.
    public func leader() async throws(StoreError) -> (id: UInt64, address: String) {
        let deadline = ContinuousClock.now + options.budget
        do {
            let conn = try await leaderConnection(deadline: deadline)
            if let leader = try await conn.leader(timeout: options.requestTimeout) { return leader }
            drop()
            throw StoreError.noQuorum("the node that was leader no longer knows one")
        } catch {
            drop()
            if let error = error as? StoreError { throw error }
            throw Self.storeError(error)
        }
    }

    public func add(id: UInt64, address: String) async throws(StoreError) {
        try await membership("ADD \(id)") { try await $0.add(id: id, address: address) }
    }

    public func assign(id: UInt64, role: DqliteMember.Role) async throws(StoreError) {
        try await membership("ASSIGN \(id) \(role)") { try await $0.assign(id: id, role: role) }
    }

    public func remove(id: UInt64) async throws(StoreError) {
        try await membership("REMOVE \(id)") { try await $0.remove(id: id) }
    }

    public func transfer(to id: UInt64) async throws(StoreError) {
        try await membership("TRANSFER \(id)") { try await $0.transfer(to: id) }
    }

    private func membership(_ what: String, _ body: @Sendable (DqliteConnection) async throws -> Void) async throws(StoreError) {
        let deadline = ContinuousClock.now + options.budget
        do {
            let conn = try await leaderConnection(deadline: deadline)
            try await body(conn)
        } catch {
            drop()
            if let error = error as? StoreError { throw error }
            throw StoreError.rejected("\(what): \(error)")
        }
    }
}
