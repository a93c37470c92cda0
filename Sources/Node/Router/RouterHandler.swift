import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import Foundation
import Subscriptions
import Synchronization
import UwsgiWire

/// One client connection: reads HTTP requests, routes each to a subscribed backend over the
/// uwsgi protocol, relays the backend's HTTP response. Lives on the connection's event loop;
/// backend connections are opened on the same loop.
final class RouterHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    struct Request {
        var head: HTTPRequestHead
        var host: String
        var attempts = 0
        var excluded: Set<[UInt8]> = []
        var node: SubscriptionTable.Node?
        var responseStarted = false
        var closeAfterResponse = false
        var bytesOut = 0
        var startedNs: UInt64
        /// Body bytes received before the backend connection took them (a request with a body is not replayed).
        var bufferedBytes = 0
        /// A WebSocket handshake: after the request vars the connection becomes a raw tunnel.
        var websocket = false
    }


    /// uWSGI's detection (two of Upgrade: websocket, Connection: upgrade, Sec-WebSocket-Version, plus a key),
    /// except that `Connection` may list other tokens too.
    static func isWebSocketHandshake(_ headers: HTTPHeaders) -> Bool {
        guard let key = headers.first(name: "sec-websocket-key"), !key.isEmpty else { return false }
        var count = 1
        if headers[canonicalForm: "upgrade"].contains(where: { $0.lowercased() == "websocket" }) { count += 1 }
        if headers[canonicalForm: "connection"].contains(where: { $0.lowercased() == "upgrade" }) { count += 1 }
        if headers.contains(name: "sec-websocket-version") { count += 1 }
        return count > 2
    }

    let shared: RouterShared
    /// A connection the fast path bridged here (TLS kept on the fast path): the client it really comes from.
    let origin: ClientOrigin?
    private var context: ChannelHandlerContext?
    private var request: Request?
    private var pendingBody: [ByteBuffer] = []
    private var backend: Channel?
    private var backendWriter: BackendHandler?
    /// The current backend speaks HTTP/1.1 (subscription address `http://HOST:PORT`), kept alive in a pool.
    private var backendIsHTTP = false
    private var backendFromPool = false
    private var backendKeepAlive = false
    private var backendAddress = ""
    /// The client's request body has ended (for HTTP backends, which need the end of the request).
    private var requestBodyEnded = false

    init(shared: RouterShared, origin: ClientOrigin? = nil) {
        self.shared = shared
        self.origin = origin
    }

    /// The client's address and port: the socket's peer, or the fast path's client for a bridged connection.
    private func client(_ context: ChannelHandlerContext) -> (ip: String, port: Int) {
        if let origin { return (origin.address, origin.port) }
        let remote = context.channel.remoteAddress
        return (remote?.ipAddress ?? "127.0.0.1", remote?.port ?? 0)
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func channelInactive(context: ChannelHandlerContext) {
        finishRequest(closeBackend: true)
        self.context = nil
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            guard request == nil else { return }
            let host = head.headers.first(name: "host") ?? ""
            request = Request(head: head, host: host, startedNs: SystemClock.monotonicNanos())
            pendingBody = []
            requestBodyEnded = false
            if let lordBody = shared.lordBody, RouterPolicy.isLordRequest(method: head.method.rawValue, uri: head.uri) {
                respond(context, RouterPolicy.lord(lordBody()))
                return
            }
            if host.utf8.count > 255 {
                respond(context, .hostTooLong)
                return
            }
            if Self.isWebSocketHandshake(head.headers) {
                request?.websocket = true
            }
            connect(context)
        case .body(let buffer):
            if let backendWriter {
                backendWriter.send([buffer])
            } else if var req = request {
                req.bufferedBytes += buffer.readableBytes
                request = req
                pendingBody.append(buffer)
            }
        case .end:
            requestBodyEnded = true
            if backendIsHTTP, let backendWriter {
                backendWriter.finishHTTP()
            }
        }
    }

    /// Backpressure, backend → client: stop reading the backend while the client cannot keep up.
    func channelWritabilityChanged(context: ChannelHandlerContext) {
        backend?.setOption(ChannelOptions.autoRead, value: context.channel.isWritable).whenFailure { _ in }
        context.fireChannelWritabilityChanged()
    }

    /// Backpressure, client → backend: stop reading the client while the backend cannot keep up.
    func backendWritabilityChanged(_ writable: Bool) {
        context?.channel.setOption(ChannelOptions.autoRead, value: writable).whenFailure { _ in }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        if error is HTTPParserError {
            // The protocol error handler before us has already answered 400; the stream is unusable.
            finishRequest(closeBackend: true)
            context.close(promise: nil)
            return
        }
        if let request, !request.responseStarted {
            respond(context, .malformed("\(error)"))
        } else {
            context.close(promise: nil)
        }
    }

    // MARK: backend

    private func connect(_ context: ChannelHandlerContext) {
        guard var req = request else { return }
        let store = shared.store
        let hostBytes = Array(req.host.utf8)
        guard let node = store.pick(host: hostBytes, nowMs: SystemClock.wallMillis(), excluding: req.excluded) else {
            respond(context, RouterPolicy.noPick(host: req.host, attempts: req.attempts, hostHasKey: req.attempts == 0 && store.hasKey(for: hostBytes)))
            return
        }
        req.node = node
        req.attempts += 1
        request = req

        let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
        let idleTimeout = shared.settings.idleTimeoutMs
        let websocket = req.websocket
        let nodeAddress = node.addressString
        let http = nodeAddress.hasPrefix("http://") && !websocket
        backendIsHTTP = http
        backendFromPool = false
        backendKeepAlive = false
        if http {
            var target = String(nodeAddress.dropFirst("http://".count))
            if let slash = target.firstIndex(of: "/") { target = String(target[..<slash]) }
            backendAddress = target
            if let pooled = shared.pool.take(address: target, on: context.eventLoop),
               let writer = try? pooled.pipeline.syncOperations.handler(type: BackendHandler.self) {
                writer.attach(loopBound)
                backend = pooled
                backendWriter = writer
                backendFromPool = true
                sendHTTPRequest(context, node: node)
                return
            }
        }
        let clientChannel = context.channel
        let bootstrap = ClientBootstrap(group: context.eventLoop)
            .connectTimeout(.milliseconds(shared.settings.connectTimeoutMs))
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    if websocket {
                        // Raw relay: the backend answers the handshake (101) and frames itself.
                        try channel.pipeline.syncOperations.addHandler(TunnelHandler(peer: clientChannel))
                        return
                    }
                    // head ← RequestPartSink ← HTTP response decoder ← BackendHandler. The decoder
                    // must see the request head (to frame HEAD responses); the sink swallows it,
                    // and the raw uwsgi bytes are written from the sink's context, below both.
                    if http {
                        try channel.pipeline.syncOperations.addHandler(IdleStateHandler(readTimeout: .milliseconds(idleTimeout)))
                        try channel.pipeline.syncOperations.addHandler(HTTPRequestEncoder())
                        try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(HTTPResponseDecoder(leftOverBytesStrategy: .dropBytes)))
                        try channel.pipeline.syncOperations.addHandler(BackendHandler(router: loopBound, http: true))
                        return
                    }
                    let sink = RequestPartSink()
                    try channel.pipeline.syncOperations.addHandler(IdleStateHandler(readTimeout: .milliseconds(idleTimeout)))
                    try channel.pipeline.syncOperations.addHandler(sink)
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(HTTPResponseDecoder(leftOverBytesStrategy: .dropBytes)))
                    let backend = BackendHandler(router: loopBound)
                    try channel.pipeline.syncOperations.addHandler(backend)
                    backend.rawWriter = try channel.pipeline.syncOperations.context(handler: sink)
                }
            }
        let address = http ? backendAddress : node.addressString
        connectBackend(bootstrap, address: address, on: context.eventLoop).whenComplete { result in
            let handler = loopBound.value
            guard let ctx = handler.context, handler.request != nil else {
                if case .success(let ch) = result { ch.close(promise: nil) }
                return
            }
            switch result {
            case .success(let channel):
                handler.backend = channel
                if handler.request?.websocket == true {
                    handler.startTunnel(ctx, to: channel, node: node)
                    return
                }
                handler.backendWriter = try? channel.pipeline.syncOperations.handler(type: BackendHandler.self)
                if http {
                    handler.sendHTTPRequest(ctx, node: node)
                } else {
                    handler.sendRequest(ctx, to: channel, node: node)
                }
            case .failure(let error):
                handler.shared.store.release(node)
                handler.shared.store.eject(node, nowMs: SystemClock.wallMillis())
                handler.shared.logger.warning("backend refused; trying another", metadata: [
                    "key": "\(node.keyString)", "address": "\(address)", "error": "\(error)",
                ])
                handler.request?.node = nil
                handler.request?.excluded.insert(node.address)
                if let attempts = handler.request?.attempts, attempts >= handler.shared.settings.maxRetries {
                    let timedOut = "\(error)".contains("connectTimeout")
                    handler.respond(ctx, .backendUnreachable(host: handler.request?.host ?? "", attempts: attempts, timedOut: timedOut))
                } else {
                    handler.connect(ctx)
                }
            }
        }
    }

    /// WebSocket: send the request vars, then turn both connections into a byte tunnel (no keep-alive).
    private func startTunnel(_ context: ChannelHandlerContext, to backend: Channel, node: SubscriptionTable.Node) {
        guard let packet = requestPacket(context, node: node) else { return }
        var buffer = backend.allocator.buffer(capacity: packet.count)
        buffer.writeBytes(packet)
        backend.writeAndFlush(buffer, promise: nil)
        let store = shared.store
        let host = request?.host ?? ""
        shared.access.debug("websocket", metadata: ["host": "\(host)", "backend": "\(node.addressString)"])
        request = nil
        self.backend = nil
        let pipeline = context.pipeline.syncOperations
        do {
            // Inbound bytes the HTTP decoder still holds go to the tunnel when it is removed, so the tunnel
            // goes in first and the HTTP handlers come out after it.
            for name in ["http-pipelining", "http-errors", "header-timeout", "chunked-body"] { _ = pipeline.removeHandler(name: name) }
            try pipeline.addHandler(TunnelHandler(peer: backend, onClose: { store.release(node) }))
            _ = pipeline.removeHandler(context: context)
            _ = pipeline.removeHandler(name: "http-decoder")
            _ = pipeline.removeHandler(name: "http-encoder")
        } catch {
            shared.logger.warning("could not switch the connection to a tunnel", metadata: ["error": "\(error)"])
            backend.close(promise: nil)
            context.close(promise: nil)
        }
    }

    /// The uwsgi request packet for the current request (nil after answering 431 when it does not fit).
    private func requestPacket(_ context: ChannelHandlerContext, node: SubscriptionTable.Node) -> [UInt8]? {
        guard let req = request else { return nil }
        var headers: [(name: String, value: String)] = []
        var forwardedFor: String?
        for (name, value) in req.head.headers {
            if name.lowercased() == "x-forwarded-for" { forwardedFor = value; continue }
            if name.lowercased() == "x-forwarded-proto" { continue }
            headers.append((name, value))
        }
        let (remoteIP, remotePort) = client(context)
        headers.append(("X-Forwarded-For", forwardedFor.map { "\($0), \(remoteIP)" } ?? remoteIP))
        headers.append(("X-Forwarded-Proto", shared.https ? "https" : "http"))
        var uwsgi = UwsgiRequest(method: req.head.method.rawValue, uri: req.head.uri,
                                 serverProtocol: "HTTP/\(req.head.version.major).\(req.head.version.minor)",
                                 headers: headers, serverName: shared.settings.serverName,
                                 serverPort: String(shared.https ? (shared.settings.https?.port ?? 443) : shared.settings.http.port), remoteAddress: remoteIP,
                                 remotePort: remotePort)
        uwsgi.https = shared.https
        if let subject = origin?.tlsSubject {
            // Verified on the fast path (its TLS session), which bridged the connection here.
            uwsgi.extraVars.append(("HTTPS_DN", subject))
            if let der = origin?.tlsCertificateDER { uwsgi.extraVars.append(("HTTPS_CC", ClientOrigin.pem(der: der))) }
        } else if shared.https, let tls = try? context.pipeline.syncOperations.handler(type: NIOSSLServerHandler.self),
           let certificate = tls.peerCertificate {
            // A verified client certificate (sni_ca): uWSGI's HTTPS_DN, and the certificate itself (PEM) as HTTPS_CC.
            uwsgi.extraVars.append(("HTTPS_DN", CertificateStore.distinguishedName(certificate)))
            if let der = try? certificate.toDERBytes() {
                uwsgi.extraVars.append(("HTTPS_CC", ClientOrigin.pem(der: der)))
            }
        }
        do {
            return try uwsgi.encodePacket(modifier1: RouterPolicy.requestModifier1(node.modifier1), modifier2: node.modifier2)
        } catch {
            respond(context, .headersTooLarge)
            return nil
        }
    }

    private func sendRequest(_ context: ChannelHandlerContext, to channel: Channel, node: SubscriptionTable.Node) {
        guard let req = request, let bytes = requestPacket(context, node: node) else { return }
        var buffer = channel.allocator.buffer(capacity: bytes.count)
        buffer.writeBytes(bytes)
        backendWriter?.begin(method: req.head.method)
        backendWriter?.send([buffer] + pendingBody)
        pendingBody = []
    }

    /// HTTP/1.1 backend: the client's request with hop-by-hop headers dropped and X-Forwarded-* added.
    private func sendHTTPRequest(_ context: ChannelHandlerContext, node: SubscriptionTable.Node) {
        guard let req = request, let backendWriter else { return }
        var headers = HTTPHeaders()
        var forwardedFor: String?
        let hopByHop: Set<String> = ["connection", "keep-alive", "proxy-connection", "te", "trailer", "upgrade", "transfer-encoding",
                                     "x-forwarded-proto"]
        var dropped = Set(req.head.headers[canonicalForm: "connection"].map { $0.lowercased() })
        dropped.formUnion(hopByHop)
        for (name, value) in req.head.headers {
            let lower = name.lowercased()
            if lower == "x-forwarded-for" { forwardedFor = value; continue }
            if dropped.contains(lower) { continue }
            headers.add(name: name, value: value)
        }
        let remoteIP = client(context).ip
        headers.add(name: "X-Forwarded-For", value: forwardedFor.map { "\($0), \(remoteIP)" } ?? remoteIP)
        headers.add(name: "X-Forwarded-Proto", value: shared.https ? "https" : "http")
        if req.bufferedBytes == 0, !req.head.headers.contains(name: "content-length"),
           [.POST, .PUT, .PATCH].contains(req.head.method) {
            headers.add(name: "Content-Length", value: "0")
        }
        backendWriter.beginHTTP(HTTPRequestHead(version: .http1_1, method: req.head.method, uri: req.head.uri, headers: headers))
        if !pendingBody.isEmpty { backendWriter.send(pendingBody) }
        pendingBody = []
        if requestBodyEnded { backendWriter.finishHTTP() }
    }

    // MARK: events from the backend

    func backendHead(_ head: HTTPResponseHead) {
        guard let context, var req = request else { return }
        backendKeepAlive = backendIsHTTP && head.isKeepAlive
        req.responseStarted = true
        request = req
        var headers = head.headers
        headers.remove(name: "connection")
        headers.remove(name: "keep-alive")
        let framed = headers.contains(name: "content-length") || req.head.version.minor >= 1
        if !framed { req.closeAfterResponse = true }  // HTTP/1.0 body ends at close
        if !req.head.isKeepAlive || req.closeAfterResponse {
            headers.add(name: "Connection", value: "close")
        } else if req.head.version.minor == 0 {
            headers.add(name: "Connection", value: "keep-alive")
        }
        request = req
        let response = HTTPResponseHead(version: req.head.version, status: head.status, headers: headers)
        context.write(wrapOutboundOut(.head(response)), promise: nil)
    }

    func backendBody(_ buffer: ByteBuffer) {
        guard let context else { return }
        request?.bytesOut += buffer.readableBytes
        context.writeAndFlush(wrapOutboundOut(.body(.byteBuffer(buffer))), promise: nil)
    }

    func backendEnd() {
        guard let context, let req = request else { return }
        let keepAlive = req.head.isKeepAlive && !req.closeAfterResponse
        if backendIsHTTP, backendKeepAlive, requestBodyEnded, let channel = backend, let writer = backendWriter {
            // The exchange is complete on both sides: the connection goes back to the pool.
            writer.detach()
            let address = backendAddress
            finishRequest(closeBackend: false)
            shared.pool.put(channel, address: address)
        } else {
            finishRequest(closeBackend: true)
        }
        let done = context.writeAndFlush(wrapOutboundOut(.end(nil)))
        if !keepAlive {
            done.whenComplete { _ in context.close(promise: nil) }
        }
    }

    /// The backend sent nothing for `idleTimeoutMs`.
    func backendTimedOut() {
        guard let context, let req = request else { return }
        shared.logger.warning("backend timed out", metadata: ["host": "\(req.host)", "backend": "\(req.node?.addressString ?? "-")"])
        if !req.responseStarted {
            respond(context, .applicationTimeout(seconds: shared.settings.idleTimeoutMs / 1000))
        } else {
            finishRequest(closeBackend: true)
            context.close(promise: nil)
        }
    }

    func backendClosed(error: Error?) {
        guard let context, var req = request else { return }
        if !req.responseStarted, backendFromPool, req.bufferedBytes == 0 {
            // A pooled keep-alive connection the backend had already closed: try a fresh one (not an ejection).
            backend = nil
            backendWriter = nil
            backendFromPool = false
            if let node = req.node { shared.store.release(node) }
            req.node = nil
            req.attempts = max(0, req.attempts - 1)
            request = req
            connect(context)
            return
        }
        if RouterPolicy.retry(attempts: req.attempts, maxRetries: shared.settings.maxRetries,
                              replayable: req.bufferedBytes == 0 && [.GET, .HEAD, .OPTIONS].contains(req.head.method), answerStarted: req.responseStarted),
           let node = req.node {
            // Closed before answering (e.g. the backend died after accepting): like nginx's proxy_next_upstream
            // for idempotent requests, eject the node and try another.
            shared.store.release(node)
            shared.store.eject(node, nowMs: SystemClock.wallMillis())
            shared.logger.warning("backend closed without answering; trying another", metadata: ["key": "\(node.keyString)", "address": "\(node.addressString)"])
            backend?.close(promise: nil)
            backend = nil
            backendWriter = nil
            req.node = nil
            req.excluded.insert(node.address)
            request = req
            connect(context)
            return
        }
        if !req.responseStarted {
            finishRequest(closeBackend: true)
            respond(context, .closedWithoutResponse(error.map { "\($0)" }))
        } else {
            // Mid-response failure: the client cannot be told cleanly; close.
            finishRequest(closeBackend: true)
            context.close(promise: nil)
        }
    }

    private func finishRequest(closeBackend: Bool) {
        if let req = request {
            if let node = req.node { shared.store.release(node) }
            shared.store.count(key: req.node?.keyString, bytes: req.bytesOut)
            NodeMetrics.recordRouterLatency(domain: req.node?.keyString, nanoseconds: [Int64(SystemClock.monotonicNanos() &- req.startedNs)])
            AccessLog.request(shared.access, host: req.host, method: req.head.method.rawValue, uri: req.head.uri,
                              backend: req.node?.addressString, bytes: req.bytesOut, startedNs: req.startedNs)
        }
        request = nil
        if let channel = context?.channel { channel.setOption(ChannelOptions.autoRead, value: true).whenFailure { _ in } }
        if closeBackend, let backend {
            backend.close(promise: nil)
        }
        backend = nil
        backendWriter = nil
    }

    /// A refusal answered by the router itself (`RouterPolicy` decides status and text, for every path).
    func respond(_ context: ChannelHandlerContext, _ refusal: RouterPolicy.Refusal) {
        respond(context, RouterPolicy.answer(refusal))
    }

    private func respond(_ context: ChannelHandlerContext, _ answer: RouterPolicy.Answer) {
        let version = request?.head.version ?? .http1_1
        let keepAlive = !answer.close && (request?.head.isKeepAlive ?? false)
        request?.responseStarted = true
        request?.bytesOut += answer.body.utf8.count
        let parts = answer.responseParts(version: version, keepAlive: keepAlive, isHEAD: request?.head.method == .HEAD,
                                         allocator: context.channel.allocator)
        for part in parts.dropLast() { context.write(wrapOutboundOut(part), promise: nil) }
        finishRequest(closeBackend: true)
        let done = context.writeAndFlush(wrapOutboundOut(.end(nil)))
        if !keepAlive { done.whenComplete { _ in context.close(promise: nil) } }
    }
}

/// Receives the backend's HTTP response (decoded by NIO) and hands it to the router handler.
final class BackendHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPClientResponsePart
    typealias OutboundOut = HTTPClientRequestPart

    private var context: ChannelHandlerContext?

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }

    /// Tells the response decoder which method the request used (HEAD responses have no body).
    func begin(method: HTTPMethod) {
        guard let context else { return }
        context.write(wrapOutboundOut(.head(HTTPRequestHead(version: .http1_1, method: method, uri: "/"))), promise: nil)
        context.write(wrapOutboundOut(.end(nil)), promise: nil)
    }

    /// The router handler this connection serves now (nil while it waits in the keep-alive pool).
    private var router: NIOLoopBound<RouterHandler>?
    /// HTTP/1.1 backend (request parts go through the encoder) rather than uwsgi (raw packet).
    let http: Bool
    private var ended = false
    /// The HTTP decoder's context: writes from it skip the decoder.
    var rawWriter: ChannelHandlerContext?

    func send(_ buffers: [ByteBuffer]) {
        if http {
            guard let context else { return }
            for buffer in buffers { context.write(wrapOutboundOut(.body(.byteBuffer(buffer))), promise: nil) }
            context.flush()
            return
        }
        guard let rawWriter else { return }
        for buffer in buffers { rawWriter.write(NIOAny(buffer), promise: nil) }
        rawWriter.flush()
    }

    /// HTTP backends: the request head (the response decoder learns the method from it).
    func beginHTTP(_ head: HTTPRequestHead) {
        ended = false
        context?.write(wrapOutboundOut(.head(head)), promise: nil)
    }

    func finishHTTP() {
        context?.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
    }

    /// Back in the pool: events no longer reach a router handler.
    func detach() { router = nil }

    /// Taken from the pool for a new request.
    func attach(_ router: NIOLoopBound<RouterHandler>) {
        self.router = router
        ended = false
    }

    init(router: NIOLoopBound<RouterHandler>, http: Bool = false) {
        self.router = router
        self.http = http
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard let router else {
            // Bytes on an idle pooled connection: the backend broke the protocol; drop the connection.
            context.close(promise: nil)
            return
        }
        switch unwrapInboundIn(data) {
        case .head(let head):
            if head.status.code < 200 { return }  // 1xx: ignore (100-continue)
            router.value.backendHead(head)
        case .body(let buffer): router.value.backendBody(buffer)
        case .end:
            ended = true
            router.value.backendEnd()
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        if !ended { router?.value.backendClosed(error: nil) }
        context.fireChannelInactive()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        router?.value.backendWritabilityChanged(context.channel.isWritable)
        context.fireChannelWritabilityChanged()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let idle = event as? IdleStateHandler.IdleStateEvent, idle == .read {
            if router == nil {
                context.close(promise: nil)  // idle in the pool for idleTimeoutMs
                return
            }
            if !ended {
                ended = true
                router?.value.backendTimedOut()
                context.close(promise: nil)
                return
            }
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        if !ended {
            ended = true
            router?.value.backendClosed(error: error)
        }
        context.close(promise: nil)
    }
}

/// Idle HTTP/1.1 backend connections, per event loop and address (a connection is only reused on its own loop).
final class BackendPool: Sendable {
    private let idle = Mutex<[String: [Channel]]>([:])
    let maxIdlePerAddress: Int

    init(maxIdlePerAddress: Int = 64) { self.maxIdlePerAddress = maxIdlePerAddress }

    private static func key(_ address: String, _ loop: EventLoop) -> String { "\(ObjectIdentifier(loop).hashValue)|\(address)" }

    func take(address: String, on loop: EventLoop) -> Channel? {
        idle.withLock { table in
            let key = Self.key(address, loop)
            while var list = table[key], let channel = list.popLast() {
                table[key] = list
                if channel.isActive { return channel }
            }
            return nil
        }
    }

    func put(_ channel: Channel, address: String) {
        let kept = idle.withLock { table -> Bool in
            let key = Self.key(address, channel.eventLoop)
            var list = (table[key] ?? []).filter(\.isActive)
            guard list.count < maxIdlePerAddress else { return false }
            list.append(channel)
            table[key] = list
            return true
        }
        if !kept { channel.close(promise: nil) }
    }
}

/// Swallows the HTTP request parts written only to inform the response decoder.
final class RequestPartSink: ChannelOutboundHandler, RemovableChannelHandler {
    typealias OutboundIn = HTTPClientRequestPart

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        promise?.succeed(())
    }
}
