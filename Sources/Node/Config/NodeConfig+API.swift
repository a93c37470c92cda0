extension NodeConfig.Endpoint {
    /// `[api]`: the node's HTTP API address (nil when the section has no `bind`).
    static func parseAPI(_ section: ConfigTable) throws(NodeConfigError) -> Self? {
        var table = section
        var api: Self?
        if let text = try table.string("bind") { api = try Self(parsing: text, key: "api.bind") }
        try table.rejectUnknownKeys()
        return api
    }
}
