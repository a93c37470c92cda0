extension NodeConfig.VIP {
    /// `[vip]`: the failover IP driver and address.
    static func parse(_ section: ConfigTable) throws(NodeConfigError) -> Self {
        var table = section
        var vip = Self()
        let driverText = try table.string("driver") ?? "none"
        guard let driver = NodeConfig.VIPDriverKind(rawValue: driverText) else {
            throw .invalid(key: "vip.driver", problem: "'\(driverText)' is not a driver; use one of \(NodeConfig.VIPDriverKind.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        vip.driver = driver
        if let address = try table.string("address") {
            let parts = address.split(separator: "/", maxSplits: 1)
            let ip = String(parts.first ?? "")
            guard isIPv4(ip) else { throw .invalid(key: "vip.address", problem: "'\(address)' is not an IPv4 address (optionally with /PREFIX)") }
            vip.address = ip
            if parts.count == 2 {
                guard let p = Int(parts[1]), (1...32).contains(p) else { throw .invalid(key: "vip.address", problem: "prefix '/\(parts[1])' must be 1-32") }
                vip.prefixLength = p
            }
        }
        vip.interface = try table.string("interface") ?? ""
        vip.httpPort = try table.int("http_port", range: 1...65_535) ?? 80
        vip.acquireCommand = try table.string("acquire") ?? ""
        vip.releaseCommand = try table.string("release") ?? ""
        try table.rejectUnknownKeys()
        switch driver {
        case .none: break
        case .loopback:
            guard vip.address.hasPrefix("127.") else {
                throw .invalid(key: "vip.address", problem: "the loopback driver needs a 127.x.y.z address, got '\(vip.address)'")
            }
        case .iproute2:
            guard !vip.address.isEmpty else { throw .missing(key: "vip.address", hint: "the floating IP with prefix, e.g. \"10.77.0.100/24\"") }
            guard !vip.interface.isEmpty else { throw .missing(key: "vip.interface", hint: "the interface that carries the VIP, e.g. \"eth0\"") }
        case .command:
            guard !vip.acquireCommand.isEmpty, !vip.releaseCommand.isEmpty else {
                throw .missing(key: "vip.acquire", hint: "the command driver needs both vip.acquire and vip.release shell commands")
            }
        }
        return vip
    }
}
