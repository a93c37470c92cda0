/// When a container's storage use raises an alarm (uwsgi.it's `alarm-quota`): at or above its `quota_threshold`
/// percent, at most once per `alarm_freq` seconds while it stays there, again as soon as it crosses the threshold
/// anew after dropping below. Pure: usage and time are inputs.
public struct QuotaAlarms: Sendable {
    private var lastRaisedS: [Int64: Int64] = [:]

    public init() {}

    /// The alarm message to raise now, or nil.
    public mutating func check(uid: Int64, usedBytes: Int64, totalBytes: Int64, thresholdPercent: Int64, freqS: Int64, nowS: Int64) -> String? {
        guard totalBytes > 0, thresholdPercent > 0 else { return nil }
        let percent = usedBytes * 100 / totalBytes
        guard percent >= thresholdPercent else {
            lastRaisedS[uid] = nil
            return nil
        }
        if let last = lastRaisedS[uid], nowS - last < max(freqS, 60) { return nil }
        lastRaisedS[uid] = nowS
        return "container \(uid): disk quota at \(percent)% (\(usedBytes >> 20) of \(totalBytes >> 20) MB used, threshold \(thresholdPercent)%)"
    }

    public mutating func forget(uid: Int64) { lastRaisedS[uid] = nil }
}
