import TestSupport
import Testing
import UwsgiWire

@Suite struct UwsgiRequestTests {
    /// Our vars must equal what uWSGI's router sent (captured), byte for byte, given the same
    /// inputs — the captured REMOTE_PORT is uWSGI's byte-swapped value, passed as is here.
    @Test func reproducesTheCapturedRouterRequests() throws {
        let get = try FixtureFile("uwsgi-request/01_http_router_GET_query.txt").bytes("stream_hex")
        var request = UwsgiRequest(method: "GET", uri: "/some/path?a=1&b=two", serverProtocol: "HTTP/1.1",
                                   headers: [("Host", "raw.example.com"), ("User-Agent", "curl/7.88.1"), ("Accept", "*/*"), ("X-Test", "hello")],
                                   serverName: "vm", serverPort: "18080", remoteAddress: "127.0.0.1", remotePort: 59060)
        #expect(try UwsgiPacket(modifier1: 0, vars: request.vars).encode() == get)
        #expect(try request.encodePacket(modifier1: 0, modifier2: 0) == get, "the fast encoder is byte-identical")

        let post = try FixtureFile("uwsgi-request/02_http_router_POST_body.txt").bytes("stream_hex")
        request = UwsgiRequest(method: "POST", uri: "/post", serverProtocol: "HTTP/1.1",
                               headers: [("Host", "raw.example.com"), ("User-Agent", "curl/7.88.1"), ("Accept", "*/*"),
                                         ("Content-Type", "application/json"), ("Content-Length", "9")],
                               serverName: "vm", serverPort: "18080", remoteAddress: "127.0.0.1", remotePort: 63156)
        var expected = try UwsgiPacket(modifier1: 0, vars: request.vars).encode()
        expected.append(contentsOf: Array(#"{"k":"v"}"#.utf8))
        #expect(expected == post)
    }

    @Test func pathDecodingFollowsUwsgi() {
        #expect(UwsgiRequest.decodePath("/a//b/./c/../d%41") == "/a//b/dA")
        #expect(UwsgiRequest.decodePath("/x/..") == "/")
        #expect(UwsgiRequest.decodePath("/end/.") == "/end/")
        #expect(UwsgiRequest.decodePath("/p%2b+q%%r") == "/p++q%r")
        #expect(UwsgiRequest.decodePath("/frag#x") == "/frag")
        #expect(UwsgiRequest.decodePath("/hello%2Fworld") == "/hello/world")
        #expect(UwsgiRequest.decodePath("/../../etc/passwd") == "/etc/passwd")
    }

    @Test func repeatedHeadersMergeAtTheirFirstPosition() throws {
        let r = UwsgiRequest(method: "GET", uri: "/", serverProtocol: "HTTP/1.1",
                             headers: [("Accept", "a"), ("X-Y", "1"), ("accept", "b")],
                             serverName: "s", serverPort: "80", remoteAddress: "10.0.0.1", remotePort: 40001)
        let names = r.vars.entries.map { String(decoding: $0.key, as: UTF8.self) }
        #expect(Array(names.suffix(2)) == ["HTTP_ACCEPT", "HTTP_X_Y"])
        #expect(r.vars.string("HTTP_ACCEPT") == "a, b")
        #expect(r.vars.string("REMOTE_PORT") == "40001", "not byte-swapped")
        let slow = try UwsgiPacket(modifier1: 0, vars: r.vars).encode()
        #expect(try r.encodePacket(modifier1: 0, modifier2: 0) == slow)
    }
}
