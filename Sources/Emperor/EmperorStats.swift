import Foundation

/// The Emperor stats document, key for key in the order uWSGI 2.0's `emperor-stats-server` writes it.
public enum EmperorStats {
    public struct Process: Sendable {
        public var version: String
        public var pid: Int32
        public var uid: UInt32
        public var gid: UInt32
        public var cwd: String
        public init(version: String, pid: Int32, uid: UInt32, gid: UInt32, cwd: String) {
            self.version = version
            self.pid = pid
            self.uid = uid
            self.gid = gid
            self.cwd = cwd
        }
    }

    public static func json(_ core: EmperorCore, process: Process) -> String {
        var out = "{\n"
        out += "\t\"version\":\(quote(process.version)),\n"
        out += "\t\"pid\":\(process.pid),\n"
        out += "\t\"uid\":\(process.uid),\n"
        out += "\t\"gid\":\(process.gid),\n"
        out += "\t\"cwd\":\(quote(process.cwd)),\n"
        out += "\t\"emperor\":[" + core.settings.monitors.map(quote).joined(separator: ",") + "],\n"
        out += "\t\"emperor_tyrant\":\(core.settings.tyrant ? 1 : 0),\n"
        out += "\t\"throttle_level\":0,\n"
        let vassals = core.instances.keys.sorted().compactMap { name -> String? in
            guard let v = core.instances[name] else { return nil }
            let fields: [(String, String)] = [
                ("id", quote(name)), ("pid", "\(v.pid)"), ("born", "\(v.bornWall)"), ("last_mod", "\(v.lastModWall)"),
                ("last_heartbeat", "\(v.lastHeartbeatWall)"), ("loyal", v.loyal ? "1" : "0"), ("ready", v.ready ? "1" : "0"),
                ("accepting", v.accepting ? "1" : "0"), ("last_loyal", "\(v.lastLoyalWall)"), ("last_ready", "\(v.lastReadyWall)"),
                ("last_accepting", "\(v.lastAcceptingWall)"), ("first_run", "\(v.bornWall)"), ("last_run", "\(v.bornWall)"),
                ("cursed", "\(v.cursedAtWall)"), ("zerg", "0"), ("on_demand", "\"\""), ("uid", "\(v.file.uid)"),
                ("gid", "\(v.file.gid)"), ("monitor", quote(v.file.monitor)), ("respawns", "\(v.respawns)"),
                ("status", quote(v.phase.rawValue)),
            ]
            return "\t\t{\n" + fields.map { "\t\t\t\"\($0.0)\":\($0.1)" }.joined(separator: ",\n") + "\n\t\t}"
        }
        out += "\t\"vassals\":[\n" + vassals.joined(separator: ",\n") + "\n\t],\n"
        let blacklist = core.throttles.keys.sorted().compactMap { name -> String? in
            guard let t = core.throttles[name], t.blacklisted || t.nextSpawnMono > 0 else { return nil }
            guard t.blacklisted else { return nil }
            let fields: [(String, String)] = [
                ("id", quote(name)), ("throttle_level", "\(t.delayMs)"), ("attempt", "\(t.attempt)"),
                ("first_attempt", "\(t.firstAttemptWall)"), ("last_attempt", "\(t.lastAttemptWall)"),
            ]
            return "\t\t{\n" + fields.map { "\t\t\t\"\($0.0)\":\($0.1)" }.joined(separator: ",\n") + "\n\t\t}"
        }
        out += "\t\"blacklist\":[\n" + blacklist.joined(separator: ",\n") + "\n\t],\n"
        let throttled = core.throttles.keys.sorted().compactMap { name -> String? in
            guard let t = core.throttles[name], t.delayMs > 0 else { return nil }
            return "\t\t{\"id\":\(quote(name)),\"delay_ms\":\(t.delayMs),\"fast_deaths\":\(t.fastDeaths)}"
        }
        out += "\t\"throttled\":[\n" + throttled.joined(separator: ",\n") + "\n\t]\n"
        out += "}\n"
        return out
    }

    static func quote(_ text: String) -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.withoutEscapingSlashes]
        guard let data = try? encoder.encode(text), let json = String(data: data, encoding: .utf8) else { return "\"\"" }
        return json
    }
}
