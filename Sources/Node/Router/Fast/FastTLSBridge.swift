#if os(Linux)
import CRouterIO
import Foundation

/// A TLS connection of the fast path whose request the general router serves (WebSockets, chunked or
/// large uploads, HTTP/1.1 backends…). Its TLS session cannot move to SwiftNIO, so it stays here: the
/// general router gets one end of a socket pair (with the client's address and certificate as a
/// `ClientOrigin`) and this relays plaintext both ways — decrypted client bytes to the pair, the pair's
/// bytes encrypted to the client — with backpressure, until either side closes. It takes over the
/// connection's slot and epoll registration; the pair's end is registered as its backend.
final class FastTLSBridge: FastSocketOwner {
    let fd: Int32
    let slot: Int
    let generation: UInt64
    private(set) var backendGeneration: UInt64
    private let tls: TLSStream
    private var pairFD: Int32
    /// Decrypted client bytes the general router has not taken yet.
    private let toRouter = IOBuffer(capacity: 4096)
    /// The general router's bytes the client has not taken yet (plaintext; encrypted as it is sent).
    private let toClient = IOBuffer(capacity: 4096)
    private var clientPending = false
    private var routerPending = false
    private var closed = false
    /// Buffered bytes in either direction before reading that side stops until the other catches up.
    static let window = 256 * 1024

    private init(fd: Int32, slot: Int, generation: UInt64, tls: TLSStream, pairFD: Int32, backendGeneration: UInt64) {
        self.fd = fd
        self.slot = slot
        self.generation = generation
        self.tls = tls
        self.pairFD = pairFD
        self.backendGeneration = backendGeneration
    }

    /// Replaces the connection in `slot` (same client registration) with a bridge to the general router.
    static func start(fd: Int32, tls: TLSStream, slot: Int, generation: UInt64, replay: [UInt8], origin: ClientOrigin, loop: FastLoop) {
        var pair: [Int32] = [-1, -1]
        guard crio_socketpair(&pair) == 0 else {
            loop.shared.logger.warning("router: cannot create a socket pair for a TLS connection the general path serves; closing it",
                                       metadata: ["error": "\(String(cString: strerror(crio_errno())))"])
            tls.close(notify: false)
            _ = crio_close(fd)
            loop.release(slot: slot)
            return
        }
        let bridge = FastTLSBridge(fd: fd, slot: slot, generation: generation, tls: tls, pairFD: pair[0],
                                   backendGeneration: loop.nextGeneration())
        loop.replace(slot: slot, with: bridge)
        guard crio_epoll_add(loop.epfd, pair[0], FastLoop.token(.backend, slot: slot, generation: bridge.backendGeneration), 1, 1, 0) == 0 else {
            _ = crio_close(pair[1])
            bridge.abort(loop)
            return
        }
        loop.router.bridge(pair[1], replay, origin)
        // The client may have sent more than the bytes replayed (already decrypted or still on the socket).
        bridge.readClient(loop)
    }

    func clientEvent(_ events: UInt32, _ loop: FastLoop) {
        if events & UInt32(CRIO_ERR) != 0 { return abort(loop) }
        if events & UInt32(CRIO_OUT) != 0 || (tls.writeWantsRead && events & UInt32(CRIO_IN) != 0) {
            flushClient(loop)
            if closed { return }
        }
        if events & UInt32(CRIO_IN | CRIO_RDHUP | CRIO_HUP) != 0 || (tls.readWantsWrite && events & UInt32(CRIO_OUT) != 0) {
            readClient(loop)
        }
    }

    func backendEvent(_ events: UInt32, _ loop: FastLoop) {
        if events & UInt32(CRIO_OUT) != 0 {
            flushRouter(loop)
            if closed { return }
        }
        if events & UInt32(CRIO_IN | CRIO_RDHUP | CRIO_HUP | CRIO_ERR) != 0 { readRouter(loop) }
    }

    private func readClient(_ loop: FastLoop) {
        guard !closed else { return }
        clientPending = false
        switch tls.read(into: toRouter, limit: FastTLSBridge.window) {
        case .drained: break
        case .limit: clientPending = true
        case .eof, .failed:
            // The client is gone: the general router's side closes too (as it would for a plain client).
            return abort(loop)
        }
        flushRouter(loop)
    }

    private func flushRouter(_ loop: FastLoop) {
        guard !closed else { return }
        switch SocketIO.flush(toRouter, to: pairFD) {
        case .done:
            if clientPending { readClient(loop) }
        case .blocked: break
        case .failed: abort(loop)
        }
    }

    private func readRouter(_ loop: FastLoop) {
        guard !closed else { return }
        routerPending = false
        switch SocketIO.read(pairFD, into: toClient, limit: FastTLSBridge.window, untilBlocked: true) {
        case .drained: break
        case .limit: routerPending = true
        case .eof, .failed:
            // The general router closed its end: what it sent goes out, then the connection closes.
            _ = tls.flush(toClient)
            return close(loop, notify: true)
        }
        flushClient(loop)
    }

    private func flushClient(_ loop: FastLoop) {
        guard !closed else { return }
        switch tls.flush(toClient) {
        case .done:
            if routerPending { readRouter(loop) }
        case .blocked: break
        case .failed: abort(loop)
        }
    }

    func checkDeadline(_ loop: FastLoop) {}  // the general router's timers govern the exchange
    var deadlineNs: UInt64 { 0 }

    func abort(_ loop: FastLoop) { close(loop, notify: false) }

    private func close(_ loop: FastLoop, notify: Bool) {
        guard !closed else { return }
        closed = true
        tls.close(notify: notify)
        _ = crio_close(fd)
        if pairFD >= 0 { _ = crio_close(pairFD) }
        pairFD = -1
        loop.release(slot: slot)
    }

    func drain(_ loop: FastLoop) {}  // the general router drains its side, which closes this one
}
#endif
