extension NodeConfig.Endpoint {
    /// `[api]`: the node's HTTP API address (nil when the section has no `bind`) and the DNS resolver that
    /// checks domain ownership TXT records (`resolver = "host[:port]"`).
    static func parseAPI(_ section: ConfigTable) throws(NodeConfigError) -> (bind: Self?, resolver: String?) {
        var table = section
        var api: Self?
        if let text = try table.string("bind") { api = try Self(parsing: text, key: "api.bind") }
        let resolver = try table.string("resolver")
        if let resolver {
            let host = resolver.split(separator: ":", maxSplits: 1).first.map(String.init) ?? ""
            let port = resolver.split(separator: ":", maxSplits: 1).dropFirst().first
            guard isIPv4(host), port.map({ Int($0).map { (1...65535).contains($0) } ?? false }) ?? true else {
                throw NodeConfigError.invalid(key: "api.resolver", problem: "\(resolver) is not an IPv4 address with an optional :port (e.g. \"127.0.0.1:5353\")")
            }
        }
        try table.rejectUnknownKeys()
        return (api, resolver)
    }
}
