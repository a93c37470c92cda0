import Logging

/// Counts dropped inputs by reason and logs at most once per interval per reason, with the count
/// of drops since the last line, so garbage floods cannot flood the log.
public struct RateLimitedLog: Sendable {
    private var lastLogged: [String: UInt64] = [:]
    private var suppressed: [String: Int] = [:]
    public private(set) var totals: [String: Int] = [:]
    public let intervalNanos: UInt64

    public init(intervalNanos: UInt64 = 10_000_000_000) { self.intervalNanos = intervalNanos }

    public mutating func record(_ reason: String, now: UInt64, logger: Logger, message: @autoclosure () -> String) {
        record(reason, now: now) { hidden, total in
            logger.warning("dropped datagram: \(message())", metadata: [
                "reason": "\(reason)", "total": "\(total)", "suppressed_since_last": "\(hidden)",
            ])
        }
    }

    /// Counts one event; calls `emit(suppressedSinceLast, total)` when it is time to say so (at most once per
    /// interval per reason) — the caller decides how (the protocol thread hands it to another thread).
    public mutating func record(_ reason: String, now: UInt64, emit: (Int, Int) -> Void) {
        totals[reason, default: 0] += 1
        if let last = lastLogged[reason], now < last + intervalNanos {
            suppressed[reason, default: 0] += 1
            return
        }
        let hidden = suppressed[reason] ?? 0
        suppressed[reason] = 0
        lastLogged[reason] = now
        emit(hidden, totals[reason] ?? 0)
    }
}
