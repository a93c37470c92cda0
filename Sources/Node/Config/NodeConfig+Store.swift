extension NodeConfig.StoreSettings {
    /// `[store]`: this node's member of the replicated control-plane database.
    static func parse(_ section: ConfigTable) throws(NodeConfigError) -> Self {
        var table = section
        guard let id = try table.int("id", range: 1...Int(Int32.max)) else {
            throw .missing(key: "store.id", hint: "the node's dqlite id: 1 on the node that bootstraps the store, a different number on each other node")
        }
        let bindText = try table.requiredString("bind", hint: "the IPv4:port dqlite listens on, e.g. \"127.0.0.1:17301\"")
        let bind = try NodeConfig.Endpoint(parsing: bindText, key: "store.bind")
        guard isIPv4(bind.host) else {
            throw .invalid(key: "store.bind", problem: "\(bind.host) is not an IPv4 literal; dqlite 1.11 accepts IPv4 addresses only (no names, no IPv6)")
        }
        var peers: [NodeConfig.Endpoint] = []
        for (i, text) in (try table.stringArray("peers") ?? []).enumerated() {
            let peer = try NodeConfig.Endpoint(parsing: text, key: "store.peers[\(i)]")
            guard isIPv4(peer.host) else { throw .invalid(key: "store.peers[\(i)]", problem: "\(peer.host) is not an IPv4 literal (dqlite 1.11 accepts IPv4 only)") }
            peers.append(peer)
        }
        if peers.contains(bind) { throw .invalid(key: "store.peers", problem: "lists this node's own address \(bind); list only the other members") }
        if id != 1, peers.isEmpty {
            throw .missing(key: "store.peers", hint: "node \(id) joins an existing store: list at least one member's address (id 1 bootstraps)")
        }
        var settings = Self(id: UInt64(id), bind: bind, peers: peers)
        if let db = try table.string("database") {
            guard !db.isEmpty, db.utf8.count <= 64, db.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "_" || $0 == "-" }) else {
                throw .invalid(key: "store.database", problem: "'\(db)' must be 1-64 letters, digits, '_' or '-'")
            }
            settings.database = db
        }
        if let v = try table.int("latency_ms", range: 1...1000) { settings.latencyMs = v }
        if let v = try table.int("snapshot_threshold", range: 16...1_000_000) { settings.snapshotThreshold = v }
        if let v = try table.int("snapshot_trailing", range: 16...10_000_000) { settings.snapshotTrailing = v }
        if settings.snapshotTrailing < settings.snapshotThreshold {
            throw .invalid(key: "store.snapshot_trailing", problem: "\(settings.snapshotTrailing) is below snapshot_threshold \(settings.snapshotThreshold); dqlite needs trailing ≥ threshold")
        }
        if let v = try table.int("poll_ms", range: 20...10_000) { settings.pollMs = v }
        if let v = try table.int("idle_poll_ms", range: 100...60_000) { settings.idlePollMs = v }
        if settings.idlePollMs < settings.pollMs {
            throw .invalid(key: "store.idle_poll_ms", problem: "\(settings.idlePollMs) is below poll_ms \(settings.pollMs); the safety net is the slower check")
        }
        if let v = try table.int("voter_grace_ms", range: 500...600_000) { settings.voterGraceMs = v }
        try table.rejectUnknownKeys()

        return settings
    }
}
