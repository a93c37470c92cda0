#if os(Linux)
import CRouterIO
import Foundation
import Logging
import Subscriptions

/// One client connection of the fast path and, while a request is in flight, its backend
/// connection. Runs only on its loop's thread. States: waiting for a request head →
/// proxying (connect, send the uwsgi packet, relay the response) → waiting again (keep-alive)
/// or closed; or handed to the general router.
final class FastConnection {
    enum Phase { case waiting, proxying, closed }
    enum Deadline { case none, header, connect, backend }
    enum BodyMode { case head, length(Int), untilClose(chunk: Bool), none }

    let fd: Int32
    let slot: Int
    let generation: UInt64
    let remoteAddress: [UInt8]
    let remotePort: Int
    let remotePortText: [UInt8]
    private(set) var backendGeneration: UInt64 = 0
    /// The HTTPS listener's connections: OpenSSL's session on `fd` (nil: plain HTTP).
    private var tls: TLSStream?

    private var phase = Phase.waiting
    private let input = IOBuffer(capacity: 4096)
    /// Response bytes the client has not taken yet (the backend is not read meanwhile).
    private let output = IOBuffer(capacity: 512)
    private var deadline: UInt64 = 0
    private var deadlineKind = Deadline.none
    private var clientEOF = false
    private var closeAfterFlush = false
    /// The backend had bytes while the client was not writable.
    private var backendReadPending = false
    /// More requests arrived than the buffer may hold while one is in flight.
    private var clientReadPending = false
    private var processing = false

    // The request in flight.
    private var request: HTTPHeadScanner.Request?
    private var requestBytes = 0
    private var host: [UInt8] = []
    private var method: Range<Int> = 0..<0
    private var idempotent = false
    private var isHEAD = false
    private var attempts = 0
    private var excluded: Set<[UInt8]> = []
    private var node: SubscriptionTable.Node?
    private var startedNs: UInt64 = 0
    private var bytesOut = 0
    private var closeAfterResponse = false
    /// Whether a response went out on this connection (an idle keep-alive connection, not a fresh one, when waiting).
    private var servedOne = false

    // The backend.
    private var backendFD: Int32 = -1
    private let packet = IOBuffer(capacity: 1024)
    private var packetSent = 0
    private var backendConnected = false
    private var responseStarted = false
    private let responseHead = IOBuffer(capacity: 1024)
    private var mode = BodyMode.head

    init(fd: Int32, slot: Int, generation: UInt64, remoteAddress: [UInt8], remotePort: Int, tls: TLSStream? = nil, loop: FastLoop) {
        self.fd = fd
        self.tls = tls
        self.slot = slot
        self.generation = generation
        self.remoteAddress = remoteAddress.isEmpty ? Array("127.0.0.1".utf8) : remoteAddress
        self.remotePort = remotePort
        self.remotePortText = Array(String(remotePort).utf8)
        setDeadline(.header, after: loop.shared.settings.headersTimeoutMs, loop)
    }

    private func setDeadline(_ kind: Deadline, after ms: Int64, _ loop: FastLoop) {
        deadlineKind = kind
        deadline = (loop.now == 0 ? SystemClock.monotonicNanos() : loop.now) + UInt64(max(ms, 1)) * 1_000_000
        loop.noteDeadline(deadline)
    }

    var deadlineNs: UInt64 { deadlineKind == .none || phase == .closed ? 0 : deadline }

    // MARK: client side

    func clientEvent(_ events: UInt32, _ loop: FastLoop) {
        if events & UInt32(CRIO_ERR) != 0 {
            abort(loop)
            return
        }
        if let tls {
            if !tls.established {
                handshake(tls, loop)
                return
            }
            // OpenSSL may need the other direction first (post-handshake messages): resume what waited for it.
            if tls.readWantsWrite, events & UInt32(CRIO_OUT) != 0 {
                readClient(loop)
                if phase == .closed { return }
            }
            if tls.writeWantsRead, events & UInt32(CRIO_IN) != 0, !output.isEmpty {
                flushOutput(loop)
                if phase == .closed { return }
            }
        }
        if events & UInt32(CRIO_OUT) != 0, !output.isEmpty {
            flushOutput(loop)
            if phase == .closed { return }
        }
        if events & UInt32(CRIO_IN | CRIO_RDHUP | CRIO_HUP) != 0 {
            readClient(loop)
        }
    }

    /// Moves the TLS handshake on; once it is done, reads what the client sent with its last flight (no
    /// further edge announces bytes the handshake already pulled off the socket).
    private func handshake(_ tls: TLSStream, _ loop: FastLoop) {
        tls.readWantsWrite = false
        switch tls.handshake() {
        case .pending:
            return
        case .failed(let why):
            loop.shared.logger.debug("TLS handshake failed", metadata: ["client": "\(String(decoding: remoteAddress, as: UTF8.self))",
                                                                         "reason": "\(why)"])
            abort(loop)
        case .done:
            readClient(loop)
        }
    }

    private func readClient(_ loop: FastLoop) {
        // While a request is in flight, pipelined ones beyond a buffer's worth wait for it.
        let limit = phase == .proxying ? 64 * 1024 : HTTPHeadScanner.maxHead + HTTPHeadScanner.maxFastBody + 4096
        switch tls.map({ $0.read(into: input, limit: limit) }) ?? SocketIO.read(fd, into: input, limit: limit) {
        case .drained: break
        case .limit: clientReadPending = true  // resumed once the request in the buffer is done
        case .eof: clientEOF = true
        case .failed:
            abort(loop)
            return
        }
        if phase == .waiting { process(loop) }
        if clientEOF, phase != .closed {
            // The client is gone (or half-closed, which HTTP/1.1 clients do not do mid-request): stop.
            if phase == .proxying || output.isEmpty { abort(loop) } else { closeAfterFlush = true }
        }
    }

    /// Serves the requests in the buffer, one at a time.
    private func process(_ loop: FastLoop) {
        guard !processing else { return }
        processing = true
        defer { processing = false }
        while phase == .waiting, output.isEmpty, !input.isEmpty {
            let scan = HTTPHeadScanner.scanRequest(input.readable, headers: &loop.headers)
            switch scan {
            case .incomplete:
                return
            case .general:
                handOff(loop)
                return
            case .complete(let req):
                if input.count < req.headLength + req.contentLength {
                    return  // body still arriving
                }
                begin(req, loop)
            }
        }
    }

    private func begin(_ req: HTTPHeadScanner.Request, _ loop: FastLoop) {
        let p = input.readable
        request = req
        requestBytes = req.headLength + req.contentLength
        host = Array(UnsafeRawBufferPointer(rebasing: p[req.host]))
        method = req.method
        isHEAD = HTTPHeadScanner.equals(p, req.method, "HEAD")
        idempotent = req.contentLength == 0 && (isHEAD || HTTPHeadScanner.equals(p, req.method, "GET") || HTTPHeadScanner.equals(p, req.method, "OPTIONS"))
        attempts = 0
        excluded.removeAll(keepingCapacity: true)
        node = nil
        startedNs = loop.now
        bytesOut = 0
        closeAfterResponse = !req.keepAlive || loop.router.isDraining
        responseStarted = false
        mode = .head
        phase = .proxying
        deadlineKind = .none
        if let lordBody = loop.shared.lordBody, HTTPHeadScanner.equals(p, req.method, "GET"), HTTPHeadScanner.equals(p, req.uri, "/.legion/lord") {
            // The failover IP's listener: who is Lord (the general router's answer, byte for byte).
            respond(loop, RouterPolicy.lord(lordBody()))
            return
        }
        if host.count > 255 {
            respond(loop, .hostTooLong)
            return
        }
        pickAndConnect(loop)
    }

    /// Picks a backend (excluding the ones that failed for this request) and connects.
    private func pickAndConnect(_ loop: FastLoop) {
        let store = loop.shared.store
        guard let picked = store.pick(host: host, nowMs: SystemClock.wallMillis(), excluding: excluded) else {
            respond(loop, RouterPolicy.noPick(host: String(decoding: host, as: UTF8.self), attempts: attempts,
                                              hostHasKey: attempts == 0 && store.hasKey(for: host)))
            return
        }
        guard let address = picked.address.first == 0x68 ? nil : loop.address(for: picked.address) else {
            // An HTTP/1.1 backend (`http://…`) or a host name: the general router serves it (before any attempt;
            // on a retry it counts as one more failed node).
            if attempts == 0 {
                store.unpick(picked)  // the general router picks again: the same node, its turn given back
                handOff(loop)
            } else {
                connectFailed(loop, node: picked, reason: "not an IP literal or UNIX socket address", timedOut: false)
            }
            return
        }
        node = picked
        attempts += 1
        var bad: Int32 = 0
        let bfd = address.host.withUnsafeBufferPointer { crio_connect($0.baseAddress, address.port, &bad) }
        if bfd < 0 {
            let err = crio_errno()
            node = nil
            connectFailed(loop, node: picked, reason: String(cString: strerror(err)), timedOut: false)
            return
        }
        backendFD = bfd
        backendGeneration = loop.nextGeneration()
        backendConnected = false
        if !packet.isEmpty {
            packet.patch(byte: RouterPolicy.requestModifier1(picked.modifier1), at: packet.readIndex)
            packet.patch(byte: picked.modifier2, at: packet.readIndex + 3)
        } else {
            packet.clear()
            let p = input.readable
            guard let req = request else { return }
            let context = UwsgiPacketWriter.Context(serverName: loop.serverName, serverPort: loop.serverPort,
                                                    remoteAddress: remoteAddress, remotePort: remotePortText, https: tls != nil,
                                                    clientSubject: tls?.peerSubject, clientCertificateDER: tls?.peerCertificateDER)
            do {
                try UwsgiPacketWriter.write(p, request: req, headers: loop.headers, context: context,
                                            modifier1: RouterPolicy.requestModifier1(picked.modifier1), modifier2: picked.modifier2,
                                            into: packet)
            } catch {
                respond(loop, .headersTooLarge)
                return
            }
            if req.contentLength > 0 {
                packet.append(UnsafeRawBufferPointer(rebasing: p[req.headLength..<(req.headLength + req.contentLength)]))
            }
        }
        packetSent = 0
        setDeadline(.connect, after: loop.shared.settings.connectTimeoutMs, loop)
        // Write first, register after: on loopback the handshake is usually done by now, the packet goes
        // out at once and the socket only needs read events (no wake-up for its writability).
        let generationNow = backendGeneration
        writeBackend(loop)
        // Failed and retried (or answered) inside writeBackend: that attempt registered its own socket.
        guard backendFD == bfd, backendGeneration == generationNow else { return }
        let wantsOut: Int32 = packetSent < packet.count ? 1 : 0
        if crio_epoll_add(loop.epfd, bfd, FastLoop.token(.backend, slot: slot, generation: backendGeneration), wantsOut, 1, 0) != 0 {
            let err = crio_errno()
            backendRefused(loop, reason: String(cString: strerror(err)), timedOut: false)
        }
    }

    /// Sends the rest of the uwsgi packet; right after connect this usually succeeds at once on
    /// loopback (EAGAIN means the handshake is not done: the backend's writability resumes it).
    private func writeBackend(_ loop: FastLoop) {
        while packetSent < packet.count {
            let n = crio_send(backendFD, packet.base + packet.readIndex + packetSent, packet.count - packetSent)
            if n > 0 {
                packetSent += n
                if !backendConnected {
                    backendConnected = true
                }
                continue
            }
            let err = crio_errno()
            if err == EAGAIN || err == EWOULDBLOCK || err == ENOTCONN { return }
            if err == EINTR { continue }
            if !backendConnected {
                backendRefused(loop, reason: String(cString: strerror(err)), timedOut: false)
            } else {
                backendClosed(loop, error: String(cString: strerror(err)))
            }
            return
        }
        if deadlineKind == .connect {
            setDeadline(.backend, after: loop.shared.settings.idleTimeoutMs, loop)
        }
    }

    // MARK: backend side

    func backendEvent(_ events: UInt32, _ loop: FastLoop) {
        guard backendFD >= 0 else { return }
        if packetSent < packet.count {
            if events & UInt32(CRIO_ERR | CRIO_HUP) != 0 && !backendConnected {
                backendRefused(loop, reason: "connection refused", timedOut: false)
                return
            }
            if events & UInt32(CRIO_OUT) != 0 { writeBackend(loop) }
            if backendFD < 0 { return }
        }
        if events & UInt32(CRIO_IN | CRIO_RDHUP | CRIO_HUP | CRIO_ERR) != 0 {
            readBackend(loop)
        }
    }

    private func readBackend(_ loop: FastLoop) {
        guard output.isEmpty else {
            backendReadPending = true  // backpressure: the client has not taken the last bytes yet
            return
        }
        backendReadPending = false
        let buffer = loop.readBuffer
        while backendFD >= 0 {
            buffer.clear()
            let n = crio_recv(backendFD, buffer.writePointer, buffer.writableCount)
            if n > 0 {
                buffer.commit(n)
                if deadlineKind == .backend { setDeadline(.backend, after: loop.shared.settings.idleTimeoutMs, loop) }
                backendData(buffer.readable, loop)
                if phase != .proxying || backendFD < 0 { return }
                if !output.isEmpty {
                    backendReadPending = true
                    return
                }
                continue
            }
            if n == 0 {
                backendEOF(loop)
                return
            }
            let err = crio_errno()
            if err == EAGAIN || err == EWOULDBLOCK { return }
            if err == EINTR { continue }
            if !backendConnected && !responseStarted && packetSent < packet.count {
                backendRefused(loop, reason: String(cString: strerror(err)), timedOut: false)
            } else {
                backendClosed(loop, error: String(cString: strerror(err)))
            }
            return
        }
    }

    private func backendData(_ data: UnsafeRawBufferPointer, _ loop: FastLoop) {
        backendConnected = true
        switch mode {
        case .head:
            let head: UnsafeRawBufferPointer
            if responseHead.isEmpty {
                head = data
            } else {
                responseHead.append(data)
                head = responseHead.readable
            }
            switch HTTPHeadScanner.scanResponse(head) {
            case .incomplete:
                if responseHead.isEmpty { responseHead.append(data) }
                return
            case .invalid(let why):
                badResponse(loop, why)
                return
            case .complete(let response):
                if response.status < 200 {
                    // 1xx (e.g. 100 Continue): skip it, the real head follows.
                    let rest = UnsafeRawBufferPointer(rebasing: head[response.headLength...])
                    let copy = IOBuffer(capacity: rest.count + 64)
                    copy.append(rest)
                    responseHead.clear()
                    if !copy.isEmpty { backendData(copy.readable, loop) }
                    return
                }
                startResponse(head, response, loop)
                responseHead.clear()
            }
        case .length(let remaining):
            let take = min(remaining, data.count)
            mode = .length(remaining - take)
            sendClient(UnsafeRawBufferPointer(rebasing: data[..<take]), loop)
            if remaining - take == 0 { responseComplete(loop) }
        case .untilClose(let chunk):
            if chunk {
                let prefix = loop.headScratch
                prefix.clear()
                prefix.append(hex: data.count)
                prefix.append("\r\n")
                sendClient(prefix.readable, data, loop)
                sendClient(UnsafeRawBufferPointer(start: crlf.utf8Start, count: 2), loop)
            } else {
                sendClient(data, loop)
            }
        case .none:
            break  // bytes after a complete bodiless response: ignored, the backend is closed
        }
    }

    private let crlf: StaticString = "\r\n"

    private func startResponse(_ head: UnsafeRawBufferPointer, _ response: HTTPHeadScanner.Response, _ loop: FastLoop) {
        guard let req = request else { return }
        responseStarted = true
        let bodiless = isHEAD || response.status == 204 || response.status == 304
        var chunk = false
        if bodiless {
            mode = .none
        } else if let length = response.contentLength {
            mode = .length(length)
        } else if response.chunked {
            mode = .untilClose(chunk: false)  // the backend's own chunks, relayed; it closes after the last
        } else if req.minor >= 1 {
            mode = .untilClose(chunk: true)
            chunk = true
        } else {
            mode = .untilClose(chunk: false)
            closeAfterResponse = true  // an HTTP/1.0 body ends at close
        }
        let body = UnsafeRawBufferPointer(rebasing: head[response.headLength...])
        let keepAlive = !closeAfterResponse
        let passThrough = !response.hasConnectionHeaders && response.minor == req.minor && keepAlive && req.minor == 1 && !chunk
        var bodyPart = body
        if case .length(let length) = mode, body.count > length { bodyPart = UnsafeRawBufferPointer(rebasing: body[..<length]) }
        if case .none = mode { bodyPart = UnsafeRawBufferPointer(start: nil, count: 0) }
        if passThrough {
            let whole = UnsafeRawBufferPointer(rebasing: head[..<(response.headLength + bodyPart.count)])
            sendClient(whole, loop)
        } else {
            let out = loop.headScratch
            out.clear()
            let extra: StaticString
            if !keepAlive {
                extra = chunk ? "Transfer-Encoding: chunked\r\nConnection: close\r\n" : "Connection: close\r\n"
            } else if req.minor == 0 {
                extra = "Connection: keep-alive\r\n"
            } else {
                extra = chunk ? "Transfer-Encoding: chunked\r\n" : ""
            }
            HTTPHeadScanner.rewriteResponseHead(head, response, clientMinor: req.minor, extra: extra, into: out)
            if chunk && bodyPart.count > 0 {
                out.append(hex: bodyPart.count)
                out.append("\r\n")
                out.append(bodyPart)
                out.append("\r\n")
                sendClient(out.readable, loop)
            } else {
                sendClient(out.readable, bodyPart, loop)
            }
        }
        if phase != .proxying { return }
        switch mode {
        case .none: responseComplete(loop, received: false)  // HEAD, 204, 304: the backend may still send a body
        case .length(let length):
            mode = .length(length - bodyPart.count)
            if length - bodyPart.count == 0 { responseComplete(loop) }
        default: break
        }
    }

    private func backendEOF(_ loop: FastLoop) {
        switch mode {
        case .head:
            if responseHead.isEmpty && !responseStarted {
                backendClosed(loop, error: nil)
            } else {
                badResponse(loop, "incomplete response head")
            }
        case .length(let remaining) where remaining > 0:
            loop.shared.logger.warning("backend closed mid-response", metadata: ["host": "\(String(decoding: host, as: UTF8.self))"])
            abort(loop)
        case .untilClose(let chunk):
            if chunk { sendClient(UnsafeRawBufferPointer(start: ("0\r\n\r\n" as StaticString).utf8Start, count: 5), loop) }
            if phase == .proxying { responseComplete(loop) }
        default:
            responseComplete(loop)
        }
    }

    /// The backend closed (or failed) before a response.
    private func backendClosed(_ loop: FastLoop, error: String?) {
        if RouterPolicy.retry(attempts: attempts, maxRetries: loop.shared.settings.maxRetries, replayable: idempotent, answerStarted: responseStarted),
           let failed = node {
            // Like nginx's proxy_next_upstream for idempotent requests: eject the node and try another.
            closeBackend()
            node = nil
            loop.shared.store.release(failed)
            loop.shared.store.eject(failed, nowMs: SystemClock.wallMillis())
            loop.shared.logger.warning("backend closed without answering; trying another",
                                       metadata: ["key": "\(failed.keyString)", "address": "\(failed.addressString)"])
            excluded.insert(failed.address)
            pickAndConnect(loop)
            return
        }
        if !responseStarted {
            respond(loop, .closedWithoutResponse(error))
        } else {
            abort(loop)
        }
    }

    private func badResponse(_ loop: FastLoop, _ why: String) {
        loop.shared.logger.warning("backend sent an invalid response", metadata: ["reason": "\(why)", "backend": "\(node?.addressString ?? "-")"])
        if !responseStarted {
            respond(loop, .invalidResponse(why))
        } else {
            abort(loop)
        }
    }

    /// The connection to the backend failed (refused, reset, timed out): eject it and try another.
    private func backendRefused(_ loop: FastLoop, reason: String, timedOut: Bool) {
        guard let failed = node else { return }
        closeBackend()
        node = nil
        connectFailed(loop, node: failed, reason: reason, timedOut: timedOut)
    }

    private func connectFailed(_ loop: FastLoop, node failed: SubscriptionTable.Node, reason: String, timedOut: Bool) {
        let store = loop.shared.store
        store.release(failed)
        store.eject(failed, nowMs: SystemClock.wallMillis())
        loop.shared.logger.warning("backend refused; trying another",
                                   metadata: ["key": "\(failed.keyString)", "address": "\(failed.addressString)", "error": "\(reason)"])
        excluded.insert(failed.address)
        if attempts >= loop.shared.settings.maxRetries {
            respond(loop, .backendUnreachable(host: String(decoding: host, as: UTF8.self), attempts: attempts, timedOut: timedOut))
        } else {
            pickAndConnect(loop)
        }
    }

    /// `reset`: the whole response has been received, so the connection is dropped without the FIN
    /// exchange and TIME_WAIT (SO_LINGER 0) — nothing is in flight either way, and it spares the
    /// kernel a third of its work per backend connection. Otherwise a normal close.
    private func closeBackend(reset: Bool = false) {
        if backendFD >= 0 {
            _ = reset ? crio_close_reset(backendFD) : crio_close(backendFD)  // also leaves the epoll set
            backendFD = -1
        }
        backendGeneration = 0
        packetSent = 0
        backendConnected = false
        backendReadPending = false
        responseHead.clear()
    }

    /// The response is complete: the backend is closed, the client kept (keep-alive) or closed.
    private func responseComplete(_ loop: FastLoop, received: Bool = true) {
        closeBackend(reset: received)
        finishRequest(loop)
    }

    private func finishRequest(_ loop: FastLoop) {
        guard phase == .proxying else { return }  // already closed (the client went away)
        let store = loop.shared.store
        if let node { store.release(node) }
        loop.count(key: node?.key, bytes: bytesOut, nanoseconds: loop.now &- startedNs)
        if loop.shared.access.logLevel <= .debug {
            let hostName = String(decoding: host, as: UTF8.self)
            let p = input.readable
            let methodText = String(decoding: UnsafeRawBufferPointer(rebasing: p[method]), as: UTF8.self)
            let uri = request.map { String(decoding: UnsafeRawBufferPointer(rebasing: p[$0.uri]), as: UTF8.self) } ?? ""
            AccessLog.request(loop.shared.access, host: hostName, method: methodText, uri: uri, backend: node?.addressString,
                              bytes: bytesOut, startedNs: startedNs)
        }
        node = nil
        request = nil
        servedOne = true
        packet.clear()
        input.consume(min(requestBytes, input.count))
        requestBytes = 0
        if packet.capacity > 256 * 1024 { packet.shrink(to: 1024) }
        phase = .waiting
        setDeadline(.header, after: loop.shared.settings.headersTimeoutMs, loop)
        if closeAfterResponse || clientEOF || loop.router.isDraining {
            if output.isEmpty { close(loop) } else { closeAfterFlush = true }
            return
        }
        if input.isEmpty && input.capacity > 64 * 1024 { input.shrink(to: 4096) }
        if clientReadPending {
            clientReadPending = false
            readClient(loop)
            return
        }
        if output.isEmpty { process(loop) }
    }

    /// A refusal answered by the router itself (`RouterPolicy` decides status and text, for every path).
    private func respond(_ loop: FastLoop, _ refusal: RouterPolicy.Refusal) {
        respond(loop, RouterPolicy.answer(refusal))
    }

    private func respond(_ loop: FastLoop, _ answer: RouterPolicy.Answer) {
        closeBackend()
        guard let req = request else { return }
        if answer.close { closeAfterResponse = true }
        var text = RouterPolicy.raw(answer, minor: Int(req.minor), keepAlive: !closeAfterResponse, head: isHEAD)
        responseStarted = true
        text.withUTF8 { sendClient(UnsafeRawBufferPointer($0), loop) }
        if phase == .proxying { finishRequest(loop) }
    }

    // MARK: writing to the client

    private func sendClient(_ a: UnsafeRawBufferPointer, _ loop: FastLoop) {
        sendClient(a, UnsafeRawBufferPointer(start: nil, count: 0), loop)
    }

    private func sendClient(_ a: UnsafeRawBufferPointer, _ b: UnsafeRawBufferPointer, _ loop: FastLoop) {
        let total = a.count + b.count
        guard total > 0, phase != .closed else { return }
        bytesOut += total
        if let tls {
            // One record for both parts where they fit (OpenSSL encrypts from a copy either way).
            let idle = output.isEmpty
            output.append(a)
            output.append(b)
            if idle, case .failed = tls.flush(output) { abort(loop) }
        } else if !output.isEmpty {
            output.append(a)
            output.append(b)
        } else if !SocketIO.send(a, b, to: fd, overflow: output) {
            abort(loop)  // the client went away
        }
    }

    private func flushOutput(_ loop: FastLoop) {
        switch tls.map({ $0.flush(output) }) ?? SocketIO.flush(output, to: fd) {
        case .done: break
        case .blocked: return
        case .failed:
            abort(loop)
            return
        }
        if output.capacity > 256 * 1024 { output.shrink(to: 512) }
        if closeAfterFlush {
            close(loop)
            return
        }
        if phase == .proxying, backendReadPending {
            readBackend(loop)
        } else if phase == .waiting {
            process(loop)
        }
    }

    // MARK: timers, hand-off, close

    func checkDeadline(_ loop: FastLoop) {
        guard deadlineKind != .none, loop.now >= deadline, phase != .closed else { return }
        switch deadlineKind {
        case .header:
            guard phase == .waiting else { return }
            if let tls, !tls.established {
                abort(loop)  // a TLS handshake not finished within the header timeout
            } else if !output.isEmpty {
                abort(loop)  // the client has not taken its last response for the whole header timeout
            } else if input.isEmpty {
                close(loop)  // an idle keep-alive connection
            } else {
                // A request head still incomplete (slowloris): 408, as the general router answers.
                var bytes = RouterPolicy.raw(RouterPolicy.answer(.headerTimeout), minor: 1, keepAlive: false)
                bytes.withUTF8 { sendClient(UnsafeRawBufferPointer($0), loop) }
                if output.isEmpty { close(loop) } else { closeAfterFlush = true; setDeadline(.header, after: loop.shared.settings.headersTimeoutMs, loop) }
            }
        case .connect:
            backendRefused(loop, reason: "connectTimeout", timedOut: true)
        case .backend:
            loop.shared.logger.warning("backend timed out", metadata: ["host": "\(String(decoding: host, as: UTF8.self))",
                                                                       "backend": "\(node?.addressString ?? "-")"])
            if !responseStarted {
                respond(loop, .applicationTimeout(seconds: loop.shared.settings.idleTimeoutMs / 1000))
            } else {
                abort(loop)
            }
        case .none:
            break
        }
    }

    /// Gives the client socket and its unread bytes to the general router. A TLS connection cannot change
    /// hands (its session lives in OpenSSL here): a `FastTLSBridge` takes this slot and relays the plaintext
    /// to the general router over a socket pair.
    private func handOff(_ loop: FastLoop) {
        closeBackend()
        if let node { loop.shared.store.release(node) }
        node = nil
        loop.shared.store.countHandOff()
        let bytes = Array(input.readable)
        phase = .closed
        if let tls {
            self.tls = nil
            let origin = ClientOrigin(address: String(decoding: remoteAddress, as: UTF8.self),
                                      port: remotePort,
                                      tlsSubject: tls.peerSubject.map { String(decoding: $0, as: UTF8.self) },
                                      tlsCertificateDER: tls.peerCertificateDER)
            FastTLSBridge.start(fd: fd, tls: tls, slot: slot, generation: generation, replay: bytes, origin: origin, loop: loop)
            return
        }
        _ = crio_epoll_del(loop.epfd, fd)
        loop.release(slot: slot)
        loop.router.handOff(fd, bytes)
    }

    /// Closes both sides; `notify`: a graceful close (TLS sends close_notify first).
    private func close(_ loop: FastLoop, notify: Bool = true) {
        guard phase != .closed else { return }
        if phase == .proxying, let node { loop.shared.store.release(node) }
        node = nil
        closeBackend()
        phase = .closed
        tls?.close(notify: notify)
        tls = nil
        _ = crio_close(fd)
        loop.release(slot: slot)
    }

    /// Closes both sides now (errors, shutdown).
    func abort(_ loop: FastLoop) { close(loop, notify: false) }

    func drain(_ loop: FastLoop) {
        switch phase {
        case .waiting:
            if !output.isEmpty {
                closeAfterFlush = true
            } else if servedOne, input.isEmpty {
                close(loop)  // idle between keep-alive requests: the client retries elsewhere on a fresh connection
            }
            // Otherwise accepted but its request not read yet (or half read): it is served, with `Connection: close`
            // (a request seen while draining), within the header timeout; closing it now would reset a client that
            // did nothing wrong.
        case .proxying:
            // The response in flight still goes out, announcing `Connection: close` if it has not started.
            if !responseStarted { closeAfterResponse = true }
        case .closed:
            break
        }
    }
}
#endif
