#if canImport(Glibc)
@preconcurrency import Glibc
#endif
import Logging
import Node

/// One line per event on standard error with millisecond UTC timestamps (failover is a matter of
/// milliseconds, so the second-resolution default is not enough):
/// `2026-11-22T01:02:03.456Z notice legion.node1: became Lord votes=2 quorum=2`
struct LegionLogHandler: LogHandler {
    let label: String
    var logLevel: Logger.Level
    var metadata: Logger.Metadata = [:]

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        var merged = metadata
        if let extra = event.metadata { merged.merge(extra) { $1 } }
        var line = "\(SystemClock.iso8601(wallMs: SystemClock.wallMillis())) \(event.level) \(label): \(event.message)"
        for (key, value) in merged.sorted(by: { $0.key < $1.key }) { line += " \(key)=\(value)" }
        line += "\n"
        #if canImport(Glibc)
        _ = line.withCString { fputs($0, stderr) }
        #else
        print(line, terminator: "")
        #endif
    }
}
