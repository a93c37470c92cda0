extension NodeConfig {
    /// `[metrics]`: the node-local collector (on by default on nodes that host or route).
    public struct MetricsSettings: Sendable, Equatable {
        public var enabled = true
        /// Seconds between samples (uwsgi.it: 300; here a minute).
        public var intervalSeconds: Int64 = 60
        public var retention = MetricRetention()

        public init() {}

        static func parse(_ section: ConfigTable) throws(NodeConfigError) -> Self {
            var table = section
            var out = Self()
            if let v = try table.bool("enabled") { out.enabled = v }
            if let v = try table.int("interval_s", range: 1...3600) { out.intervalSeconds = Int64(v) }
            let raw = Int64(try table.int("raw_hours", range: 1...24 * 365) ?? 48) * 3600
            let fine = Int64(try table.int("fine_days", range: 1...3650) ?? 30) * 86400
            let total = Int64(try table.int("retention_days", range: 1...3650) ?? 400) * 86400
            guard raw <= fine, fine <= total else {
                throw .invalid(key: "metrics", problem: "raw_hours ≤ fine_days ≤ retention_days must hold (each tier inside the next)")
            }
            out.retention = MetricRetention(rawSeconds: raw, fineSeconds: fine, retentionSeconds: total)
            try table.rejectUnknownKeys()
            return out
        }
    }

    /// `[alarms]`: delivery of stored alarms to each container's channels (done by the Lord).
    public struct AlarmDeliverySettings: Sendable, Equatable {
        public var enabled = true
        /// Endpoints of the push services (overridable for a proxy, or a test receiver).
        public var pushoverURL = "https://api.pushover.net/1/messages.json"
        public var pushbulletURL = "https://api.pushbullet.com/v2/pushes"
        /// One delivery attempt's limit.
        public var timeoutMs = 10_000
        /// A delivery still failing after this long is given up (logged as failed, kept in the delivery log).
        public var giveUpSeconds: Int64 = 24 * 3600
        /// The longest the Lord waits between looks for alarms to deliver (ms). It also looks whenever the store
        /// changes (a new alarm is a store write) and when a retry falls due.
        public var pollMs = 30_000

        public init() {}

        static func parse(_ section: ConfigTable) throws(NodeConfigError) -> Self {
            var table = section
            var out = Self()
            if let v = try table.bool("enabled") { out.enabled = v }
            for (key, keyPath) in [("pushover_url", \Self.pushoverURL), ("pushbullet_url", \Self.pushbulletURL)] {
                if let v = try table.string(key) {
                    guard v.hasPrefix("http://") || v.hasPrefix("https://") else {
                        throw .invalid(key: "alarms.\(key)", problem: "'\(v)' is not an http:// or https:// URL")
                    }
                    out[keyPath: keyPath] = v
                }
            }
            if let v = try table.int("timeout_ms", range: 100...120_000) { out.timeoutMs = v }
            if let v = try table.int("give_up_hours", range: 1...24 * 30) { out.giveUpSeconds = Int64(v) * 3600 }
            if let v = try table.int("poll_ms", range: 100...600_000) { out.pollMs = v }
            try table.rejectUnknownKeys()
            return out
        }
    }
}
