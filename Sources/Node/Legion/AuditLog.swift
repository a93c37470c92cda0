import Foundation
import Logging

/// The election audit log: one JSON object per line in `DATA_DIR/audit.jsonl` — when, who became
/// or stopped being Lord, why, the quorum seen and the lease. Drills and operators read it.
public final class AuditLog: Sendable {
    public let path: String
    private let handle: FileHandle?

    public init(path: String, logger: Logger) {
        self.path = path
        if !FileManager.default.fileExists(atPath: path) {
            FileManager.default.createFile(atPath: path, contents: nil)
        }
        let opened = FileHandle(forWritingAtPath: path)
        if opened == nil { logger.error("cannot open the audit log for appending; audit events will only be logged", metadata: ["path": "\(path)"]) }
        _ = try? opened?.seekToEnd()
        handle = opened
    }

    /// Appends one event; `fields` follow `time`, `time_ms` and `event`.
    public func record(_ event: String, wallMs: UInt64, fields: [(String, JSONValue)]) {
        var pairs: [(String, JSONValue)] = [
            ("time", .string(SystemClock.iso8601(wallMs: wallMs))), ("time_ms", .uint(wallMs)), ("event", .string(event)),
        ]
        pairs.append(contentsOf: fields)
        let line = JSONValue.object(pairs).serialized + "\n"
        try? handle?.write(contentsOf: Data(line.utf8))
    }

    deinit { try? handle?.close() }
}
