import NIOCore
import NIOHTTP1

/// uwsgi backends read `CONTENT_LENGTH` bytes, so a request with a chunked body is collected here first (at most
/// `[router] max_chunked_body_bytes`, 16 MiB) and passed on as a Content-Length request: head, the body, end.
/// Over the limit it is answered `413` (`RouterPolicy.chunkedBodyTooLarge`) and the connection closes. Every other
/// request passes through untouched. Sits between the header timeout and `RouterHandler`.
final class ChunkedBodyCollector: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias InboundOut = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let limit: Int
    private var head: HTTPRequestHead?
    private var parts: [ByteBuffer] = []
    private var collected = 0
    /// The body went over the limit: the rest of this request is dropped (the connection is closing).
    private var refused = false

    init(limitBytes: Int) {
        precondition(limitBytes >= 0, "a byte limit")
        self.limit = limitBytes
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let requestHead):
            guard requestHead.headers.contains(name: "transfer-encoding") else { return context.fireChannelRead(data) }
            head = requestHead
            parts = []
            collected = 0
            refused = false
        case .body(let buffer):
            guard head != nil else { return context.fireChannelRead(data) }
            guard !refused else { return }
            collected += buffer.readableBytes
            if collected > limit {
                refused = true
                parts = []
                refuse(context)
                return
            }
            parts.append(buffer)
        case .end(let trailers):
            guard var collectedHead = head else { return context.fireChannelRead(data) }
            head = nil
            guard !refused else { return }
            collectedHead.headers.remove(name: "transfer-encoding")
            collectedHead.headers.replaceOrAdd(name: "content-length", value: String(collected))
            context.fireChannelRead(wrapInboundOut(.head(collectedHead)))
            for part in parts { context.fireChannelRead(wrapInboundOut(.body(part))) }
            parts = []
            context.fireChannelRead(wrapInboundOut(.end(trailers)))
        }
    }

    private func refuse(_ context: ChannelHandlerContext) {
        guard let requestHead = head else { return }
        let answer = RouterPolicy.answer(.chunkedBodyTooLarge(limitBytes: limit))
        for part in answer.responseParts(version: requestHead.version, keepAlive: false, isHEAD: requestHead.method == .HEAD,
                                         allocator: context.channel.allocator) {
            context.write(wrapOutboundOut(part), promise: nil)
        }
        context.flush()
        context.close(promise: nil)
    }
}

extension RouterPolicy.Answer {
    /// The answer as NIO response parts (the general path's form of `RouterPolicy.raw`).
    func responseParts(version: HTTPVersion, keepAlive: Bool, isHEAD: Bool, allocator: ByteBufferAllocator) -> [HTTPServerResponsePart] {
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: contentType)
        headers.add(name: "Content-Length", value: String(body.utf8.count))
        for (name, value) in extraHeaders { headers.add(name: name, value: value) }
        if !keepAlive { headers.add(name: "Connection", value: "close") } else if version.minor == 0 { headers.add(name: "Connection", value: "keep-alive") }
        var parts: [HTTPServerResponsePart] = [.head(HTTPResponseHead(version: version, status: HTTPResponseStatus(statusCode: status, reasonPhrase: reason),
                                                                      headers: headers))]
        if !isHEAD { parts.append(.body(.byteBuffer(allocator.buffer(string: body)))) }
        parts.append(.end(nil))
        return parts
    }
}
