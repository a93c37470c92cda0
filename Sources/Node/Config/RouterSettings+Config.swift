import Foundation
import Subscriptions

extension RouterSettings {
    /// `[router]`: the HTTP router, its subscription sockets and cluster domains.
    static func parse(_ section: ConfigTable, baseDir: String) throws(NodeConfigError) -> Self {
        var table = section
        let http = try NodeConfig.Endpoint(parsing: try table.requiredString("http", hint: "the HTTP listen address, e.g. \"0.0.0.0:80\""), key: "router.http")
        let sub = try NodeConfig.Endpoint(parsing: try table.requiredString("subscription", hint: "the UDP subscription address vassals --subscribe-to, e.g. \"127.0.0.1:2626\""), key: "router.subscription")
        var settings = RouterSettings(http: http, subscription: sub)
        if let algo = try table.string("algorithm") {
            guard let a = SubscriptionTable.Algorithm(rawValue: algo) else {
                throw .invalid(key: "router.algorithm", problem: "'\(algo)' is unknown; use \"wrr\" (uWSGI's weighted round robin) or \"lc\" (least connections)")
            }
            settings.algorithm = a
        }
        if let check = try table.string("sign_check") {
            let parts = check.split(separator: ":", maxSplits: 1)
            guard parts.count == 2, let digest = SubscriptionDigest(rawValue: String(parts[0]).uppercased()) else {
                throw .invalid(key: "router.sign_check", problem: "write DIGEST:KEY_DIR as uWSGI does, e.g. \"SHA1:/etc/legion/keys\" (SHA1 or SHA256)")
            }
            let dir = String(parts[1])
            settings.signCheck = (digest, dir.hasPrefix("/") ? dir : URL(fileURLWithPath: baseDir).appendingPathComponent(dir).path)
        }
        if let name = try table.string("server_name") { settings.serverName = name } else {
            settings.serverName = ProcessInfo.processInfo.hostName
        }
        if let t = try table.int("tolerance_s", range: 1...3600) { settings.toleranceMs = UInt64(t) * 1000 }
        if let t = try table.int("drain_last_ms", range: 0...600_000) { settings.drainLastMs = UInt64(t) }
        if let n = try table.int("threads", range: 1...256) { settings.threads = n }
        if let fast = try table.bool("fast_path") { settings.fastPath = fast }
        func path(_ text: String) -> String { text.hasPrefix("/") ? text : URL(fileURLWithPath: baseDir).appendingPathComponent(text).path }
        if let text = try table.string("https") {
            settings.https = try NodeConfig.Endpoint(parsing: text, key: "router.https")
            settings.httpsCertificate = path(try table.requiredString("https_certificate", hint: "the default certificate (PEM file) for clients without SNI"))
            settings.httpsKey = path(try table.requiredString("https_key", hint: "the default certificate's private key (PEM file)"))
        }
        if let dir = try table.string("certificates") { settings.certificatesDirectory = path(dir) }
        if let text = try table.string("internal") { settings.internalRouter = try NodeConfig.Endpoint(parsing: text, key: "router.internal") }
        if let text = try table.string("cluster_subscription") {
            settings.clusterSubscription = try NodeConfig.Endpoint(parsing: text, key: "router.cluster_subscription")
        }
        if let text = try table.string("advertise") {
            _ = try NodeConfig.Endpoint(parsing: text, key: "router.advertise")
            settings.advertise = text
        }
        if (settings.internalRouter == nil) != (settings.clusterSubscription == nil) {
            throw .invalid(key: "router.cluster_subscription", problem: "cluster domains need both router.internal and router.cluster_subscription")
        }
        if let t = try table.int("connect_timeout_ms", range: 10...600_000) { settings.connectTimeoutMs = Int64(t) }
        if let t = try table.int("headers_timeout_ms", range: 100...600_000) { settings.headersTimeoutMs = Int64(t) }
        try table.rejectUnknownKeys()

        return settings
    }
}
