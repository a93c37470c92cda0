import Foundation
import Node

/// What the API reads from its own node (not the store): status, the router's table, metric samples and the
/// election audit log. Other nodes' are read through `PeerClient`.
public struct LocalNode: Sendable {
    public var name: String
    public var state: NodeState
    public var subscriptions: SubscriptionStore?
    public var metrics: MetricDatabase?
    public var auditPath: String

    public init(name: String, state: NodeState, subscriptions: SubscriptionStore?, metrics: MetricDatabase?, auditPath: String) {
        self.name = name
        self.state = state
        self.subscriptions = subscriptions
        self.metrics = metrics
        self.auditPath = auditPath
    }

    /// The last `limit` events of the audit log (newest last); reads at most the file's last 256 KiB.
    public func auditTail(limit: Int = 100) -> [JSONInput] {
        guard let handle = FileHandle(forReadingAtPath: auditPath) else { return [] }
        defer { try? handle.close() }
        let size = (try? handle.seekToEnd()) ?? 0
        let start = size > 262_144 ? size - 262_144 : 0
        try? handle.seek(toOffset: start)
        guard let data = try? handle.readToEnd() else { return [] }
        var lines = data.split(separator: UInt8(ascii: "\n"))
        if start > 0, !lines.isEmpty { lines.removeFirst() }   // a partial first line
        return lines.suffix(limit).compactMap { try? JSONDecoder().decode(JSONInput.self, from: Data($0)) }
    }

    /// Domains → backend addresses in this node's router table.
    public func domains() -> [(String, [String])] {
        guard let subscriptions else { return [] }
        var map: [String: [String]] = [:]
        for node in subscriptions.snapshot.nodes { map[node.keyString, default: []].append(node.addressString) }
        return map.keys.sorted().map { ($0, map[$0] ?? []) }
    }

    /// This node's answer to a peer's `node` request (and its own part of the operator view).
    public func report() -> JSONValue {
        .object([
            ("status", state.statusJSON()),
            ("audit", .array(auditTail(limit: 100).map(\.value))),
            ("domains", .array(domains().map { .object([("domain", .string($0.0)), ("backends", .array($0.1.map { .string($0) }))]) })),
        ])
    }
}
