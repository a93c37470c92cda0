import Foundation

/// When a container's vassal crash-loops (uwsgi.it's `alarm-segfault`/`alarm-backlog` family, done the Emperor's
/// way): its sub-Emperor's stats list it as throttled with `fast_deaths` ≥ 3 (it died within seconds of starting,
/// three times running) — one alarm per vassal at most once per `alarm_freq` while it keeps crashing, again after
/// it has recovered (left the throttled list) and starts crashing anew. Pure: the stats document and time are inputs.
public struct CrashLoopAlarms: Sendable {
    public static let fastDeathsThreshold = 3
    private var lastRaisedS: [String: Int64] = [:]

    public init() {}

    /// A sub-Emperor's throttled vassals from its stats JSON (`throttled: [{id, delay_ms, fast_deaths}]`).
    public static func throttled(statsJSON: Data) -> [(vassal: String, fastDeaths: Int, delayMs: Int)] {
        guard let doc = try? JSONSerialization.jsonObject(with: statsJSON) as? [String: Any],
              let list = doc["throttled"] as? [[String: Any]] else { return [] }
        return list.compactMap { entry in
            guard let id = entry["id"] as? String, let deaths = entry["fast_deaths"] as? Int else { return nil }
            return (String(id.prefix(255)), deaths, entry["delay_ms"] as? Int ?? 0)
        }
    }

    /// The alarm messages to raise now for container `uid`.
    public mutating func check(uid: Int64, throttled: [(vassal: String, fastDeaths: Int, delayMs: Int)], freqS: Int64, nowS: Int64) -> [String] {
        let prefix = "\(uid)/"
        let looping = throttled.filter { $0.fastDeaths >= Self.fastDeathsThreshold }
        let current = Set(looping.map { prefix + $0.vassal })
        for key in lastRaisedS.keys where key.hasPrefix(prefix) && !current.contains(key) { lastRaisedS[key] = nil }
        var out: [String] = []
        for entry in looping.sorted(by: { $0.vassal < $1.vassal }) {
            let key = prefix + entry.vassal
            if let last = lastRaisedS[key], nowS - last < max(freqS, 60) { continue }
            lastRaisedS[key] = nowS
            out.append("container \(uid): vassal \(entry.vassal) is crash-looping (\(entry.fastDeaths) fast deaths in a row, next start in \(entry.delayMs / 1000) s); see logs/emperor.log")
        }
        return out
    }

    public mutating func forget(uid: Int64) {
        for key in lastRaisedS.keys where key.hasPrefix("\(uid)/") { lastRaisedS[key] = nil }
    }
}
