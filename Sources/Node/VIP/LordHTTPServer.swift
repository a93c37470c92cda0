import NIOCore
import NIOHTTP1
import NIOPosix

/// The HTTP listener the Lord opens on the failover IP. It answers `GET /.legion/lord` with JSON
/// naming the Lord, which probe clients and drills poll; everything else gets a short 404.
/// Whatever listens on the failover IP while this node is Lord.
public protocol VIPListener: Sendable {
    func stop() async
}

/// Starts the VIP listener on `host:port`.
public typealias VIPListenerFactory = @Sendable (_ host: String, _ port: Int) async throws -> VIPListener

public final class LordHTTPServer: VIPListener {
    public typealias Body = @Sendable () -> String

    private let channel: Channel

    private init(channel: Channel) { self.channel = channel }

    /// Binds `host:port`. SO_REUSEADDR lets a new Lord bind right after the old one closed.
    public static func start(host: String, port: Int, body: @escaping Body) async throws -> LordHTTPServer {
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .serverChannelOption(ChannelOptions.Types.SocketOption(level: .ip, name: .init(rawValue: 15 /* IP_FREEBIND */)), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                    try channel.pipeline.syncOperations.addHandler(LordHTTPHandler(body: body))
                }
            }
            .bind(host: host, port: port)
            .get()
        return LordHTTPServer(channel: channel)
    }

    public func stop() async {
        try? await channel.close().get()
    }
}

final class LordHTTPHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    let body: LordHTTPServer.Body
    private var head: HTTPRequestHead?

    init(body: @escaping LordHTTPServer.Body) { self.body = body }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let h): head = h
        case .body: break
        case .end:
            guard let head else { return }
            self.head = nil
            let (status, text): (HTTPResponseStatus, String)
            if head.method == .GET, head.uri == "/.legion/lord" || head.uri.hasPrefix("/.legion/lord?") {
                (status, text) = (.ok, body() + "\n")
            } else {
                (status, text) = (.notFound, "{\"error\":\"not found; try GET /.legion/lord\"}\n")
            }
            var headers = HTTPHeaders()
            headers.add(name: "Content-Type", value: "application/json")
            headers.add(name: "Content-Length", value: String(text.utf8.count))
            headers.add(name: "Cache-Control", value: "no-store")
            let keepAlive = head.isKeepAlive
            if !keepAlive { headers.add(name: "Connection", value: "close") }
            context.write(wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: status, headers: headers))), promise: nil)
            context.write(wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(string: text)))), promise: nil)
            let done = context.writeAndFlush(wrapOutboundOut(.end(nil)))
            if !keepAlive {
                let ctx = context
                done.whenComplete { _ in ctx.close(promise: nil) }
            }
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }
}
