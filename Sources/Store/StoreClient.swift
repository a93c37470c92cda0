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
        /// Called after a write may have changed the store (a committed or unconfirmed write, an `exec`): a node
        /// tells the others to read the change log now instead of waiting for their next poll.
        public var afterWrite: (@Sendable () -> Void)?

        public init(nodes: [String]) { self.nodes = nodes }
    }

    public let options: Options
    private let group: EventLoopGroup
    private var logger: Logger
    private var connection: DqliteConnection?
    private var known: [String]
    private let clientID = UInt64.random(in: 1...UInt64.max)
    /// Batches rolled back and retried because another writer held the lock (SQLITE_BUSY).
    public private(set) var busyRetries = 0

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
                let result = try await conn.exec(sql, parameters, timeout: options.requestTimeout)
                options.afterWrite?()
                return result
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

        public init(requestID: String, insertIDs: [Int64], rowsAffected: [Int64], replayed: Bool, attempts: Int) {
            self.requestID = requestID
            self.insertIDs = insertIDs
            self.rowsAffected = rowsAffected
            self.replayed = replayed
            self.attempts = attempts
        }
    }

    /// Applies `statements` in one transaction, at most once per `requestID`.
    ///
    /// A retry after an unknown outcome finds the id and returns the first outcome. `SQLITE_BUSY` (another
    /// writer holds the lock) is retried on the same connection after a short randomized pause.
    public func write(requestID: String = UUID().uuidString, _ statements: [Statement]) async throws(StoreError) -> WriteReceipt {
        try Self.validate(requestID: requestID)
        let outcome = await writeBatch([BatchWrite(requestID: requestID, statements: statements)])
        guard let first = outcome.first else { throw .rejected("the write produced no outcome") }
        return try first.get()
    }

    /// One write of a batch: its own request id, statements and outcome.
    public struct BatchWrite: Sendable {
        public var requestID: String
        public var statements: [Statement]
        public init(requestID: String, statements: [Statement]) {
            self.requestID = requestID
            self.statements = statements
        }
    }

    /// 1-128 characters of A-Z a-z 0-9 - _ . : (ids are written into SQL literals).
    public static func validate(requestID: String) throws(StoreError) {
        guard !requestID.isEmpty, requestID.utf8.count <= 128,
              requestID.unicodeScalars.allSatisfy({ $0.isASCII && ($0.properties.isAlphabetic || ("0"..."9").contains($0) || "-_.:".unicodeScalars.contains($0)) })
        else {
            throw .invalidInput("a request id must be 1-128 characters of A-Z a-z 0-9 - _ . : (got \"\(requestID.prefix(40))\")")
        }
    }

    /// Group commit: applies many independent writes in **one** transaction (one Raft commit), each inside its
    /// own savepoint so each gets its own outcome — a write whose statement fails (constraint, `mustChange`) is
    /// rolled back alone and reported alone; the others commit. Every write records its request id, so a batch
    /// retried after an unknown outcome (leader change at commit) applies each write at most once.
    ///
    /// Round trips: `BEGIN` rides with the first write's savepoint, `COMMIT` with the last write's outcome, so a
    /// batch of one costs what a single write always did (savepoint, statements, outcome + commit).
    public func writeBatch(_ writes: [BatchWrite]) async -> [Result<WriteReceipt, StoreError>] {
        var results = [Result<WriteReceipt, StoreError>?](repeating: nil, count: writes.count)
        for (index, write) in writes.enumerated() {
            do throws(StoreError) { try Self.validate(requestID: write.requestID) } catch { results[index] = .failure(error) }
        }
        let deadline = ContinuousClock.now + options.budget
        var attempts = 0
        var busyPauseMicros = 1000  // about one commit: retrying sooner only finds the lock still held
        // Writes that can go in the one-request fast path (no `mustChange`, every parameter inlinable).
        let inlined: [[String]?] = writes.map { write in
            var out: [String] = []
            for statement in write.statements {
                guard statement.mustChange == nil, let sql = SQLLiteral.inline(statement.sql, statement.parameters) else { return nil }
                out.append(sql)
            }
            return out
        }
        var slow = Set<Int>()
        while true {
            let open = results.indices.filter { results[$0] == nil }
            if open.isEmpty {
                let outcomes = results.compactMap { $0 }
                if let afterWrite = options.afterWrite, outcomes.contains(where: Self.mayHaveChanged) { afterWrite() }
                return outcomes
            }
            attempts += 1
            var sentCommit = false
            var committed = false
            var conn: DqliteConnection?
            var staged: [(Int, WriteReceipt)] = []
            var rejectedHere: [(Int, StoreError)] = []
            do {
                let c = try await leaderConnection(deadline: deadline)
                conn = c
                let timeout = options.requestTimeout
                let nowMs = Int64(Date().timeIntervalSince1970 * 1000)
                let fast = open.filter { !slow.contains($0) && inlined[$0] != nil }
                if !fast.isEmpty {
                    sentCommit = true
                    if let receipts = try await fastBatch(c, writes: writes, indices: fast, inlined: inlined, nowMs: nowMs, attempts: attempts) {
                        for (index, receipt) in receipts { results[index] = .success(receipt) }
                    } else {
                        // A statement failed (a constraint, a replayed id): nothing was applied; these writes go
                        // the savepoint way, each with its own outcome.
                        slow.formUnion(fast)
                    }
                    continue
                }
                for (position, index) in open.enumerated() {
                    let write = writes[index]
                    let id = write.requestID
                    let isLast = position == open.count - 1
                    let begin = position == 0 ? "BEGIN; " : ""
                    do {
                        try await c.exec("\(begin)SAVEPOINT w; INSERT INTO store_requests(id, at_ms, insert_ids, rows_affected) VALUES('\(id)', \(nowMs), '', '')",
                                         timeout: timeout)
                    } catch let error as DqliteError where error.isConstraint {
                        // Applied by an earlier attempt: report its first outcome.
                        try await c.exec("ROLLBACK TO w; RELEASE w", timeout: timeout)
                        let rows = try await c.query("SELECT insert_ids, rows_affected FROM store_requests WHERE id = ?", [.text(id)], timeout: timeout)
                        results[index] = .success(WriteReceipt(requestID: id, insertIDs: Self.numbers(rows.rows.first?[0].string),
                                                               rowsAffected: Self.numbers(rows.rows.first?[1].string), replayed: true, attempts: attempts))
                        continue
                    }
                    var ids: [Int64] = []
                    var affected: [Int64] = []
                    var rejection: StoreError?
                    for statement in write.statements {
                        do {
                            let result = try await c.exec(statement.sql, statement.parameters, timeout: timeout)
                            if let message = statement.mustChange, result.rowsAffected == 0 {
                                rejection = .rejected(message)
                                break
                            }
                            ids.append(result.lastInsertID)
                            affected.append(result.rowsAffected)
                        } catch let error as DqliteError where Self.isStatementFailure(error) {
                            rejection = Self.storeError(error)
                            break
                        }
                    }
                    if let rejection {
                        try await c.exec("ROLLBACK TO w; RELEASE w", timeout: timeout)
                        rejectedHere.append((index, rejection))
                        continue
                    }
                    let commit = isLast ? "; COMMIT" : ""
                    if isLast { sentCommit = true }
                    try await c.exec("""
                        UPDATE store_requests SET insert_ids = '\(ids.map(String.init).joined(separator: ","))',
                          rows_affected = '\(affected.map(String.init).joined(separator: ","))' WHERE id = '\(id)';
                        INSERT INTO change_log(request_id, at_ms) VALUES('\(id)', \(nowMs)); RELEASE w\(commit)
                        """, timeout: timeout)
                    if isLast { committed = true }
                    staged.append((index, WriteReceipt(requestID: id, insertIDs: ids, rowsAffected: affected, replayed: false, attempts: attempts)))
                }
                if !committed {
                    sentCommit = true
                    try await c.exec("COMMIT", timeout: timeout)
                }
                for (index, receipt) in staged { results[index] = .success(receipt) }
                for (index, error) in rejectedHere { results[index] = .failure(error) }
            } catch {
                if let dq = error as? DqliteError, Self.isBusy(dq), let conn, conn.isActive {
                    // Another writer holds the lock: roll back and try the batch again shortly on the same connection.
                    busyRetries += 1
                    _ = try? await conn.exec("ROLLBACK", timeout: options.requestTimeout)
                    if ContinuousClock.now > deadline {
                        for index in open where results[index] == nil {
                            results[index] = .failure(.rejected("the store stayed busy (\(dq)); retry later"))
                        }
                        continue
                    }
                    try? await Task.sleep(for: .microseconds(Int.random(in: busyPauseMicros / 2...busyPauseMicros)))
                    busyPauseMicros = min(busyPauseMicros * 2, 5_000)
                    continue
                }
                let storeError = error as? StoreError
                if storeError == nil && !Self.isRetriable(error) {
                    if let conn { _ = try? await conn.exec("ROLLBACK", timeout: options.requestTimeout) }
                    for index in open where results[index] == nil { results[index] = .failure(Self.storeError(error)) }
                    continue
                }
                conn?.close()
                drop()
                logger.debug("write batch retried", metadata: ["writes": "\(open.count)", "attempt": "\(attempts)", "error": "\(error)"])
                if storeError != nil || ContinuousClock.now > deadline {
                    for index in open where results[index] == nil {
                        let id = writes[index].requestID
                        if sentCommit {
                            results[index] = .failure(.unconfirmed(requestID: id, detail: "\(storeError.map { "\($0)" } ?? "\(error)")"))
                        } else {
                            results[index] = .failure(storeError ?? .noQuorum("the write kept failing: \(error)"))
                        }
                    }
                    continue
                }
                try? await Task.sleep(for: .milliseconds(20))
            }
        }
    }

    /// Whether a write's outcome means the store may have changed (applied now, or perhaps applied).
    static func mayHaveChanged(_ outcome: Result<WriteReceipt, StoreError>) -> Bool {
        switch outcome {
        case .success(let receipt): return !receipt.replayed
        case .failure(.unconfirmed): return true
        case .failure: return false
        }
    }

    /// The fast path of group commit: the whole batch in **one** request (`BEGIN; … COMMIT`, parameters inlined as
    /// SQL literals), then one read of the outcomes each write recorded with `last_insert_rowid()`/`changes()`.
    /// No lock is held across round trips, so writers on other nodes rarely meet `SQLITE_BUSY`. Returns nil when
    /// a statement failed: the transaction is rolled back and nothing of the batch applied.
    private func fastBatch(_ c: DqliteConnection, writes: [BatchWrite], indices: [Int], inlined: [[String]?], nowMs: Int64,
                           attempts: Int) async throws -> [(Int, WriteReceipt)]? {
        let timeout = options.requestTimeout
        var sql = "BEGIN;"
        for index in indices {
            let id = writes[index].requestID
            sql += "INSERT INTO store_requests(id, at_ms, insert_ids, rows_affected) VALUES('\(id)', \(nowMs), '', '');"
            for statement in inlined[index] ?? [] {
                sql += statement + ";"
                sql += "UPDATE store_requests SET insert_ids = insert_ids || last_insert_rowid() || ',', "
                    + "rows_affected = rows_affected || changes() || ',' WHERE id = '\(id)';"
            }
            sql += "INSERT INTO change_log(request_id, at_ms) VALUES('\(id)', \(nowMs));"
        }
        sql += "COMMIT"
        do {
            try await c.exec(sql, timeout: timeout)
        } catch let error as DqliteError where Self.isStatementFailure(error) {
            _ = try? await c.exec("ROLLBACK", timeout: timeout)
            return nil
        }
        let ids = JSONArrayOfIDs.make(indices.map { writes[$0].requestID })
        let rows = try await c.query("SELECT id, insert_ids, rows_affected FROM store_requests WHERE id IN (SELECT value FROM json_each(?))",
                                     [.text(ids)], timeout: timeout)
        var outcome: [String: (String?, String?)] = [:]
        for row in rows.rows { if let id = row[0].string { outcome[id] = (row[1].string, row[2].string) } }
        return indices.map { index in
            let id = writes[index].requestID
            return (index, WriteReceipt(requestID: id, insertIDs: Self.numbers(outcome[id]?.0), rowsAffected: Self.numbers(outcome[id]?.1),
                                        replayed: false, attempts: attempts))
        }
    }

    /// A statement's own failure (constraint, check, SQL error): the write is rejected, the transaction goes on.
    static func isStatementFailure(_ error: DqliteError) -> Bool {
        guard case .failure = error else { return false }
        return !error.isNotLeader && !isBusy(error)
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
