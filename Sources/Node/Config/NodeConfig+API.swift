extension NodeConfig.Endpoint {
    /// `[api]`: the node's HTTP API address (nil when the section has no `bind`) and the DNS resolver that
    /// checks domain ownership TXT records (`resolver = "host[:port]"`); `domain`: the name the routers (and the
    /// Lord on the failover IP) serve the API under, balanced across every node's API like a cluster domain.
    static func parseAPI(_ section: ConfigTable) throws(NodeConfigError) -> (bind: Self?, resolver: String?, domain: String?) {
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
        let domain = try table.string("domain")?.lowercased()
        if let domain {
            let labels = domain.split(separator: ".", omittingEmptySubsequences: false)
            guard labels.count >= 2, domain.utf8.count <= 253,
                  labels.allSatisfy({ !$0.isEmpty && $0.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-") } }) else {
                throw NodeConfigError.invalid(key: "api.domain", problem: "\(domain) is not a domain name (e.g. \"api.example.com\")")
            }
            if api == nil { throw NodeConfigError.invalid(key: "api.domain", problem: "needs api.bind (the address the routers forward to)") }
        }
        try table.rejectUnknownKeys()
        return (api, resolver, domain)
    }
}
