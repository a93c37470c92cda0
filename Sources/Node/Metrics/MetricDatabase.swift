import CSQLite
import Foundation
import Synchronization

/// The node-local metric store: one SQLite file (`DATA_DIR/metrics.sqlite`, Debian's libsqlite3 through this thin
/// wrapper — three statements do not need an ORM), never the replicated store: samples are many, local and
/// cheap to lose, and would only load Raft.
///
/// One table `samples(series, unix, value)`; a series is `container.<metric>/<uid>` or `domain.<metric>/<domain>`.
/// Values are uwsgi.it's: raw cumulative counters (cpu ns, io and net bytes, hits) or gauges (memory, quota bytes).
/// WAL mode + `synchronous=NORMAL`: a crash can lose the last sample, never corrupt the file.
public final class MetricDatabase: Sendable {
    public struct Sample: Sendable, Equatable {
        public var series: String
        public var unix: Int64
        public var value: Int64

        public init(series: String, unix: Int64, value: Int64) {
            self.series = series
            self.unix = unix
            self.value = value
        }
    }

    public struct Failure: Error, CustomStringConvertible {
        public var description: String
    }

    private struct Handle: @unchecked Sendable {
        // @unchecked: the connection is only used inside `db`'s lock.
        let pointer: OpaquePointer
    }

    private let db: Mutex<Handle>
    public let path: String

    public init(path: String) throws(Failure) {
        self.path = path
        var handle: OpaquePointer?
        let flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX
        guard sqlite3_open_v2(path, &handle, flags, nil) == SQLITE_OK, let handle else {
            let message = handle.map { String(cString: sqlite3_errmsg($0)) } ?? "out of memory"
            if let handle { sqlite3_close(handle) }
            throw Failure(description: "cannot open the metric store \(path): \(message); check the data directory is writable")
        }
        db = Mutex(Handle(pointer: handle))
        try execute("""
            PRAGMA journal_mode = WAL;
            PRAGMA synchronous = NORMAL;
            PRAGMA busy_timeout = 2000;
            CREATE TABLE IF NOT EXISTS samples (
              series TEXT NOT NULL, unix INTEGER NOT NULL, value INTEGER NOT NULL,
              PRIMARY KEY (series, unix)) WITHOUT ROWID;
            """)
    }

    deinit {
        db.withLock { _ = sqlite3_close($0.pointer) }
    }

    private func execute(_ sql: String) throws(Failure) {
        let result: String? = db.withLock { handle in
            var error: UnsafeMutablePointer<CChar>?
            guard sqlite3_exec(handle.pointer, sql, nil, nil, &error) == SQLITE_OK else {
                defer { sqlite3_free(error) }
                return error.map { String(cString: $0) } ?? "unknown error"
            }
            return nil
        }
        if let result { throw Failure(description: "metric store \(path): \(result)") }
    }

    /// Stores samples in one transaction (a sample for a (series, second) already there is replaced).
    public func insert(_ samples: [Sample]) throws(Failure) {
        guard !samples.isEmpty else { return }
        let failure: String? = db.withLock { handle in
            let db = handle.pointer
            guard sqlite3_exec(db, "BEGIN", nil, nil, nil) == SQLITE_OK else { return String(cString: sqlite3_errmsg(db)) }
            var statement: OpaquePointer?
            guard sqlite3_prepare_v2(db, "INSERT OR REPLACE INTO samples(series, unix, value) VALUES (?, ?, ?)", -1, &statement, nil) == SQLITE_OK else {
                let message = String(cString: sqlite3_errmsg(db))
                sqlite3_exec(db, "ROLLBACK", nil, nil, nil)
                return message
            }
            defer { sqlite3_finalize(statement) }
            for sample in samples {
                sqlite3_reset(statement)
                sqlite3_bind_text(statement, 1, sample.series, -1, csqlite_transient())
                sqlite3_bind_int64(statement, 2, sample.unix)
                sqlite3_bind_int64(statement, 3, sample.value)
                guard sqlite3_step(statement) == SQLITE_DONE else {
                    let message = String(cString: sqlite3_errmsg(db))
                    sqlite3_exec(db, "ROLLBACK", nil, nil, nil)
                    return message
                }
            }
            guard sqlite3_exec(db, "COMMIT", nil, nil, nil) == SQLITE_OK else {
                let message = String(cString: sqlite3_errmsg(db))
                sqlite3_exec(db, "ROLLBACK", nil, nil, nil)
                return message
            }
            return nil
        }
        if let failure { throw Failure(description: "metric store \(path): \(failure)") }
    }

    /// `[unix, value]` pairs of each series whose name is `series` or, with `prefix`, starts with `series`,
    /// in `[from, to)`, ascending.
    public func samples(series: String, prefix: Bool = false, from: Int64, to: Int64) throws(Failure) -> [String: [[Int64]]] {
        let outcome: Result<[String: [[Int64]]], Failure> = db.withLock { handle in
            let db = handle.pointer
            var statement: OpaquePointer?
            let sql = prefix
                ? "SELECT series, unix, value FROM samples WHERE series >= ?1 AND series < ?1 || char(1114111) AND unix >= ?2 AND unix < ?3 ORDER BY series, unix"
                : "SELECT series, unix, value FROM samples WHERE series = ?1 AND unix >= ?2 AND unix < ?3 ORDER BY unix"
            guard sqlite3_prepare_v2(db, sql, -1, &statement, nil) == SQLITE_OK else {
                return .failure(Failure(description: "metric store \(path): \(String(cString: sqlite3_errmsg(db)))"))
            }
            defer { sqlite3_finalize(statement) }
            sqlite3_bind_text(statement, 1, series, -1, csqlite_transient())
            sqlite3_bind_int64(statement, 2, from)
            sqlite3_bind_int64(statement, 3, to)
            var out: [String: [[Int64]]] = [:]
            while true {
                let rc = sqlite3_step(statement)
                if rc == SQLITE_DONE { break }
                guard rc == SQLITE_ROW, let text = sqlite3_column_text(statement, 0) else {
                    return .failure(Failure(description: "metric store \(path): \(String(cString: sqlite3_errmsg(db)))"))
                }
                out[String(cString: text), default: []].append([sqlite3_column_int64(statement, 1), sqlite3_column_int64(statement, 2)])
            }
            return .success(out)
        }
        return try outcome.get()
    }

    /// Applies a retention plan: thins each tier to one sample (the last) per bucket, deletes what is past the end.
    /// Returns the rows removed.
    @discardableResult
    public func applyRetention(_ plan: MetricRetention, now: Int64) throws(Failure) -> Int {
        var removed = 0
        for step in plan.steps(now: now) {
            let sql: String
            switch step {
            case .thin(let from, let to, let bucket):
                sql = """
                    DELETE FROM samples WHERE unix >= \(from) AND unix < \(to) AND (series, unix) NOT IN (
                      SELECT series, max(unix) FROM samples WHERE unix >= \(from) AND unix < \(to) GROUP BY series, unix / \(bucket))
                    """
            case .dropBefore(let unix):
                sql = "DELETE FROM samples WHERE unix < \(unix)"
            }
            let changed: Result<Int, Failure> = db.withLock { handle in
                guard sqlite3_exec(handle.pointer, sql, nil, nil, nil) == SQLITE_OK else {
                    return .failure(Failure(description: "metric store \(path): \(String(cString: sqlite3_errmsg(handle.pointer)))"))
                }
                return .success(Int(sqlite3_changes(handle.pointer)))
            }
            removed += try changed.get()
        }
        return removed
    }

    /// Number of samples stored (for status and tests).
    public func count() -> Int {
        db.withLock { handle in
            var statement: OpaquePointer?
            guard sqlite3_prepare_v2(handle.pointer, "SELECT count(*) FROM samples", -1, &statement, nil) == SQLITE_OK else { return 0 }
            defer { sqlite3_finalize(statement) }
            return sqlite3_step(statement) == SQLITE_ROW ? Int(sqlite3_column_int64(statement, 0)) : 0
        }
    }
}
