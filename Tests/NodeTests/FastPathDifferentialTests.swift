import NIOCore
import NIOEmbedded
import NIOHTTP1
import LegionSimulator
import Testing
@testable import Node

/// Differential test of the fast path's request scanner against SwiftNIO's HTTP parser (llhttp),
/// which the general router uses: over random and mutated request heads, whatever the fast path
/// takes as a complete request must parse in NIO to the same method, target, version, Host,
/// Content-Length and keep-alive — the fast path never accepts what the general router would
/// refuse or read differently (no request smuggling between the two).
@Suite struct FastPathDifferentialTests {
    /// The simulator's seeded generator, with the two helpers the generator below needs.
    struct Rng {
        var source: SimRandom
        init(seed: UInt64) { source = SimRandom(seed: seed) }
        mutating func below(_ n: Int) -> Int { Int.random(in: 0..<n, using: &source) }
        mutating func pick<T>(_ list: [T]) -> T { list[below(list.count)] }
    }

    static let methods = ["GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH", "get", "G(T", "GET\t"]
    static let targets = ["/", "/a?b=c", "/%41/../b", "*", "/a b", "/\u{7f}", "http://h/x", "/é", "/a#f", ""]
    static let versions = ["HTTP/1.1", "HTTP/1.0", "HTTP/1.2", "HTTP/2.0", "http/1.1", "HTTP/1.10", "HTTP/1.1 ", "HTTP/01.1"]
    static let headers = [
        "Host: example.com", "host:h", "Host : h", "HOST: a.b:8080", "X-A: b", "X-A:\tb ", "Content-Length: 0",
        "Content-Length: 5", "Content-Length: +5", "Content-Length: 5 ", "Content-Length: 05", "Content-Length: 1,1",
        "Transfer-Encoding: chunked", " folded", "X\u{1}: y", "Connection: close", "Connection: keep-alive",
        "Connection: Upgrade", "Upgrade: websocket", ":empty", "X-Ü: v", "X-V: caf\u{e9}", "X-N: a\u{0}b", "X-Empty:",
        "Expect: 100-continue", "X-Forwarded-For: 1.2.3.4", "x_a: c", "Cookie: a=b; c=d",
    ]

    func generate(_ rng: inout Rng) -> [UInt8] {
        let eol = rng.below(20) == 0 ? "\n" : "\r\n"
        // Mostly well-formed pieces (the first of each list), so both outcomes are common.
        func piece(_ list: [String], plain: Int) -> String { rng.below(4) == 0 ? rng.pick(list) : list[rng.below(plain)] }
        var text = "\(piece(Self.methods, plain: 7)) \(piece(Self.targets, plain: 3)) \(piece(Self.versions, plain: 2))\(eol)"
        if rng.below(10) != 0 { text += "Host: example.com\(eol)" }
        for _ in 0..<rng.below(6) { text += (rng.below(2) == 0 ? rng.pick(Self.headers) : rng.pick(["X-A: b", "Cookie: a=b; c=d", "Content-Length: 5", "Connection: close", "X-Forwarded-For: 1.2.3.4"])) + eol }
        text += eol
        var bytes = Array(text.utf8)
        // Mutations: flip, insert or delete a byte.
        for _ in 0..<(rng.below(4) == 0 ? rng.below(3) + 1 : 0) where !bytes.isEmpty {
            let at = rng.below(bytes.count)
            switch rng.below(3) {
            case 0: bytes[at] ^= UInt8(1 << rng.below(8))
            case 1: bytes.insert(UInt8(rng.below(256)), at: at)
            default: bytes.remove(at: at)
            }
        }
        return bytes
    }

    /// NIO's reading of the bytes: the first request head (and its body length), or the parser's error.
    func nioParse(_ bytes: [UInt8]) -> Result<(HTTPRequestHead, Int), Error> {
        let channel = EmbeddedChannel()
        defer { _ = try? channel.finish() }
        do {
            try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(HTTPRequestDecoder()))
            try channel.writeInbound(channel.allocator.buffer(bytes: bytes))
            var head: HTTPRequestHead?
            var body = 0
            while let part = try channel.readInbound(as: HTTPServerRequestPart.self) {
                switch part {
                case .head(let h): if head == nil { head = h } else { return head.map { .success(($0, body)) } ?? .failure(ChannelError.ioOnClosedChannel) }
                case .body(let b): body += b.readableBytes
                case .end: return head.map { .success(($0, body)) } ?? .failure(ChannelError.ioOnClosedChannel)
                }
            }
            return .failure(ChannelError.inputClosed)  // no complete request: NIO waits for more bytes
        } catch {
            return .failure(error)
        }
    }

    @Test func fastPathAcceptsOnlyWhatNIOReadsTheSameWay() throws {
        var rng = Rng(seed: 2026)
        var complete = 0, general = 0
        for case_ in 0..<40_000 {
            let bytes = generate(&rng)
            var headers: [HTTPHeadScanner.Header] = []
            let scan = bytes.withUnsafeBytes { HTTPHeadScanner.scanRequest($0, headers: &headers) }
            guard case .complete(let req) = scan else {
                if case .general = scan { general += 1 }
                continue
            }
            complete += 1
            // NIO gets exactly what the fast path takes as the request: the head and Content-Length body bytes.
            let request = Array(bytes[..<req.headLength]) + Array(repeating: UInt8(ascii: "x"), count: req.contentLength)
            let text = String(decoding: request, as: UTF8.self)
            switch nioParse(request) {
            case .failure(let error):
                Issue.record("case \(case_): the fast path accepts what NIO refuses (\(error)): \(text.debugDescription)")
            case .success(let (head, body)):
                #expect(head.method.rawValue == String(decoding: bytes[req.method], as: UTF8.self), "case \(case_): method \(text.debugDescription)")
                #expect(head.uri == String(decoding: bytes[req.uri], as: UTF8.self), "case \(case_): target \(text.debugDescription)")
                #expect(head.version.major == 1 && head.version.minor == Int(req.minor), "case \(case_): version \(text.debugDescription)")
                #expect(head.headers["host"] == [String(decoding: bytes[req.host], as: UTF8.self)], "case \(case_): host \(text.debugDescription)")
                #expect(head.isKeepAlive == req.keepAlive, "case \(case_): keep-alive \(text.debugDescription)")
                #expect(body == req.contentLength, "case \(case_): body length \(text.debugDescription)")
                #expect(head.headers.count == headers.count, "case \(case_): header count \(text.debugDescription)")
            }
        }
        // The generator must exercise both outcomes a lot.
        #expect(complete > 5000 && general > 5000, "complete \(complete), general \(general)")
    }
}
