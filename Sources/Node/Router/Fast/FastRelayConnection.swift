#if os(Linux)
import CRouterIO
import Foundation
import Logging
import Subscriptions
import UwsgiWire

/// What a fast loop's slot holds: a client connection and, at times, its backend connection.
protocol FastSocketOwner: AnyObject {
    var generation: UInt64 { get }
    var backendGeneration: UInt64 { get }
    func clientEvent(_ events: UInt32, _ loop: FastLoop)
    func backendEvent(_ events: UInt32, _ loop: FastLoop)
    func checkDeadline(_ loop: FastLoop)
    /// When `checkDeadline` has something to do (monotonic ns), 0 for never.
    var deadlineNs: UInt64 { get }
    func abort(_ loop: FastLoop)
    /// The router is stopping: close now if idle, else once the exchange in flight is done.
    func drain(_ loop: FastLoop)
}

extension FastConnection: FastSocketOwner {}

/// One connection to the internal router (cluster domains' second hop): another node's router
/// sends a uwsgi request; its `HTTP_HOST` picks a local vassal (retrying others if one refuses),
/// and from then on bytes are relayed both ways, with backpressure, until either side closes
/// (uwsgi responses end at close; WebSockets pass through the same way).
final class FastRelayConnection: FastSocketOwner {
    enum Phase { case head, relaying, closed }

    let fd: Int32
    let slot: Int
    let generation: UInt64
    private(set) var backendGeneration: UInt64 = 0

    private var phase = Phase.head
    /// Bytes from the client not yet written to the backend (the whole request head until a backend takes it).
    private let fromClient = IOBuffer(capacity: 4096)
    /// Bytes from the backend the client has not taken yet (the backend is not read meanwhile).
    private let toClient = IOBuffer(capacity: 512)
    private var backendFD: Int32 = -1
    private var backendConnected = false
    /// Some client bytes reached the backend: a failure can no longer be retried elsewhere.
    private var sentAny = false
    private var backendReadPending = false
    private var clientReadPending = false
    private var closeAfterFlush = false
    private var host: [UInt8] = []
    private var attempts = 0
    private var excluded: Set<[UInt8]> = []
    private var node: SubscriptionTable.Node?
    private var deadline: UInt64 = 0
    /// The whole request, kept while it may be retried on another vassal; nil otherwise.
    private var replay: [UInt8]?
    private var receivedAny = false
    /// Most bytes buffered in one direction before that side is no longer read.
    private static let window = 256 * 1024

    init(fd: Int32, slot: Int, generation: UInt64, loop: FastLoop) {
        self.fd = fd
        self.slot = slot
        self.generation = generation
        deadline = (loop.now == 0 ? SystemClock.monotonicNanos() : loop.now) + UInt64(loop.shared.settings.headersTimeoutMs) * 1_000_000
        loop.noteDeadline(deadline)
    }

    var deadlineNs: UInt64 { phase == .closed ? 0 : deadline }

    // MARK: client

    func clientEvent(_ events: UInt32, _ loop: FastLoop) {
        if events & UInt32(CRIO_ERR) != 0 {
            abort(loop)
            return
        }
        if events & UInt32(CRIO_OUT) != 0, !toClient.isEmpty {
            flushToClient(loop)
            if phase == .closed { return }
        }
        if events & UInt32(CRIO_IN | CRIO_RDHUP | CRIO_HUP) != 0 { readClient(loop) }
    }

    private func readClient(_ loop: FastLoop) {
        var eof = false
        switch SocketIO.read(fd, into: fromClient, limit: Self.window) {
        case .drained: break
        case .limit: clientReadPending = true
        case .eof: eof = true
        case .failed:
            abort(loop)
            return
        }
        if phase == .head { startIfComplete(loop) }
        if phase == .relaying, backendFD >= 0 { flushToBackend(loop) }
        if eof, phase != .closed {
            // The calling router is done (it closes once it has the whole response) or gone.
            abort(loop)
        }
    }

    /// The uwsgi request head is in: route by HTTP_HOST.
    private func startIfComplete(_ loop: FastLoop) {
        let p = fromClient.readable
        guard p.count >= 4 else { return }
        let size = Int(p[1]) | Int(p[2]) << 8
        guard p.count >= 4 + size else {
            if p.count > 70_000 { fail(loop, .relayRequestRefused("request head too large")) }
            return
        }
        guard let vars = try? UwsgiVars(decoding: Array(UnsafeRawBufferPointer(rebasing: p[4..<(4 + size)]))),
              let requestHost = vars["HTTP_HOST"] else {
            fail(loop, .relayRequestRefused("malformed uwsgi request (no HTTP_HOST)"))
            return
        }
        host = requestHost
        // A request that can safely go to another vassal if this one dies before answering (as the HTTP
        // router's next-upstream retry): GET/HEAD/OPTIONS, no body, no upgrade, nothing after the head.
        let method = vars["REQUEST_METHOD"].map { String(decoding: $0, as: UTF8.self) } ?? ""
        let noBody = (vars["CONTENT_LENGTH"].flatMap(UwsgiVars.parseDecimal) ?? 0) == 0
        if ["GET", "HEAD", "OPTIONS"].contains(method), noBody, vars["HTTP_UPGRADE"] == nil, p.count == 4 + size {
            replay = Array(p)
        }
        phase = .relaying
        deadline = 0
        pickAndConnect(loop)
    }

    private func pickAndConnect(_ loop: FastLoop) {
        let store = loop.shared.store
        guard let picked = store.pick(host: host, nowMs: SystemClock.wallMillis(), excluding: excluded) else {
            fail(loop, RouterPolicy.noLocalPick(host: String(decoding: host, as: UTF8.self), attempts: attempts))
            return
        }
        guard let address = loop.address(for: picked.address) else {
            store.release(picked)
            fail(loop, .badBackendAddress(picked.addressString))
            return
        }
        node = picked
        attempts += 1
        var bad: Int32 = 0
        let bfd = address.host.withUnsafeBufferPointer { crio_connect($0.baseAddress, address.port, &bad) }
        if bfd < 0 {
            connectFailed(loop, reason: String(cString: strerror(crio_errno())))
            return
        }
        backendFD = bfd
        backendGeneration = loop.nextGeneration()
        backendConnected = false
        deadline = loop.now + UInt64(loop.shared.settings.connectTimeoutMs) * 1_000_000
        loop.noteDeadline(deadline)
        if crio_epoll_add(loop.epfd, bfd, FastLoop.token(.backend, slot: slot, generation: backendGeneration), 1, 1, 0) != 0 {
            connectFailed(loop, reason: String(cString: strerror(crio_errno())))
            return
        }
        flushToBackend(loop)
    }

    private func connectFailed(_ loop: FastLoop, reason: String) {
        closeBackend(reset: false)
        guard let failed = node else { return }
        node = nil
        let store = loop.shared.store
        store.release(failed)
        store.eject(failed, nowMs: SystemClock.wallMillis())
        loop.shared.logger.warning("internal router: backend refused; trying another",
                                   metadata: ["key": "\(failed.keyString)", "address": "\(failed.addressString)", "error": "\(reason)"])
        excluded.insert(failed.address)
        if RouterPolicy.retry(attempts: attempts, maxRetries: loop.shared.settings.maxRetries, replayable: !sentAny, answerStarted: false) {
            pickAndConnect(loop)
        } else {
            fail(loop, .localBackendsUnreachable)
        }
    }

    private func flushToBackend(_ loop: FastLoop) {
        guard backendFD >= 0 else { return }
        let before = fromClient.count
        let result = SocketIO.flush(fromClient, to: backendFD)
        if fromClient.count < before {
            sentAny = true
            markConnected()
        }
        switch result {
        case .done, .blocked: break
        case .failed(let err):
            if !backendConnected && !sentAny {
                connectFailed(loop, reason: String(cString: strerror(err)))
            } else {
                abort(loop)
            }
            return
        }
        if clientReadPending, fromClient.count < Self.window / 2 {
            clientReadPending = false
            readClient(loop)
        }
    }

    private func markConnected() {
        if !backendConnected {
            backendConnected = true
            deadline = 0
        }
    }

    // MARK: backend

    func backendEvent(_ events: UInt32, _ loop: FastLoop) {
        guard backendFD >= 0 else { return }
        if events & UInt32(CRIO_ERR | CRIO_HUP) != 0, !backendConnected, !sentAny, events & UInt32(CRIO_IN) == 0 {
            connectFailed(loop, reason: "connection refused")
            return
        }
        if events & UInt32(CRIO_OUT) != 0 {
            if fromClient.isEmpty { markConnected() } else { flushToBackend(loop) }
            if backendFD < 0 || phase == .closed { return }
        }
        if events & UInt32(CRIO_IN | CRIO_RDHUP | CRIO_HUP | CRIO_ERR) != 0 { readBackend(loop) }
    }

    private func readBackend(_ loop: FastLoop) {
        guard toClient.isEmpty else {
            backendReadPending = true
            return
        }
        backendReadPending = false
        let buffer = loop.readBuffer
        while backendFD >= 0 {
            buffer.clear()
            let n = crio_recv(backendFD, buffer.writePointer, buffer.writableCount)
            if n > 0 {
                markConnected()
                receivedAny = true
                replay = nil
                buffer.commit(n)
                sendClient(buffer.readable, loop)
                if phase == .closed { return }
                if !toClient.isEmpty {
                    backendReadPending = true
                    return
                }
                continue
            }
            if n == 0 {
                if retryBeforeAnswer(loop, reason: "closed without answering") { return }
                // The response is complete (uwsgi ends it by closing): pass the close on once delivered.
                closeBackend(reset: true)
                if toClient.isEmpty { close(loop) } else { closeAfterFlush = true }
                return
            }
            let err = crio_errno()
            if err == EAGAIN || err == EWOULDBLOCK { return }
            if err == EINTR { continue }
            if !backendConnected && !sentAny {
                connectFailed(loop, reason: String(cString: strerror(err)))
            } else if !retryBeforeAnswer(loop, reason: String(cString: strerror(err))) {
                abort(loop)
            }
            return
        }
    }

    /// The vassal went away after taking the request but before answering (e.g. killed just then): an
    /// idempotent request goes to another one. False when that is not possible.
    private func retryBeforeAnswer(_ loop: FastLoop, reason: String) -> Bool {
        guard let replay,
              RouterPolicy.retry(attempts: attempts, maxRetries: loop.shared.settings.maxRetries, replayable: true, answerStarted: receivedAny)
        else { return false }
        fromClient.clear()
        fromClient.append(replay)
        sentAny = false
        connectFailed(loop, reason: reason)
        return true
    }

    private func sendClient(_ data: UnsafeRawBufferPointer, _ loop: FastLoop) {
        guard data.count > 0 else { return }
        if !toClient.isEmpty {
            toClient.append(data)
        } else if !SocketIO.send(data, UnsafeRawBufferPointer(start: nil, count: 0), to: fd, overflow: toClient) {
            abort(loop)
        }
    }

    private func flushToClient(_ loop: FastLoop) {
        switch SocketIO.flush(toClient, to: fd) {
        case .done: break
        case .blocked: return
        case .failed:
            abort(loop)
            return
        }
        if closeAfterFlush {
            close(loop)
        } else if backendReadPending {
            readBackend(loop)
        }
    }

    // MARK: ends

    /// A raw HTTP error for the calling router (uwsgi backends answer raw HTTP), then close.
    private func fail(_ loop: FastLoop, _ refusal: RouterPolicy.Refusal) {
        closeBackend(reset: false)
        var text = RouterPolicy.raw(RouterPolicy.answer(refusal), minor: 1, keepAlive: false)
        phase = .relaying
        text.withUTF8 { sendClient(UnsafeRawBufferPointer($0), loop) }
        if phase == .closed { return }
        if toClient.isEmpty { close(loop) } else { closeAfterFlush = true }
    }

    func checkDeadline(_ loop: FastLoop) {
        guard deadline != 0, loop.now >= deadline, phase != .closed else { return }
        deadline = 0
        if phase == .head {
            close(loop)  // no request head in time
        } else if !backendConnected {
            connectFailed(loop, reason: "connectTimeout")
        }
    }

    private func closeBackend(reset: Bool) {
        if backendFD >= 0 {
            _ = reset ? crio_close_reset(backendFD) : crio_close(backendFD)
            backendFD = -1
        }
        backendGeneration = 0
        backendConnected = false
        backendReadPending = false
    }

    private func close(_ loop: FastLoop) {
        guard phase != .closed else { return }
        if let node { loop.shared.store.release(node) }
        node = nil
        closeBackend(reset: false)
        phase = .closed
        _ = crio_close(fd)
        loop.release(slot: slot)
    }

    func abort(_ loop: FastLoop) { close(loop) }

    func drain(_ loop: FastLoop) {
        // One exchange per connection: a relay in flight ends when its response does, and one accepted before its
        // request arrived is served (the other node's router sends it at once; the head timeout bounds the wait).
    }
}
#endif
