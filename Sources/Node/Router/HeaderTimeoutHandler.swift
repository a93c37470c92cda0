import NIOCore
import NIOHTTP1

/// The general router's header timeout (slowloris): between requests — from the connection's start and from the
/// end of each response — the next request head must arrive within `[router] headers_timeout_ms`. An idle
/// keep-alive connection is then closed silently; a partial head gets `408` (`RouterPolicy.headerTimeout`, the
/// fast path's answer too), written below the HTTP codec by `ConnectionGuard`, which has no request to answer.
/// Sits between the HTTP codec and `RouterHandler`, seeing request heads come in and response ends go out.
final class HeaderTimeoutHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias InboundOut = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    private let timeout: TimeAmount
    private let guardHandler: ConnectionGuard
    private var timer: Scheduled<Void>?
    private var inFlight = false

    init(timeoutMs: Int64, guardHandler: ConnectionGuard) {
        self.timeout = .milliseconds(timeoutMs)
        self.guardHandler = guardHandler
    }

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { arm(context) }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        timer?.cancel()
        timer = nil
    }

    func channelActive(context: ChannelHandlerContext) {
        arm(context)
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        timer?.cancel()
        timer = nil
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if case .head = unwrapInboundIn(data) {
            timer?.cancel()
            timer = nil
            inFlight = true
        }
        context.fireChannelRead(data)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        if case .end = unwrapOutboundIn(data) {
            inFlight = false
            arm(context)
        }
        context.write(data, promise: promise)
    }

    private func arm(_ context: ChannelHandlerContext) {
        timer?.cancel()
        guardHandler.bytesSinceRequest = false
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        timer = context.eventLoop.scheduleTask(in: timeout) {
            let (handler, context) = bound.value
            guard !handler.inFlight else { return }
            if handler.guardHandler.bytesSinceRequest {
                handler.guardHandler.respondAndClose(RouterPolicy.answer(.headerTimeout))
            } else {
                context.close(promise: nil)
            }
        }
    }
}

/// First handler after TLS: notes whether bytes arrived since the last request (a partial head) and writes a
/// router answer as raw bytes, below the HTTP codec, then closes.
final class ConnectionGuard: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    var bytesSinceRequest = false
    private var context: ChannelHandlerContext?

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }
    func handlerRemoved(context: ChannelHandlerContext) { self.context = nil }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        bytesSinceRequest = true
        context.fireChannelRead(data)
    }

    func respondAndClose(_ answer: RouterPolicy.Answer) {
        guard let context else { return }
        let text = RouterPolicy.raw(answer, minor: 1, keepAlive: false)
        let channel = context.channel
        context.writeAndFlush(NIOAny(channel.allocator.buffer(string: text))).whenComplete { _ in
            channel.close(promise: nil)
        }
    }
}
