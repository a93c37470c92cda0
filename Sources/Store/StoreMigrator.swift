import Foundation

/// Applies `StoreSchema.migrations` that the store has not seen, each exactly once cluster-wide.
public enum StoreMigrator {
    public struct Outcome: Sendable, Equatable {
        /// Versions this call applied.
        public var applied: [Int]
        /// The store's schema version afterwards.
        public var version: Int
    }

    public static func migrate(_ client: StoreClient, appliedBy: String,
                               migrations: [StoreSchema.Migration] = StoreSchema.migrations) async throws(StoreError) -> Outcome {
        try await client.exec("""
            CREATE TABLE IF NOT EXISTS schema_migrations (
              version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at_ms INTEGER NOT NULL, applied_by TEXT NOT NULL)
            """, retry: true)
        let known = migrations.map(\.version).max() ?? 0
        var applied: [Int] = []
        for migration in migrations.sorted(by: { $0.version < $1.version }) {
            let current = try await version(client)
            if current > known { throw .schemaTooNew(store: current, binary: known) }
            if migration.version <= current { continue }
            if try await client.applyMigration(version: migration.version, name: migration.name, sql: migration.sql, appliedBy: appliedBy) {
                applied.append(migration.version)
            }
        }
        return Outcome(applied: applied, version: try await version(client))
    }

    public static func version(_ client: StoreClient) async throws(StoreError) -> Int {
        let rows = try await client.query("SELECT coalesce(max(version), 0) FROM schema_migrations")
        return Int(rows.scalar?.int ?? 0)
    }
}

extension StoreClient {
    /// Runs one migration in a transaction guarded by its version's primary key. Returns false when another node
    /// applied it first.
    func applyMigration(version: Int, name: String, sql: String, appliedBy: String) async throws(StoreError) -> Bool {
        let deadline = ContinuousClock.now + options.budget
        while true {
            do {
                let conn = try await leaderConnection(deadline: deadline)
                let timeout = options.requestTimeout
                try await conn.exec("BEGIN", timeout: timeout)
                do {
                    try await conn.exec("INSERT INTO schema_migrations(version, name, applied_at_ms, applied_by) VALUES(?, ?, ?, ?)",
                                        [.int(version), .text(name), .integer(Int64(Date().timeIntervalSince1970 * 1000)), .text(appliedBy)],
                                        timeout: timeout)
                } catch let error as DqliteError where error.isConstraint {
                    _ = try? await conn.exec("ROLLBACK", timeout: timeout)
                    return false
                }
                do {
                    try await conn.exec(sql, timeout: .seconds(10))
                } catch let error as DqliteError where !Self.isRetriable(error) {
                    _ = try? await conn.exec("ROLLBACK", timeout: timeout)
                    throw StoreError.rejected("migration \(version) (\(name)) failed: \(error); fix the migration in a new version")
                }
                try await conn.exec("COMMIT", timeout: timeout)
                return true
            } catch {
                if let error = error as? StoreError { throw error }
                guard Self.isRetriable(error) else { throw Self.storeError(error) }
                dropConnection()
                // A retry is safe: if the first attempt committed, its version row makes the retry a no-op.
                if ContinuousClock.now > deadline { throw StoreError.noQuorum("migration \(version) kept failing: \(error)") }
                try? await Task.sleep(for: .milliseconds(50))
            }
        }
    }
}
