import Emperor
import Foundation

/// `[emperor]`: the node's Emperor (containers' sub-Emperors are its vassals) and optional operator vassal
/// directories it watches like `uwsgi --emperor DIR`.
public struct EmperorSection: Sendable, Equatable {
    public var settings = EmperorSettings()
    /// Operator vassal directories (relative to the config file); empty: only the store's containers.
    public var vassalDirectories: [String] = []

    public init() {}

    static func parse(_ section: ConfigTable, baseDir: String) throws(NodeConfigError) -> Self {
        var table = section
        var out = Self()
        func path(_ text: String) -> String { text.hasPrefix("/") ? text : URL(fileURLWithPath: baseDir).appendingPathComponent(text).standardizedFileURL.path }
        out.vassalDirectories = (try table.stringArray("vassals") ?? []).map(path)
        if let v = try table.string("binary") { out.settings.binary = v }
        if let v = try table.string("stats") { out.settings.statsServer = v.contains(":") ? v : path(v) }
        if let v = try table.int("throttle_ms", range: 0...3_600_000) { out.settings.throttleMs = Int64(v) }
        if let v = try table.int("max_throttle_ms", range: 0...86_400_000) { out.settings.maxThrottleMs = Int64(v) }
        if out.settings.maxThrottleMs < out.settings.throttleMs {
            throw .invalid(key: "emperor.max_throttle_ms", problem: "\(out.settings.maxThrottleMs) is below throttle_ms \(out.settings.throttleMs)")
        }
        if let v = try table.int("good_run_ms", range: 0...3_600_000) { out.settings.goodRunMs = Int64(v) }
        if let v = try table.double("curse_tolerance_s", range: 0.1...3600) { out.settings.curseToleranceMs = Int64(v * 1000) }
        if let v = try table.double("reload_mercy_s", range: 0.1...3600) { out.settings.reloadMercyMs = Int64(v * 1000) }
        if let v = try table.double("required_heartbeat_s", range: 1...3600) { out.settings.requiredHeartbeatMs = Int64(v * 1000) }
        if let v = try table.int("rescan_ms", range: 100...3_600_000) { out.settings.rescanMs = Int64(v) }
        if let v = try table.bool("tyrant") { out.settings.tyrant = v }
        if let v = try table.bool("graceful_shutdown") { out.settings.gracefulShutdown = v }
        if let v = try table.bool("no_blacklist") { out.settings.noBlacklist = v }
        out.settings.vassalsSet = try table.stringArray("vassals_set") ?? []
        out.settings.vassalsInclude = (try table.stringArray("vassals_include") ?? []).map(path)
        try table.rejectUnknownKeys()
        return out
    }
}
