import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization

/// A small HTTP/1.1 client for node-to-node calls (the store-write hop): keep-alive connections pooled per
/// address, one request in flight per connection, a timeout that closes the connection. URLSession on Linux
/// cost several times more CPU per request for this hop.
final class InternalHTTPClient: Sendable {
    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    private let idle = Mutex<[String: [Channel]]>([:])
    private let group: EventLoopGroup

    init(group: EventLoopGroup = MultiThreadedEventLoopGroup.singleton) {
        self.group = group
    }

    /// POSTs `body` to `http://host:port/path`; returns the status and body.
    func post(host: String, port: Int, path: String, headers: [(String, String)], body: [UInt8],
              timeout: TimeAmount = .seconds(3)) async throws -> (status: Int, body: [UInt8]) {
        let key = "\(host):\(port)"
        let channel: Channel
        if let reused = idle.withLock({ $0[key]?.popLast() }), reused.isActive {
            channel = reused
        } else {
            channel = try await ClientBootstrap(group: group)
                .channelOption(.socketOption(.tcp_nodelay), value: 1)
                .connectTimeout(timeout)
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHTTPClientHandlers()
                        try channel.pipeline.syncOperations.addHandler(ResponseCollector())
                    }
                }
                .connect(host: host, port: port).get()
        }
        let loop = channel.eventLoop
        let result: EventLoopFuture<(Int, [UInt8])> = loop.flatSubmit {
            let promise = loop.makePromise(of: (Int, [UInt8]).self)
            guard let collector = try? channel.pipeline.syncOperations.handler(type: ResponseCollector.self) else {
                promise.fail(Failure(description: "connection without a response handler"))
                return promise.futureResult
            }
            collector.start(promise)
            var head = HTTPRequestHead(version: .http1_1, method: .POST, uri: path)
            head.headers.add(name: "Host", value: key)
            head.headers.add(name: "Content-Length", value: String(body.count))
            for (name, value) in headers { head.headers.add(name: name, value: value) }
            channel.write(HTTPClientRequestPart.head(head), promise: nil)
            channel.write(HTTPClientRequestPart.body(.byteBuffer(ByteBuffer(bytes: body))), promise: nil)
            channel.writeAndFlush(HTTPClientRequestPart.end(nil), promise: nil)
            let timer = loop.scheduleTask(in: timeout) {
                promise.fail(Failure(description: "no answer from \(key) within \(timeout.nanoseconds / 1_000_000) ms"))
                channel.close(promise: nil)
            }
            promise.futureResult.whenComplete { _ in timer.cancel() }
            return promise.futureResult
        }
        do {
            let (status, bytes) = try await result.get()
            if channel.isActive { idle.withLock { $0[key, default: []].append(channel) } }
            return (status, bytes)
        } catch {
            channel.close(promise: nil)
            throw error
        }
    }
}

/// Collects one response at a time on its connection.
private final class ResponseCollector: ChannelInboundHandler {
    typealias InboundIn = HTTPClientResponsePart
    private var promise: EventLoopPromise<(Int, [UInt8])>?
    private var status = 0
    private var body: [UInt8] = []

    func start(_ promise: EventLoopPromise<(Int, [UInt8])>) {
        self.promise = promise
        status = 0
        body = []
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head): status = Int(head.status.code)
        case .body(let buffer): body += buffer.readableBytesView
        case .end:
            let done = promise
            promise = nil
            done?.succeed((status, body))
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        promise?.fail(InternalHTTPClient.Failure(description: "connection closed"))
        promise = nil
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        promise?.fail(error)
        promise = nil
        context.close(promise: nil)
    }
}
