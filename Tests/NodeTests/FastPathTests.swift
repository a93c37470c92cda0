import Testing
import UwsgiWire
@testable import Node

/// The router fast path's pure parts: the request/response head scanners, the head rewrite, the
/// uwsgi packet writer (byte-identical to `UwsgiRequest.encodePacket`) and the byte buffer.
@Suite struct FastPathTests {
    func scan(_ text: String) -> (HTTPHeadScanner.RequestScan, [HTTPHeadScanner.Header]) {
        var headers: [HTTPHeadScanner.Header] = []
        let bytes = Array(text.utf8)
        let result = bytes.withUnsafeBytes { HTTPHeadScanner.scanRequest($0, headers: &headers) }
        return (result, headers)
    }

    func request(_ text: String) throws -> HTTPHeadScanner.Request {
        let (result, _) = scan(text)
        guard case .complete(let req) = result else {
            Issue.record("expected a complete request, got \(result)")
            throw ScanFailure()
        }
        return req
    }

    struct ScanFailure: Error {}

    @Test func plainRequestsAreComplete() throws {
        let text = "GET /a?b=1 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: t\r\n\r\n"
        let req = try request(text)
        let bytes = Array(text.utf8)
        #expect(req.headLength == bytes.count)
        #expect(String(decoding: bytes[req.method], as: UTF8.self) == "GET")
        #expect(String(decoding: bytes[req.uri], as: UTF8.self) == "/a?b=1")
        #expect(String(decoding: bytes[req.host], as: UTF8.self) == "example.com")
        #expect(req.minor == 1 && req.keepAlive && req.contentLength == 0)
    }

    @Test func keepAliveFollowsTheVersionAndConnectionTokens() throws {
        #expect(try request("GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n").keepAlive == false)
        #expect(try request("GET / HTTP/1.0\r\nHost: h\r\n\r\n").keepAlive == false)
        #expect(try request("GET / HTTP/1.0\r\nHost: h\r\nConnection: Keep-Alive\r\n\r\n").keepAlive == true)
        #expect(try request("GET / HTTP/1.1\r\nHost: h\r\nConnection: TE, close\r\n\r\n").keepAlive == false)
    }

    @Test func incompleteHeadsWait() {
        for partial in ["G", "GET / HTTP/1.1\r\n", "GET / HTTP/1.1\r\nHost: h\r\n", "GET / HTTP/1.1\r\nHost: h\r\n\r"] {
            #expect(scan(partial).0 == .incomplete, "\(partial.debugDescription)")
        }
    }

    @Test func unusualRequestsGoToTheGeneralRouter() {
        let general = [
            "GET / HTTP/1.1\nHost: h\n\n",  // bare LF
            "GET / HTTP/1.1\r\nHost: h\r\n folded\r\n\r\n",  // obsolete line folding
            "GET / HTTP/2.0\r\nHost: h\r\n\r\n",
            "GET / HTTP/1.1 junk\r\nHost: h\r\n\r\n",
            "GARBAGE\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",  // no Host
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: x\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: \(HTTPHeadScanner.maxFastBody + 1)\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: h\r\nX-A: 1\r\nx_a: 2\r\n\r\n",  // same CGI name: merged by the general router
            "GET / HTTP/1.1\r\nHost: h\r\nX-Bad: a\u{1}b\r\n\r\n",
            "GET /\u{7f} HTTP/1.1\r\nHost: h\r\n\r\n",
            "get / HTTP/1.1\r\nHost: h\r\n\r\n",  // methods are case-sensitive; the general router refuses this one
            "PROPFIND / HTTP/1.1\r\nHost: h\r\n\r\n",  // rarer methods: the general path
            "GET http://h/ HTTP/1.1\r\nHost: h\r\n\r\n",  // absolute-form target
            "OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: h\r\n" + (0..<HTTPHeadScanner.maxHeaders).map { "X-\($0): v\r\n" }.joined() + "\r\n",
        ]
        for text in general {
            guard case .general = scan(text).0 else {
                Issue.record("\(text.debugDescription) should go to the general router, got \(scan(text).0)")
                continue
            }
        }
        let huge = "GET / HTTP/1.1\r\nHost: h\r\nX: " + String(repeating: "a", count: HTTPHeadScanner.maxHead) + "\r\n\r\n"
        guard case .general = scan(huge).0 else {
            Issue.record("a head over the limit should go to the general router")
            return
        }
    }

    @Test func forwardingHeadersAreReplacedAndBodiesCounted() throws {
        let text = "POST /f HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 1.2.3.4\r\nX-Forwarded-Proto: https\r\nContent-Length: 5\r\n\r\nhello"
        let (result, headers) = scan(text)
        guard case .complete(let req) = result else { Issue.record("\(result)"); return }
        let bytes = Array(text.utf8)
        #expect(req.contentLength == 5 && req.headLength == bytes.count - 5)
        #expect(req.forwardedFor.map { String(decoding: bytes[$0], as: UTF8.self) } == "1.2.3.4")
        #expect(headers.filter(\.replaced).count == 2)
    }

    // MARK: responses

    func scanResponse(_ text: String) -> HTTPHeadScanner.ResponseScan {
        Array(text.utf8).withUnsafeBytes { HTTPHeadScanner.scanResponse($0) }
    }

    @Test func responseHeads() {
        guard case .complete(let r) = scanResponse("HTTP/1.1 200 OK\r\nContent-Length: 12\r\nX: y\r\n\r\nhello") else {
            Issue.record("complete response expected")
            return
        }
        #expect(r.status == 200 && r.contentLength == 12 && !r.chunked && !r.hasConnectionHeaders && r.minor == 1)
        guard case .complete(let c) = scanResponse("HTTP/1.0 200 OK\nTransfer-Encoding: chunked\nConnection: close\n\n") else {
            Issue.record("LF-only response heads are accepted from backends")
            return
        }
        #expect(c.chunked && c.contentLength == nil && c.hasConnectionHeaders && c.minor == 0)
        #expect(scanResponse("HTTP/1.1 200 OK\r\nContent-") == .incomplete)
        guard case .invalid = scanResponse("NOT HTTP\r\n\r\n") else { Issue.record("invalid status line accepted"); return }
        guard case .invalid = scanResponse("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n") else {
            Issue.record("conflicting lengths accepted")
            return
        }
    }

    @Test func responseHeadRewriteDropsConnectionHeaders() {
        let text = "HTTP/1.1 404 Not Found\r\nConnection: keep-alive\r\nContent-Length: 0\r\nKeep-Alive: timeout=5\r\nX-A: b\r\n\r\n"
        let out = IOBuffer(capacity: 16)
        Array(text.utf8).withUnsafeBytes { p in
            guard case .complete(let r) = HTTPHeadScanner.scanResponse(p) else { Issue.record("scan failed"); return }
            HTTPHeadScanner.rewriteResponseHead(p, r, clientMinor: 0, extra: "Connection: close\r\n", into: out)
        }
        let rewritten = String(decoding: out.readable, as: UTF8.self)
        #expect(rewritten == "HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\nX-A: b\r\nConnection: close\r\n\r\n")
    }

    // MARK: uwsgi packets

    /// The fast writer and the general router's encoder produce the same bytes.
    @Test(arguments: [
        "GET / HTTP/1.1\r\nHost: example.com\r\n\r\n",
        "GET /a/b?x=1&y=%20 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: curl/8\r\nAccept: */*\r\n\r\n",
        "GET /static/app.js HTTP/1.0\r\nHost: h\r\nConnection: keep-alive\r\n\r\n",
        "GET /a/../b/%41%2e/./c#frag HTTP/1.1\r\nHost: h\r\n\r\n",
        "POST /form HTTP/1.1\r\nHost: h\r\nContent-Type: text/plain\r\nContent-Length: 3\r\nX-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Proto: https\r\nx-custom-header: v  \r\n\r\nabc",
    ])
    func packetsMatchTheGeneralEncoder(_ text: String) throws {
        let (result, headers) = scan(text)
        guard case .complete(let req) = result else { Issue.record("\(result)"); return }
        let bytes = Array(text.utf8)
        let out = IOBuffer(capacity: 32)
        try bytes.withUnsafeBytes { p in
            let context = UwsgiPacketWriter.Context(serverName: Array("node1".utf8), serverPort: Array("8080".utf8),
                                                    remoteAddress: Array("127.0.0.9".utf8), remotePort: Array("40123".utf8), https: false)
            try UwsgiPacketWriter.write(p, request: req, headers: headers, context: context, modifier1: 0, modifier2: 0, into: out)
        }
        // The general router's way: headers (minus forwarding ones) + X-Forwarded-For/-Proto, then encodePacket.
        var list: [(name: String, value: String)] = []
        var forwarded: String?
        for h in headers {
            let name = String(decoding: bytes[h.name], as: UTF8.self)
            let value = String(decoding: bytes[h.value], as: UTF8.self)
            if name.lowercased() == "x-forwarded-for" { forwarded = value; continue }
            if name.lowercased() == "x-forwarded-proto" { continue }
            list.append((name, value))
        }
        list.append(("X-Forwarded-For", forwarded.map { "\($0), 127.0.0.9" } ?? "127.0.0.9"))
        list.append(("X-Forwarded-Proto", "http"))
        let general = UwsgiRequest(method: String(decoding: bytes[req.method], as: UTF8.self), uri: String(decoding: bytes[req.uri], as: UTF8.self),
                                   serverProtocol: "HTTP/1.\(req.minor)", headers: list, serverName: "node1", serverPort: "8080",
                                   remoteAddress: "127.0.0.9", remotePort: 40123)
        let expected = try general.encodePacket(modifier1: 0, modifier2: 0)
        #expect(Array(out.readable) == expected)
    }

    @Test func oversizedVarsAreRefused() {
        // 62 headers of 1 045 bytes: a head under the 64 KiB limit, vars over uwsgi's 65 535 bytes.
        var text = "GET / HTTP/1.1\r\nHost: h\r\n"
        for i in 10..<72 { text += "X-H\(i): " + String(repeating: "v", count: 1045) + "\r\n" }
        text += "\r\n"
        let (result, headers) = scan(text)
        guard case .complete(let req) = result else { Issue.record("\(result)"); return }
        let out = IOBuffer(capacity: 32)
        let context = UwsgiPacketWriter.Context(serverName: [], serverPort: [], remoteAddress: [], remotePort: [], https: false)
        #expect(throws: UwsgiPacketWriter.Failure.self) {
            try Array(text.utf8).withUnsafeBytes { p in
                try UwsgiPacketWriter.write(p, request: req, headers: headers, context: context, modifier1: 0, modifier2: 0, into: out)
            }
        }
    }

    // MARK: buffer

    @Test func bufferGrowsCompactsAndFormatsNumbers() {
        let b = IOBuffer(capacity: 64)
        b.append(Array(repeating: 0x61, count: 60))
        b.consume(50)
        b.append(Array(repeating: 0x62, count: 40))  // compacts first, then fits without growing
        #expect(b.count == 50 && b.capacity == 64)
        b.append(Array(repeating: 0x63, count: 100))
        #expect(b.count == 150 && b.capacity >= 150)
        #expect(Array(b.readable.prefix(10)) == Array(repeating: 0x61, count: 10))
        b.clear()
        b.append(decimal: 0)
        b.append(byte: 0x20)
        b.append(decimal: 65535)
        b.append(byte: 0x20)
        b.append(hex: 255)
        b.append(byte: 0x20)
        b.append(hex: 0)
        #expect(String(decoding: b.readable, as: UTF8.self) == "0 65535 ff 0")
    }
}
