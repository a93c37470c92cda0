import Foundation

/// What a failover drill observed, and the figures computed from it (pure: no I/O). Times are wall-clock
/// milliseconds on the one machine that hosts the lab.
public struct DrillObservations: Sendable {
    public struct Probe: Sendable, Equatable {
        public var tMs: Int64
        public var ok: Bool
        /// The node that answered (the Lord's router on the VIP), when the request succeeded.
        public var servedBy: String?
        /// Why the request failed, as the probe saw it ("connect: Connection refused", "status 502: …").
        public var error: String?
        public init(tMs: Int64, ok: Bool, servedBy: String?, error: String? = nil) {
            self.tMs = tMs
            self.ok = ok
            self.servedBy = servedBy
            self.error = error
        }
    }

    public struct HolderSample: Sendable, Equatable {
        public var tMs: Int64
        /// Servers whose interface carries the VIP at that instant.
        public var holders: [String]
        public init(tMs: Int64, holders: [String]) {
            self.tMs = tMs
            self.holders = holders
        }
    }

    public struct ARPRun: Sendable, Equatable {
        public var tMs: Int64
        /// Distinct MAC addresses that answered ARP for the VIP during one run.
        public var macs: Int
        public init(tMs: Int64, macs: Int) {
            self.tMs = tMs
            self.macs = macs
        }
    }

    public struct AuditEvent: Sendable, Equatable {
        public var tMs: Int64
        public var node: String
        public var event: String
        public var leaseMs: Int64?
        public var member: String?
        public init(tMs: Int64, node: String, event: String, leaseMs: Int64? = nil, member: String? = nil) {
            self.tMs = tMs
            self.node = node
            self.event = event
            self.leaseMs = leaseMs
            self.member = member
        }
    }

    public var scenario: String
    public var nodes: [String]
    /// The Lord when the fault was injected.
    public var oldLord: String?
    /// The node the fault targets (the Lord, or another node for node-restart / store-leader-kill).
    public var target: String?
    public var faultStartMs: Int64
    public var faultEndMs: Int64
    public var endMs: Int64
    /// When the target process stopped running protocol code (SIGKILL or SIGSTOP time), for clipping its lease.
    public var targetStoppedMs: Int64?
    public var probes: [Probe] = []
    /// The probes asked a cluster domain (answered by a vassal, not by the Lord): the Lord comes from the audit logs.
    public var probesAskDomain = false
    public var holders: [HolderSample] = []
    public var arp: [ARPRun] = []
    public var audit: [AuditEvent] = []
    /// False for a peer without a store (the keepalived comparison).
    public var writesMeasured = true
    public var acknowledgedWrites = 0
    public var lostWrites = 0
    public var duplicatedWrites = 0

    public init(scenario: String, nodes: [String], oldLord: String?, target: String?, faultStartMs: Int64, faultEndMs: Int64, endMs: Int64) {
        self.scenario = scenario
        self.nodes = nodes
        self.oldLord = oldLord
        self.target = target
        self.faultStartMs = faultStartMs
        self.faultEndMs = faultEndMs
        self.endMs = endMs
    }
}

public struct DrillReport: Sendable {
    public var observations: DrillObservations
    /// Longest time without a successful answer, around and after the fault (what a user feels).
    public var gapMs: Int64
    public var failedRequests: Int
    public var requests: Int
    /// The failed requests after the fault started, first ten: milliseconds after the fault began and why.
    public var failures: [(atMs: Int64, error: String)]
    /// First successful answer from a node other than the old Lord.
    public var newLordMs: Int64?
    public var newLord: String?
    /// First audit event of another node showing it noticed (member_left of the target, quorum change or a new Lord).
    public var detectMs: Int64?
    /// First sample with the VIP on a node other than the old Lord.
    public var vipMoveMs: Int64?
    /// Most servers seen carrying the VIP at one instant (sampled every few ms in their namespaces).
    public var maxVIPHolders: Int
    /// Most running Lords at once according to the audit logs.
    public var maxAuditLords: Int
    /// Most MAC addresses answering ARP for the VIP in one run, seen from the client namespace.
    public var maxARPHolders: Int

    public init(_ o: DrillObservations) {
        observations = o
        let probes = o.probes.sorted { $0.tMs < $1.tMs }
        requests = probes.count
        let failed = probes.filter { !$0.ok && $0.tMs >= o.faultStartMs }
        failedRequests = failed.count
        failures = failed.prefix(10).map { ($0.tMs - o.faultStartMs, $0.error ?? "no answer") }
        // Gap: the longest stretch between successful answers that ends after the fault started.
        var gap: Int64 = 0
        var lastOK = probes.last(where: { $0.ok && $0.tMs <= o.faultStartMs })?.tMs ?? o.faultStartMs
        for p in probes where p.tMs > o.faultStartMs && p.ok {
            gap = max(gap, p.tMs - lastOK)
            lastOK = p.tMs
        }
        if let last = probes.last, !last.ok { gap = max(gap, last.tMs - lastOK) }
        gapMs = gap
        if o.probesAskDomain {
            // The first Lord elected after the fault started (the restarted Lord itself when it came back first).
            if let first = o.audit.filter({ $0.event == "lord" && $0.tMs >= o.faultStartMs }).min(by: { $0.tMs < $1.tMs }) {
                newLordMs = first.tMs - o.faultStartMs
                newLord = first.node
            }
        } else if let old = o.oldLord,
                  let first = probes.first(where: { $0.ok && $0.tMs >= o.faultStartMs && $0.servedBy != nil && $0.servedBy != old }) {
            newLordMs = first.tMs - o.faultStartMs
            newLord = first.servedBy
        }
        if let target = o.target {
            let noticed = o.audit.filter {
                $0.tMs >= o.faultStartMs && $0.node != target
                    && (($0.event == "member_left" && $0.member == target) || $0.event == "lord" || $0.event == "quorum_lost")
            }
            detectMs = noticed.map(\.tMs).min().map { $0 - o.faultStartMs }
        }
        if let old = o.oldLord, let moved = o.holders.first(where: { $0.tMs >= o.faultStartMs && !$0.holders.isEmpty && !$0.holders.contains(old) }) {
            vipMoveMs = moved.tMs - o.faultStartMs
        }
        maxVIPHolders = o.holders.map(\.holders.count).max() ?? 0
        maxARPHolders = o.arp.map(\.macs).max() ?? 0
        maxAuditLords = DrillReport.maxConcurrentLords(o)
    }

    /// Lordship intervals from the audit logs: `lord` … `unlord`/`stopped`/`started`, for nodes that were running.
    static func maxConcurrentLords(_ o: DrillObservations) -> Int {
        var intervals: [(start: Int64, end: Int64)] = []
        for node in o.nodes {
            var start: Int64?
            func close(_ at: Int64) {
                guard let s = start else { return }
                var e = at
                // A node the drill froze or killed claims nothing while it is stopped (its VIP, removed by the fence at
                // the lease deadline, is followed by the samples and ARP). Its few milliseconds after SIGCONT, before
                // it reads its clock and resigns, are not counted either.
                if node == o.target, let stopped = o.targetStoppedMs, s <= stopped, stopped < e {
                    e = stopped
                }
                intervals.append((s, e))
                start = nil
            }
            for e in o.audit.filter({ $0.node == node }).sorted(by: { $0.tMs < $1.tMs }) {
                switch e.event {
                case "lord":
                    if start == nil { start = e.tMs }
                case "unlord", "stopped", "started":
                    close(e.tMs)
                default: break
                }
            }
            close(o.endMs)
        }
        var edges: [(Int64, Int)] = []
        for iv in intervals where iv.end > iv.start {
            edges.append((iv.start, 1))
            edges.append((iv.end, -1))
        }
        edges.sort { $0.0 == $1.0 ? $0.1 < $1.1 : $0.0 < $1.0 }
        var current = 0
        var best = 0
        for (_, d) in edges {
            current += d
            best = max(best, current)
        }
        return best
    }

    public var json: JSONValue {
        let o = observations
        func opt(_ v: Int64?) -> JSONValue { v.map { .int($0) } ?? .null }
        return .object([
            ("scenario", .string(o.scenario)), ("old_lord", o.oldLord.map { .string($0) } ?? .null),
            ("target", o.target.map { .string($0) } ?? .null), ("new_lord", newLord.map { .string($0) } ?? .null),
            ("gap_ms", .int(gapMs)), ("new_lord_ms", opt(newLordMs)), ("detect_ms", opt(detectMs)), ("vip_move_ms", opt(vipMoveMs)),
            ("failed_requests", .int(Int64(failedRequests))), ("requests", .int(Int64(requests))),
            ("max_vip_holders", .int(Int64(max(maxVIPHolders, maxARPHolders)))),
            ("max_vip_holders_sampled", .int(Int64(maxVIPHolders))), ("max_vip_holders_arp", .int(Int64(maxARPHolders))),
            ("max_lords_audit", .int(Int64(maxAuditLords))),
            ("acknowledged_writes", .int(Int64(o.acknowledgedWrites))),
            ("lost_writes", o.writesMeasured ? .int(Int64(o.lostWrites)) : .null),
            ("duplicated_writes", .int(Int64(o.duplicatedWrites))),
            ("fault_ms", .int(o.faultEndMs - o.faultStartMs)),
            ("failures", .array(failures.map { .object([("at_ms", .int($0.atMs)), ("error", .string($0.error))]) })),
        ])
    }

    public var summary: String {
        let o = observations
        func ms(_ v: Int64?) -> String { v.map { "\($0) ms" } ?? "—" }
        return """
        drill \(o.scenario): target \(o.target ?? "-"), Lord before \(o.oldLord ?? "-"), after \(newLord ?? "-")
          client gap          \(gapMs) ms   (\(failedRequests) of \(requests) requests failed\(failures.isEmpty ? "" : "; first: \(failures[0].error) at +\(failures[0].atMs) ms"))
          detected after      \(ms(detectMs))
          new Lord after      \(ms(newLordMs))
          VIP moved after     \(ms(vipMoveMs))
          VIP holders at once \(maxVIPHolders) sampled, \(maxARPHolders) by ARP, \(maxAuditLords) Lords in the audit logs
          writes              \(o.writesMeasured ? "\(o.acknowledgedWrites) acknowledged, \(o.lostWrites) lost, \(o.duplicatedWrites) duplicated" : "not measured (no store)")
        """
    }

    /// A self-contained HTML page with an SVG timeline: per node the VIP (sampled) and the lordship (audit),
    /// the client's answers (green) and failures (red), the fault window shaded.
    public var timelineHTML: String {
        let o = observations
        let start = min(o.probes.first?.tMs ?? o.faultStartMs, o.faultStartMs - 1000)
        let end = max(o.endMs, start + 1)
        let width = 1000.0, left = 110.0, row = 34.0
        let rows = o.nodes.count + 1
        let height = Double(rows) * row + 60
        func x(_ t: Int64) -> Double { left + (width - left - 10) * Double(t - start) / Double(end - start) }
        var svg = "<svg xmlns='http://www.w3.org/2000/svg' width='\(Int(width))' height='\(Int(height))' font-family='sans-serif' font-size='12'>"
        svg += "<rect x='\(x(o.faultStartMs))' y='0' width='\(max(2, x(o.faultEndMs) - x(o.faultStartMs)))' height='\(height - 30)' fill='#fde68a' opacity='0.5'/>"
        svg += "<text x='\(x(o.faultStartMs) + 3)' y='12' fill='#92400e'>\(o.scenario) on \(o.target ?? "-")</text>"
        for (index, node) in o.nodes.enumerated() {
            let y = 20 + Double(index) * row
            svg += "<text x='4' y='\(y + 16)'>\(node)</text>"
            // VIP held (sampled)
            var runStart: Int64?
            var previous: Int64 = start
            for s in o.holders {
                let has = s.holders.contains(node)
                if has, runStart == nil { runStart = s.tMs }
                if !has, let r = runStart {
                    svg += "<rect x='\(x(r))' y='\(y + 2)' width='\(max(1, x(previous) - x(r)))' height='12' fill='#2563eb'><title>\(node) holds the VIP</title></rect>"
                    runStart = nil
                }
                previous = s.tMs
            }
            if let r = runStart {
                svg += "<rect x='\(x(r))' y='\(y + 2)' width='\(max(1, x(previous) - x(r)))' height='12' fill='#2563eb'/>"
            }
            // Lordship (audit)
            var lordSince: Int64?
            for e in o.audit.filter({ $0.node == node }).sorted(by: { $0.tMs < $1.tMs }) {
                if e.event == "lord", lordSince == nil { lordSince = e.tMs }
                if ["unlord", "stopped", "started"].contains(e.event), let s = lordSince {
                    svg += "<rect x='\(x(max(s, start)))' y='\(y + 16)' width='\(max(1, x(e.tMs) - x(max(s, start))))' height='6' fill='#7c3aed'/>"
                    lordSince = nil
                }
            }
            if let s = lordSince {
                svg += "<rect x='\(x(max(s, start)))' y='\(y + 16)' width='\(max(1, x(end) - x(max(s, start))))' height='6' fill='#7c3aed' opacity='0.6'/>"
            }
        }
        let cy = 20 + Double(o.nodes.count) * row
        svg += "<text x='4' y='\(cy + 16)'>client</text>"
        for p in o.probes {
            svg += "<rect x='\(x(p.tMs))' y='\(cy + 4)' width='1.5' height='16' fill='\(p.ok ? "#16a34a" : "#dc2626")'/>"
        }
        // Axis: seconds relative to the fault.
        let axisY = height - 24
        svg += "<line x1='\(left)' y1='\(axisY)' x2='\(width - 10)' y2='\(axisY)' stroke='#444'/>"
        var tick = ((start - o.faultStartMs) / 1000) * 1000
        while o.faultStartMs + tick <= end {
            let tx = x(o.faultStartMs + tick)
            if tx >= left {
                svg += "<line x1='\(tx)' y1='\(axisY)' x2='\(tx)' y2='\(axisY + 4)' stroke='#444'/><text x='\(tx - 8)' y='\(axisY + 16)'>\(tick / 1000)s</text>"
            }
            tick += 1000
        }
        svg += "</svg>"
        let title = "legion drill \(o.scenario)"
        return """
        <!doctype html><html><head><meta charset="utf-8"><title>\(title)</title>
        <style>body{font-family:sans-serif;margin:24px} pre{background:#f3f4f6;padding:12px}</style></head><body>
        <h1>\(title)</h1>
        <p>Blue: the VIP is configured on the node (sampled). Purple: the node is Lord (audit log). Client row: green = answered,
        red = failed. Yellow: the fault.</p>
        \(svg)
        <pre>\(summary.replacingOccurrences(of: "<", with: "&lt;"))</pre>
        </body></html>
        """
    }
}
