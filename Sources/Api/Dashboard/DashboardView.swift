import Foundation
import Node

/// The dashboard's two views as JSON, built from what the nodes report (`LocalNode.report()`, locally or through
/// `PeerClient`) and the store's rows. Pure: the routes gather, this decides what is shown (unit-tested).
enum DashboardView {
    /// One node's report, or why it could not be had.
    struct NodeReport {
        var node: String
        var report: JSONInput?
        var error: String?
    }

    /// Audit events worth an operator's eye in the failover history.
    static let historyEvents: Set<String> = ["lord", "unlord", "started", "stopped", "quorum_lost", "quorum_gained", "member_left"]

    static func operatorView(legion: String, reports: [NodeReport], alarms: [JSONValue], nowMs: UInt64) -> JSONValue {
        var nodes: [JSONValue] = []
        var lords: [String] = []
        var lordNamedBy: [String] = []
        var vip: String?
        var vipHolder: String?
        var storeLeaderAddress: String?
        var storeAddresses: [String: String] = [:]
        var events: [(Int64, JSONValue)] = []
        var domains: [String: Set<String>] = [:]
        for entry in reports.sorted(by: { $0.node < $1.node }) {
            guard let report = entry.report, let status = report["status"] else {
                nodes.append(.object([("name", .string(entry.node)), ("reachable", .bool(false)), ("lord", .bool(false)),
                                      ("error", .string(entry.error ?? "no answer"))]))
                continue
            }
            let name = status["name"]?.stringValue ?? entry.node
            let legionStatus = status["legion"]
            let isLord = status["lord"]?.boolValue ?? false
            if isLord { lords.append(name) }
            if let named = legionStatus?["lord_name"]?.stringValue { lordNamedBy.append(named) }
            if let v = status["vip"]?.stringValue { vip = v }
            if status["vip_phase"]?.stringValue == "held" { vipHolder = name }
            var store: JSONValue = .null
            if let st = status["store"], case .object = st {
                if let address = st["address"]?.stringValue { storeAddresses[address] = name }
                if st["is_leader"]?.boolValue == true, let address = st["address"]?.stringValue { storeLeaderAddress = address }
                if storeLeaderAddress == nil, let leader = st["leader"]?.stringValue { storeLeaderAddress = leader }
                store = .object([("role", st["role"]?.value ?? .null), ("is_leader", .bool(st["is_leader"]?.boolValue ?? false)),
                                 ("applied_seq", st["applied_seq"]?.value ?? .null), ("reachable", st["reachable"]?.value ?? .null),
                                 ("leader", st["leader"]?.value ?? .null)])
            }
            var hosting: JSONValue = .null
            if let h = status["hosting"], case .object = h {
                hosting = .object([("containers", h["containers"]?.value ?? .null), ("sub_emperors", h["sub_emperors"]?.value ?? .null),
                                   ("applied_version", h["applied_version"]?.value ?? .null), ("running", h["running"]?.value ?? .array([]))])
            }
            nodes.append(.object([
                ("name", .string(name)), ("reachable", .bool(true)), ("lord", .bool(isLord)), ("valor", status["valor"]?.value ?? .null),
                ("lease_ms", legionStatus?["lease_ms"]?.value ?? .null), ("vip_phase", status["vip_phase"]?.value ?? .null),
                ("members", .array((legionStatus?["members"]?.arrayValue ?? []).compactMap { $0["name"]?.stringValue }.map { .string($0) })),
                ("quorum", legionStatus?["quorum"]?.value ?? .null), ("votes", legionStatus?["votes"]?.value ?? .null),
                ("store", store), ("hosting", hosting),
            ]))
            for event in report["audit"]?.arrayValue ?? [] {
                guard let kind = event["event"]?.stringValue, historyEvents.contains(kind), let at = event["time_ms"]?.intValue else { continue }
                let detail = [event["reason"]?.stringValue, event["member"]?.stringValue.map { "member \($0)" },
                              event["votes"]?.intValue.map { "votes \($0)" }].compactMap { $0 }.joined(separator: ", ")
                events.append((at, .object([("at_ms", .int(at)), ("event", .string(kind)), ("node", .string(event["node"]?.stringValue ?? name)),
                                            ("detail", .string(detail))])))
            }
            for domain in report["domains"]?.arrayValue ?? [] {
                guard let key = domain["domain"]?.stringValue else { continue }
                for backend in domain["backends"]?.arrayValue ?? [] {
                    if let address = backend.stringValue { domains[key, default: []].insert(address) }
                }
            }
        }
        // The Lord: the node that says it is (two would be a split brain — shown as both, never hidden), else the
        // name the reachable members agree on.
        let lord: JSONValue = lords.count == 1 ? .string(lords[0]) : lords.isEmpty
            ? (Set(lordNamedBy).count == 1 ? .string(lordNamedBy[0]) : .null) : .string(lords.sorted().joined(separator: ","))
        let history = events.sorted { $0.0 > $1.0 }.prefix(60).map(\.1)
        return .object([
            ("generated_ms", .uint(nowMs)), ("legion", .string(legion)), ("lord", lord),
            ("vip", vip.map { .string($0) } ?? .null), ("vip_holder", vipHolder.map { .string($0) } ?? .null),
            ("store_leader", storeLeaderAddress.map { .string(storeAddresses[$0] ?? $0) } ?? .null),
            ("nodes", .array(nodes)), ("failovers", .array(Array(history))),
            ("domains", .array(domains.keys.sorted().map { key in
                .object([("domain", .string(key)), ("backends", .array((domains[key] ?? []).sorted().map { .string($0) }))])
            })),
            ("alarms", .array(alarms)),
        ])
    }

    /// A customer's containers with their state: running when the node that hosts it reports its sub-Emperor.
    static func containerState(uid: Int64, server: String, reports: [NodeReport]) -> String {
        guard let report = reports.first(where: { $0.node == server })?.report,
              let hosting = report["status"]?["hosting"], case .object = hosting else { return "unknown" }
        return hosting["running"]?.arrayValue.contains(where: { $0.intValue == uid }) == true ? "running" : "stopped"
    }

    static func storageUsed(uid: Int64, server: String, reports: [NodeReport]) -> JSONValue {
        guard let report = reports.first(where: { $0.node == server })?.report else { return .null }
        return report["status"]?["hosting"]?["storage"]?["\(uid)"]?["used_bytes"]?.value ?? .null
    }
}
