/// Failed-login rate limit, per client address and per username (pure; time is an input).
///
/// A client or a username with `maxFailures` failed logins inside `windowMs` is refused (429) until the oldest
/// of those failures leaves the window. Successful logins are never counted, so a customer who knows their
/// password is not locked out by someone guessing it from elsewhere — unless that someone targets the
/// username, which is exactly the case the per-user limit is for.
public struct LoginThrottle: Sendable {
    public var windowMs: Int64
    public var maxFailuresPerClient: Int
    public var maxFailuresPerUser: Int
    private var failures: [String: [Int64]] = [:]

    public init(windowMs: Int64 = 60_000, maxFailuresPerClient: Int = 20, maxFailuresPerUser: Int = 10) {
        precondition(windowMs > 0 && maxFailuresPerClient > 0 && maxFailuresPerUser > 0, "throttle limits are positive")
        self.windowMs = windowMs
        self.maxFailuresPerClient = maxFailuresPerClient
        self.maxFailuresPerUser = maxFailuresPerUser
    }

    /// Seconds to wait before trying again, or nil when the attempt may go ahead.
    public mutating func retryAfter(client: String, user: String, nowMs: Int64) -> Int? {
        let waits = [wait(key: "c:" + client, limit: maxFailuresPerClient, nowMs: nowMs),
                     wait(key: "u:" + user, limit: maxFailuresPerUser, nowMs: nowMs)].compactMap { $0 }
        guard let longest = waits.max() else { return nil }
        return Int((longest + 999) / 1000)
    }

    public mutating func recordFailure(client: String, user: String, nowMs: Int64) {
        for key in ["c:" + client, "u:" + user] {
            var times = failures[key, default: []].filter { nowMs - $0 < windowMs }
            times.append(nowMs)
            failures[key] = times
        }
        if failures.count > 100_000 { prune(nowMs: nowMs) }
    }

    /// Forgets failures older than the window (bounded memory under a spray of usernames).
    public mutating func prune(nowMs: Int64) {
        failures = failures.compactMapValues { times in
            let kept = times.filter { nowMs - $0 < windowMs }
            return kept.isEmpty ? nil : kept
        }
    }

    private mutating func wait(key: String, limit: Int, nowMs: Int64) -> Int64? {
        guard let times = failures[key] else { return nil }
        let recent = times.filter { nowMs - $0 < windowMs }
        failures[key] = recent.isEmpty ? nil : recent
        guard recent.count >= limit, let oldest = recent.first else { return nil }
        return max(1, windowMs - (nowMs - oldest))
    }
}
