import NIOCore
import NIOEmbedded
import NIOHTTP1
import Testing
@testable import Node

/// The general router's single-purpose handlers, on embedded channels: the chunked-body collector and the
/// header timeout.
@Suite struct RouterHandlersTests {
    func chunkedHead() -> HTTPRequestHead {
        var head = HTTPRequestHead(version: .http1_1, method: .POST, uri: "/up")
        head.headers.add(name: "Host", value: "example.com")
        head.headers.add(name: "Transfer-Encoding", value: "chunked")
        return head
    }

    @Test func aChunkedBodyIsPassedOnWithItsLength() throws {
        let channel = EmbeddedChannel(handler: ChunkedBodyCollector(limitBytes: 100))
        defer { _ = try? channel.finish() }
        try channel.writeInbound(HTTPServerRequestPart.head(chunkedHead()))
        try channel.writeInbound(HTTPServerRequestPart.body(channel.allocator.buffer(string: "hello ")))
        #expect(try channel.readInbound(as: HTTPServerRequestPart.self) == nil, "nothing passes before the body ends")
        try channel.writeInbound(HTTPServerRequestPart.body(channel.allocator.buffer(string: "world")))
        try channel.writeInbound(HTTPServerRequestPart.end(nil))
        guard case .head(let head)? = try channel.readInbound(as: HTTPServerRequestPart.self) else {
            Issue.record("no head")
            return
        }
        #expect(head.headers["content-length"] == ["11"] && !head.headers.contains(name: "transfer-encoding"))
        var body = ""
        while case .body(let part)? = try channel.readInbound(as: HTTPServerRequestPart.self) { body += String(buffer: part) }
        #expect(body == "hello world")
        // A plain request after it passes through as it is.
        try channel.writeInbound(HTTPServerRequestPart.head(HTTPRequestHead(version: .http1_1, method: .GET, uri: "/next")))
        guard case .head(let next)? = try channel.readInbound(as: HTTPServerRequestPart.self) else {
            Issue.record("plain head not passed")
            return
        }
        #expect(next.uri == "/next")
    }

    @Test func aChunkedBodyOverTheLimitIsAnswered413AndTheConnectionCloses() throws {
        let channel = EmbeddedChannel(handler: ChunkedBodyCollector(limitBytes: 8))
        try channel.writeInbound(HTTPServerRequestPart.head(chunkedHead()))
        try channel.writeInbound(HTTPServerRequestPart.body(channel.allocator.buffer(string: "0123456789")))
        guard case .head(let response)? = try channel.readOutbound(as: HTTPServerResponsePart.self) else {
            Issue.record("no answer")
            return
        }
        #expect(response.status.code == 413 && response.headers["connection"] == ["close"])
        #expect(!channel.isActive)
        #expect(try channel.readInbound(as: HTTPServerRequestPart.self) == nil, "the refused request never reaches the router")
    }

    @Test func theHeaderTimeoutClosesAnIdleConnectionAndAnswers408ToAPartialHead() throws {
        // Idle: closed silently.
        let idle = EmbeddedChannel()
        let idleGuard = ConnectionGuard()
        try idle.pipeline.syncOperations.addHandler(idleGuard)
        try idle.pipeline.syncOperations.addHandler(HeaderTimeoutHandler(timeoutMs: 1000, guardHandler: idleGuard))
        try idle.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        idle.embeddedEventLoop.advanceTime(by: .milliseconds(999))
        #expect(idle.isActive)
        idle.embeddedEventLoop.advanceTime(by: .milliseconds(2))
        #expect(!idle.isActive)
        #expect(try idle.readOutbound(as: ByteBuffer.self) == nil)

        // A partial head (bytes arrived, no request): 408 written raw, then closed.
        let slow = EmbeddedChannel()
        let slowGuard = ConnectionGuard()
        try slow.pipeline.syncOperations.addHandler(slowGuard)
        try slow.pipeline.syncOperations.addHandler(HeaderTimeoutHandler(timeoutMs: 1000, guardHandler: slowGuard))
        try slow.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        slowGuard.bytesSinceRequest = true
        slow.embeddedEventLoop.advanceTime(by: .milliseconds(1001))
        let written = try slow.readOutbound(as: ByteBuffer.self).map { String(buffer: $0) } ?? ""
        #expect(written.hasPrefix("HTTP/1.1 408 Request Timeout\r\n") && written.hasSuffix("408 Request Timeout: request headers not received in time\n"))

        // A request in flight is never timed out; the timer starts again when its response ends.
        let busy = EmbeddedChannel()
        let busyGuard = ConnectionGuard()
        try busy.pipeline.syncOperations.addHandler(busyGuard)
        try busy.pipeline.syncOperations.addHandler(HeaderTimeoutHandler(timeoutMs: 1000, guardHandler: busyGuard))
        try busy.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        try busy.writeInbound(HTTPServerRequestPart.head(HTTPRequestHead(version: .http1_1, method: .GET, uri: "/")))
        busy.embeddedEventLoop.advanceTime(by: .milliseconds(5000))
        #expect(busy.isActive)
        try busy.writeOutbound(HTTPServerResponsePart.end(nil))
        busy.embeddedEventLoop.advanceTime(by: .milliseconds(1001))
        #expect(!busy.isActive)
    }
}
