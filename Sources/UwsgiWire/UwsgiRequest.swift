/// Builds the uwsgi request a router sends to a backend (spec §4.6), with the vars in the order
/// uWSGI's HTTP router emits them — except `REMOTE_PORT`, which we send correctly (uWSGI 2.0
/// byte-swaps it on little-endian hosts).
public struct UwsgiRequest: Sendable {
    public var method: String
    /// The raw request target as received, e.g. `/some/path?a=1`.
    public var uri: String
    /// e.g. `HTTP/1.1`.
    public var serverProtocol: String
    /// Request headers in arrival order.
    public var headers: [(name: String, value: String)]
    public var serverName: String
    public var serverPort: String
    public var remoteAddress: String
    public var remotePort: Int
    public var https = false
    /// Extra vars appended after the headers (uWSGI's `--http-var`).
    public var extraVars: [(String, String)] = []

    public init(method: String, uri: String, serverProtocol: String, headers: [(name: String, value: String)],
                serverName: String, serverPort: String, remoteAddress: String, remotePort: Int) {
        self.method = method
        self.uri = uri
        self.serverProtocol = serverProtocol
        self.headers = headers
        self.serverName = serverName
        self.serverPort = serverPort
        self.remoteAddress = remoteAddress
        self.remotePort = remotePort
    }

    /// Encodes header + vars straight into bytes (the hot path: no per-var arrays). Throws when
    /// the vars exceed the 65 535-byte uwsgi limit.
    public func encodePacket(modifier1: UInt8, modifier2: UInt8) throws(UwsgiWireError) -> [UInt8] {
        var out: [UInt8] = [modifier1, 0, 0, modifier2]
        out.reserveCapacity(512 + headers.reduce(0) { $0 + $1.name.utf8.count + $1.value.utf8.count + 9 })
        func put(_ key: String, _ value: String) {
            var k = key, v = value
            k.withUTF8 { kb in
                out.append(UInt8(truncatingIfNeeded: kb.count)); out.append(UInt8(truncatingIfNeeded: kb.count >> 8))
                out.append(contentsOf: kb)
            }
            v.withUTF8 { vb in
                out.append(UInt8(truncatingIfNeeded: vb.count)); out.append(UInt8(truncatingIfNeeded: vb.count >> 8))
                out.append(contentsOf: vb)
            }
        }
        put("REQUEST_METHOD", method)
        let query = uri.firstIndex(of: "?")
        let rawPath = query.map { String(uri[..<$0]) } ?? uri
        let path = rawPath.utf8.contains(where: { $0 == 0x25 || $0 == 0x2e || $0 == 0x23 }) ? UwsgiRequest.decodePath(rawPath) : rawPath
        if let query {
            put("PATH_INFO", path)
            put("REQUEST_URI", uri)
            put("QUERY_STRING", String(uri[uri.index(after: query)...]))
        } else {
            put("REQUEST_URI", uri)
            put("PATH_INFO", path)
            put("QUERY_STRING", "")
        }
        put("SERVER_PROTOCOL", serverProtocol)
        put("SCRIPT_NAME", "")
        put("SERVER_NAME", serverName)
        put("SERVER_PORT", serverPort)
        put("UWSGI_ROUTER", "http")
        if https { put("HTTPS", "on") }
        put("REMOTE_ADDR", remoteAddress)
        put("REMOTE_PORT", String(remotePort))
        var names: [String] = []
        names.reserveCapacity(headers.count)
        for (name, _) in headers { names.append(UwsgiRequest.cgiName(name)) }
        if Set(names).count == names.count {
            for (i, (_, value)) in headers.enumerated() { put(names[i], value) }
        } else {
            var order: [String] = []
            var values: [String: String] = [:]
            for (i, (_, value)) in headers.enumerated() {
                if let existing = values[names[i]] { values[names[i]] = existing + ", " + value } else {
                    order.append(names[i]); values[names[i]] = value
                }
            }
            for name in order { put(name, values[name] ?? "") }
        }
        for (k, value) in extraVars { put(k, value) }
        let size = out.count - 4
        guard size <= Int(UInt16.max) else { throw .bodyTooLarge(size: size) }
        out[1] = UInt8(truncatingIfNeeded: size)
        out[2] = UInt8(truncatingIfNeeded: size >> 8)
        return out
    }

    public var vars: UwsgiVars {
        var v = UwsgiVars()
        v.append("REQUEST_METHOD", method)
        let query = uri.firstIndex(of: "?")
        let rawPath = query.map { String(uri[..<$0]) } ?? uri
        let path = UwsgiRequest.decodePath(rawPath)
        if let query {
            v.append("PATH_INFO", path)
            v.append("REQUEST_URI", uri)
            v.append("QUERY_STRING", String(uri[uri.index(after: query)...]))
        } else {
            v.append("REQUEST_URI", uri)
            v.append("PATH_INFO", path)
            v.append("QUERY_STRING", "")
        }
        v.append("SERVER_PROTOCOL", serverProtocol)
        v.append("SCRIPT_NAME", "")
        v.append("SERVER_NAME", serverName)
        v.append("SERVER_PORT", serverPort)
        v.append("UWSGI_ROUTER", "http")
        if https { v.append("HTTPS", "on") }
        v.append("REMOTE_ADDR", remoteAddress)
        v.append("REMOTE_PORT", String(remotePort))
        // Headers: CGI names, repeated headers merged at their first position.
        var order: [String] = []
        var values: [String: String] = [:]
        for (name, value) in headers {
            let cgi = UwsgiRequest.cgiName(name)
            if let existing = values[cgi] {
                values[cgi] = existing + ", " + value
            } else {
                order.append(cgi)
                values[cgi] = value
            }
        }
        for name in order { v.append(name, values[name] ?? "") }
        for (k, value) in extraVars { v.append(k, value) }
        return v
    }

    /// `Content-Type` → `CONTENT_TYPE`, `X-Test` → `HTTP_X_TEST`.
    public static func cgiName(_ header: String) -> String {
        let upper = String(header.uppercased().map { $0 == "-" ? "_" : $0 })
        return upper == "CONTENT_TYPE" || upper == "CONTENT_LENGTH" ? upper : "HTTP_" + upper
    }

    /// uWSGI's `http_url_decode`: `%XX` decoded, `%%` → `%`, `+` kept, stops at `#`, `.` and
    /// `..` segments resolved (never above the root), repeated slashes kept.
    public static func decodePath(_ raw: String) -> String {
        let bytes = Array(raw.utf8)
        var out: [UInt8] = []
        var i = 0
        func hex(_ b: UInt8) -> UInt8? {
            switch b {
            case 0x30...0x39: return b - 0x30
            case 0x41...0x46: return b - 0x41 + 10
            case 0x61...0x66: return b - 0x61 + 10
            default: return nil
            }
        }
        while i < bytes.count {
            let b = bytes[i]
            if b == 0x23 { break }
            if b == 0x25, i + 1 < bytes.count, bytes[i + 1] == 0x25 {
                out.append(0x25); i += 2; continue
            }
            if b == 0x25, i + 2 < bytes.count, let h = hex(bytes[i + 1]), let l = hex(bytes[i + 2]) {
                out.append(h << 4 | l); i += 3; continue
            }
            out.append(b); i += 1
        }
        // Resolve dot segments on the decoded path.
        let segments = out.split(separator: 0x2f, omittingEmptySubsequences: false).map(Array.init)
        var stack: [[UInt8]] = []
        for (index, segment) in segments.enumerated() {
            let last = index == segments.count - 1
            if segment == [0x2e] {
                if last { stack.append([]) }
                continue
            }
            if segment == [0x2e, 0x2e] {
                if stack.count > 1 { stack.removeLast() }
                if last { stack.append([]) }
                continue
            }
            stack.append(segment)
        }
        var joined: [UInt8] = []
        for (index, segment) in stack.enumerated() {
            if index > 0 { joined.append(0x2f) }
            joined.append(contentsOf: segment)
        }
        if joined.isEmpty { joined = [0x2f] }
        return String(decoding: joined, as: UTF8.self)
    }
}
