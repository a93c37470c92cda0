import Foundation

/// Reads one container's resource use as uwsgi.it's collector did (spec §3.5): cpu (cumulative ns), mem
/// (bytes in use), mem.rss, mem.cache, io.read / io.write (cumulative bytes), net.rx / net.tx (cumulative bytes,
/// as the container sees them) and quota (storage bytes used, given by the caller).
///
/// runc containers: their cgroup (`/legion/<node>/<uid>`, v1 controllers or the v2 unified tree) and the host end
/// of their veth. Process containers (no cgroup of their own): the processes running as the container's uid,
/// from `/proc` — a sum that drops when a process exits, which graphs show as a counter reset.
/// The parsers are pure and unit-tested; the readers only open files.
public struct ContainerSampler: Sendable {
    public enum Source: Sendable, Equatable {
        case cgroup(node: String)
        case processes
    }

    public var source: Source
    public var cgroupRoot: String = "/sys/fs/cgroup"
    public var procRoot: String = "/proc"
    public var netRoot: String = "/sys/class/net"

    public init(source: Source) {
        self.source = source
    }

    /// Metric name → value for one container; metrics that cannot be read are absent (never a made-up zero).
    public func sample(uid: Int64, storageUsed: Int64?) -> [String: Int64] {
        var out: [String: Int64] = [:]
        switch source {
        case .cgroup(let node):
            let path = "legion/\(node)/\(uid)"
            if let v2 = read("\(cgroupRoot)/\(path)/cpu.stat") {
                // cgroup v2 (unified)
                if let usec = Self.keyed(v2)["usage_usec"] { out["cpu"] = usec * 1000 }
                if let mem = read("\(cgroupRoot)/\(path)/memory.current").flatMap({ Int64($0.trimmingCharacters(in: .whitespacesAndNewlines)) }) {
                    out["mem"] = mem
                }
                if let stat = read("\(cgroupRoot)/\(path)/memory.stat").map(Self.keyed) {
                    out["mem.rss"] = stat["anon"]
                    out["mem.cache"] = stat["file"]
                }
                if let io = read("\(cgroupRoot)/\(path)/io.stat").map(Self.ioStatV2) { out["io.read"] = io.read; out["io.write"] = io.write }
            } else {
                for dir in ["cpuacct", "cpu,cpuacct", "cpuacct,cpu"] {
                    if let ns = read("\(cgroupRoot)/\(dir)/\(path)/cpuacct.usage").flatMap({ Int64($0.trimmingCharacters(in: .whitespacesAndNewlines)) }) {
                        out["cpu"] = ns
                        break
                    }
                }
                if let mem = read("\(cgroupRoot)/memory/\(path)/memory.usage_in_bytes").flatMap({ Int64($0.trimmingCharacters(in: .whitespacesAndNewlines)) }) {
                    out["mem"] = mem
                }
                if let stat = read("\(cgroupRoot)/memory/\(path)/memory.stat").map(Self.keyed) {
                    out["mem.rss"] = stat["total_rss"] ?? stat["rss"]
                    out["mem.cache"] = stat["total_cache"] ?? stat["cache"]
                }
                if let io = read("\(cgroupRoot)/blkio/\(path)/blkio.throttle.io_service_bytes").map(Self.blkioV1) {
                    out["io.read"] = io.read
                    out["io.write"] = io.write
                }
            }
            // The veth's host end: what the host receives is what the container sent.
            let dev = "\(netRoot)/lv\(uid)/statistics"
            if let rx = read(dev + "/tx_bytes").flatMap({ Int64($0.trimmingCharacters(in: .whitespacesAndNewlines)) }),
               let tx = read(dev + "/rx_bytes").flatMap({ Int64($0.trimmingCharacters(in: .whitespacesAndNewlines)) }) {
                out["net.rx"] = rx
                out["net.tx"] = tx
            }
        case .processes:
            let totals = processTotals(uid: uid)
            if totals.processes > 0 {
                out["cpu"] = totals.cpuNs
                out["mem"] = totals.rss
                out["mem.rss"] = totals.rss
                out["io.read"] = totals.read
                out["io.write"] = totals.write
            }
        }
        if let storageUsed { out["quota"] = storageUsed }
        return out
    }

    struct ProcessTotals: Equatable {
        var processes = 0
        var cpuNs: Int64 = 0
        var rss: Int64 = 0
        var read: Int64 = 0
        var write: Int64 = 0
    }

    func processTotals(uid: Int64) -> ProcessTotals {
        var totals = ProcessTotals()
        guard let entries = try? FileManager.default.contentsOfDirectory(atPath: procRoot) else { return totals }
        let ticks = Int64(sysconf(Int32(_SC_CLK_TCK)))
        let page = Int64(sysconf(Int32(_SC_PAGESIZE)))
        for entry in entries where entry.first?.isNumber == true {
            guard let status = read("\(procRoot)/\(entry)/status"), Self.realUID(status) == uid,
                  let stat = read("\(procRoot)/\(entry)/stat"), let cpu = Self.cpuTicks(stat) else { continue }
            totals.processes += 1
            totals.cpuNs += cpu * (1_000_000_000 / max(ticks, 1))
            if let statm = read("\(procRoot)/\(entry)/statm"), let rss = statm.split(separator: " ").dropFirst().first.flatMap({ Int64($0) }) {
                totals.rss += rss * page
            }
            if let io = read("\(procRoot)/\(entry)/io").map(Self.keyed) {
                totals.read += io["read_bytes"] ?? 0
                totals.write += io["write_bytes"] ?? 0
            }
        }
        return totals
    }

    private func read(_ path: String) -> String? {
        guard let data = FileManager.default.contents(atPath: path) else { return nil }
        return String(decoding: data, as: UTF8.self)
    }

    // MARK: parsers (pure)

    /// `key value` or `key: value` lines (memory.stat, cpu.stat, /proc/PID/io) → key → integer.
    static func keyed(_ text: String) -> [String: Int64] {
        var out: [String: Int64] = [:]
        for line in text.split(separator: "\n") {
            let parts = line.split(whereSeparator: { $0 == " " || $0 == ":" || $0 == "\t" })
            if parts.count >= 2, let value = Int64(parts[1]) { out[String(parts[0])] = value }
        }
        return out
    }

    /// v1 `blkio.throttle.io_service_bytes`: `MAJ:MIN Read N` rows summed (the `Total` rows are skipped).
    static func blkioV1(_ text: String) -> (read: Int64, write: Int64) {
        var read: Int64 = 0, write: Int64 = 0
        for line in text.split(separator: "\n") {
            let parts = line.split(separator: " ")
            guard parts.count == 3, let value = Int64(parts[2]) else { continue }
            if parts[1] == "Read" { read += value } else if parts[1] == "Write" { write += value }
        }
        return (read, write)
    }

    /// v2 `io.stat`: `MAJ:MIN rbytes=N wbytes=N …` rows summed.
    static func ioStatV2(_ text: String) -> (read: Int64, write: Int64) {
        var read: Int64 = 0, write: Int64 = 0
        for line in text.split(separator: "\n") {
            for field in line.split(separator: " ") {
                if field.hasPrefix("rbytes="), let v = Int64(field.dropFirst(7)) { read += v }
                if field.hasPrefix("wbytes="), let v = Int64(field.dropFirst(7)) { write += v }
            }
        }
        return (read, write)
    }

    /// utime + stime (clock ticks) from `/proc/PID/stat`; the command may hold spaces and parentheses, so the
    /// fields are counted after the last `)`.
    static func cpuTicks(_ stat: String) -> Int64? {
        guard let close = stat.lastIndex(of: ")") else { return nil }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        // After ")": state(0) ppid(1) … utime is field 14 of the line, i.e. index 11 here; stime index 12.
        guard fields.count > 12, let user = Int64(fields[11]), let system = Int64(fields[12]) else { return nil }
        return user + system
    }

    /// The real uid from `/proc/PID/status`.
    static func realUID(_ status: String) -> Int64? {
        for line in status.split(separator: "\n") where line.hasPrefix("Uid:") {
            return line.split(whereSeparator: { $0 == " " || $0 == "\t" }).dropFirst().first.flatMap { Int64($0) }
        }
        return nil
    }
}
