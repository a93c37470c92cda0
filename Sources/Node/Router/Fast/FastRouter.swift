#if os(Linux)
import CRouterIO
import Foundation
import Logging
import Supervisor
import Synchronization

/// The HTTP router's fast path (Linux): one epoll loop per thread over one shared listening
/// socket, serving plain HTTP/1.x requests to uwsgi backends with the fewest system calls the
/// job needs — one `epoll_ctl` per backend connection (edge-triggered, removed by `close`),
/// the request written right after `connect` (no wait for writability on loopback), responses
/// relayed as they arrive with only the head parsed.
///
/// Everything the fast path does not serve itself (see `HTTPHeadScanner`: WebSockets, chunked
/// uploads, large bodies, HTTP/1.1 backends, malformed heads…) is handed, with the bytes read
/// so far, to the general SwiftNIO router (`RouterHandler`) on the same socket.
final class FastRouter: @unchecked Sendable {
    let shared: RouterShared
    let listenFD: Int32
    let port: Int
    /// Takes over a client socket and the bytes already read from it.
    let handOff: @Sendable (Int32, [UInt8]) -> Void
    private let stopping = Atomic<Bool>(false)
    private(set) var loops: [FastLoop] = []
    private let finished = DispatchGroup()

    /// What the accepted connections are: HTTP clients (the router), HTTPS clients (TLS terminated here
    /// with these contexts), or other nodes' routers sending uwsgi requests for local vassals (the internal router).
    enum Kind: Sendable { case http, https(FastTLSContexts), relay }
    let kind: Kind
    /// Gives the general router one end of a socket pair that carries a TLS client's plaintext (`FastTLSBridge`),
    /// the bytes already decrypted, and who the client is.
    let bridge: @Sendable (Int32, [UInt8], ClientOrigin) -> Void

    /// Binds `host:port` (throws with the system's reason).
    init(shared: RouterShared, host: String, port: Int, threads: Int, kind: Kind = .http,
         handOff: @escaping @Sendable (Int32, [UInt8]) -> Void,
         bridge: @escaping @Sendable (Int32, [UInt8], ClientOrigin) -> Void = { fd, _, _ in _ = crio_close(fd) }) throws {
        self.kind = kind
        self.bridge = bridge
        let fd = crio_listen_tcp(host, Int32(port), 1024)
        guard fd >= 0 else {
            throw FastRouterError.listen("\(host):\(port): \(String(cString: strerror(crio_errno())))")
        }
        self.listenFD = fd
        self.port = Int(crio_local_port(fd))
        self.shared = shared
        self.handOff = handOff
        do {
            for index in 0..<max(threads, 1) {
                loops.append(try FastLoop(router: self, index: index))
            }
        } catch {
            loops.removeAll()
            _ = crio_close(fd)
            throw error
        }
    }

    var isStopping: Bool { stopping.load(ordering: .relaxed) }

    private let dealt = Atomic<Int>(0)

    /// The loop that gets the next accepted connection (round robin).
    func nextLoop() -> FastLoop {
        let n = dealt.wrappingAdd(1, ordering: .relaxed).oldValue
        return loops[n % loops.count]
    }

    func start() {
        for loop in loops {
            finished.enter()
            let thread = Thread { [finished] in
                ThreadName.set("legion-router-\(loop.index)")
                loop.run()
                finished.leave()
            }
            thread.start()
        }
    }

    private let draining = Atomic<Bool>(false)
    var isDraining: Bool { draining.load(ordering: .relaxed) }

    /// Stops accepting, lets requests in flight finish for up to `drainMs` (idle keep-alive
    /// connections close at once, busy ones after their response), closes the rest, waits for the threads.
    func stop(drainMs: Int = 0) {
        if drainMs > 0, !draining.exchange(true, ordering: .relaxed) {
            for loop in loops { loop.wake() }
            if finished.wait(timeout: .now() + .milliseconds(drainMs)) == .success {
                shared.logger.notice("router drained", metadata: ["bind_port": "\(port)"])
            } else {
                shared.logger.warning("router: requests still in flight after the drain period; closing them",
                                      metadata: ["drain_ms": "\(drainMs)"])
            }
        }
        guard !stopping.exchange(true, ordering: .relaxed) else { return }
        for loop in loops { loop.wake() }
        finished.wait()
        _ = crio_close(listenFD)
    }
}

enum FastRouterError: Error, CustomStringConvertible {
    case listen(String)
    case epoll(String)
    case tls(String)

    var description: String {
        switch self {
        case .listen(let s): return "cannot listen on \(s)"
        case .epoll(let s): return "cannot set up epoll: \(s)"
        case .tls(let s): return "cannot set up TLS: \(s); check the certificate and key (PEM)"
        }
    }
}

/// One event-loop thread of the fast path: an epoll set with the shared listener, a wake-up
/// eventfd, and the connections it accepted (slots addressed by epoll tokens).
/// Sendable because it is handed to its thread once and then used only there (`wake()`, an
/// eventfd write, is the one call made from other threads).
final class FastLoop: @unchecked Sendable {
    enum Kind: UInt64 { case listener = 0, wake = 1, client = 2, backend = 3 }

    unowned let router: FastRouter
    let index: Int
    let epfd: Int32
    let wakeFD: Int32
    let shared: RouterShared
    private(set) var slots: [FastSocketOwner?] = []
    private var freeSlots: [Int] = []
    private var generation: UInt64 = 0
    /// Reused by every connection of this loop: backend reads, header lists, response heads.
    let readBuffer = IOBuffer(capacity: 64 * 1024)
    let headScratch = IOBuffer(capacity: 4096)
    var headers: [HTTPHeadScanner.Header] = []
    /// Parsed backend addresses (nil: not an IP literal or UNIX path; the general path resolves names).
    private var addresses: [[UInt8]: BackendAddress?] = [:]
    var now: UInt64 = 0
    private var acceptPausedUntil: UInt64 = 0
    private var nextAcceptWarning: UInt64 = 0
    let serverName: [UInt8]
    let serverPort: [UInt8]

    struct BackendAddress {
        var host: [CChar]
        var port: Int32
    }

    init(router: FastRouter, index: Int) throws {
        self.router = router
        self.index = index
        self.shared = router.shared
        epfd = crio_epoll_create()
        wakeFD = crio_eventfd()
        guard epfd >= 0, wakeFD >= 0 else { throw FastRouterError.epoll(String(cString: strerror(crio_errno()))) }
        guard crio_epoll_add(epfd, router.listenFD, Kind.listener.rawValue, 0, 0, 1) == 0,
              crio_epoll_add(epfd, wakeFD, Kind.wake.rawValue, 0, 0, 0) == 0 else {
            throw FastRouterError.epoll(String(cString: strerror(crio_errno())))
        }
        headers.reserveCapacity(64)
        serverName = Array(shared.settings.serverName.utf8)
        serverPort = Array(String(router.port).utf8)
    }

    deinit {
        _ = crio_close(epfd)
        _ = crio_close(wakeFD)
    }

    func wake() { _ = crio_eventfd_signal(wakeFD) }

    static func token(_ kind: Kind, slot: Int, generation: UInt64) -> UInt64 {
        kind.rawValue | UInt64(slot) << 2 | generation << 34
    }

    func nextGeneration() -> UInt64 {
        generation = (generation + 1) & 0x3FFF_FFFF
        return generation
    }

    func run() {
        let tokens = UnsafeMutablePointer<UInt64>.allocate(capacity: 256)
        let events = UnsafeMutablePointer<UInt32>.allocate(capacity: 256)
        defer {
            tokens.deallocate()
            events.deallocate()
        }
        var nextFlush: UInt64 = 0
        var drainStarted = false
        while !router.isStopping {
            if router.isDraining {
                if !drainStarted {
                    // Drain: what the kernel already accepted is taken and served here (closing the listener would
                    // reset those clients; a failover IP is released before its listener drains, so nothing new
                    // arrives there), then no new connections; idle ones close now, busy ones after their response.
                    drainStarted = true
                    accept(keep: true)
                    _ = crio_epoll_del(epfd, router.listenFD)
                    acceptPausedUntil = 0
                    for connection in slots { connection?.drain(self) }
                }
                if slots.count == freeSlots.count {
                    if inbox.withLock({ $0.isEmpty }) { break }
                    drainInbox()  // handed over by another loop just before the drain
                }
            }
            // Sleep until the next connection deadline, or 100 ms while counts wait to be flushed; with none, until
            // an event (stop and drain signal the wake fd): an idle router does not wake, and holding idle
            // connections costs no CPU.
            var wakeAt = nextDeadline
            if !counts.isEmpty { wakeAt = min(wakeAt, nextFlush) }
            if acceptPausedUntil != 0 { wakeAt = min(wakeAt, acceptPausedUntil) }
            let timeoutMs = wakeAt == .max ? -1 : wakeAt <= now ? 0 : Int32(min((wakeAt - now) / 1_000_000 + 1, 3_600_000))
            let n = crio_epoll_wait(epfd, tokens, events, 256, timeoutMs)
            now = SystemClock.monotonicNanos()
            if n < 0 {
                shared.logger.error("router fast path: epoll_wait failed", metadata: ["errno": "\(crio_errno())"])
                break
            }
            for i in 0..<Int(n) {
                let token = tokens[i]
                let ev = events[i]
                switch token & 3 {
                case Kind.listener.rawValue: accept()
                case Kind.wake.rawValue:
                    crio_eventfd_drain(wakeFD)
                    drainInbox()
                default:
                    let slot = Int((token >> 2) & 0xFFFF_FFFF)
                    let gen = token >> 34
                    guard slot < slots.count, let connection = slots[slot] else { continue }
                    if token & 3 == Kind.client.rawValue {
                        if connection.generation == gen { connection.clientEvent(ev, self) }
                    } else if connection.backendGeneration == gen {
                        connection.backendEvent(ev, self)
                    }
                }
            }
            if acceptPausedUntil != 0, now >= acceptPausedUntil, !drainStarted {
                acceptPausedUntil = 0
                _ = crio_epoll_add(epfd, router.listenFD, Kind.listener.rawValue, 0, 0, 1)
            }
            if now >= nextDeadline {
                // Only when a deadline is due: every connection is checked and the earliest deadline noted.
                nextDeadline = .max
                for case let connection? in slots {
                    connection.checkDeadline(self)
                    let due = connection.deadlineNs
                    if due != 0, due < nextDeadline { nextDeadline = due }
                }
            }
            if now >= nextFlush {
                nextFlush = now + 100_000_000
                flushCounts()
            }
        }
        for connection in slots { connection?.abort(self) }
        flushCounts()
        for accepted in inbox.withLock({ list -> [Accepted] in defer { list.removeAll() }; return list }) { _ = crio_close(accepted.fd) }
    }

    /// The earliest deadline any connection of this loop has (`.max`: none); lowered by `noteDeadline`.
    private var nextDeadline: UInt64 = .max

    /// A connection set a deadline: the loop wakes for it.
    func noteDeadline(_ at: UInt64) {
        if at < nextDeadline { nextDeadline = at }
    }

    /// A connection accepted by another loop for this one.
    struct Accepted {
        var fd: Int32
        var host: [UInt8]
        var port: Int
    }

    private let inbox = Mutex<[Accepted]>([])

    /// Accepts what is pending and deals the connections out to the loops in turn (an awake loop would
    /// otherwise take a whole burst of new connections and leave the other loops idle).
    /// `keep`: adopt every connection here, until the backlog is empty (the drain: other loops may be done).
    private func accept(keep: Bool = false) {
        var host = [CChar](repeating: 0, count: 64)
        for _ in 0..<(keep ? Int.max : 64) {
            var port: Int32 = 0
            let fd = crio_accept(router.listenFD, &host, 64, &port)
            if fd < 0 {
                let err = crio_errno()
                if err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM {
                    // Out of descriptors or memory: stop listening for a moment instead of spinning on a
                    // listener that stays readable; established connections keep being served.
                    if now >= nextAcceptWarning {
                        nextAcceptWarning = now + 1_000_000_000
                        shared.logger.warning("router: cannot accept connections; pausing accept for 100 ms (raise the open files limit, `ulimit -n`)",
                                              metadata: ["error": "\(String(cString: strerror(err)))", "connections": "\(slots.count - freeSlots.count)"])
                    }
                    if crio_epoll_del(epfd, router.listenFD) == 0 { acceptPausedUntil = now + 100_000_000 }
                } else if err != EAGAIN && err != EWOULDBLOCK && err != EINTR && err != ECONNABORTED {
                    shared.logger.warning("router: accept failed", metadata: ["error": "\(String(cString: strerror(err)))"])
                }
                return
            }
            _ = crio_nodelay(fd)
            let remote = host.withUnsafeBufferPointer { buf -> [UInt8] in
                guard let base = buf.baseAddress else { return [] }
                return UnsafeRawBufferPointer(start: base, count: strnlen(base, 64)).map { $0 }
            }
            let target = keep ? self : router.nextLoop()
            if target === self {
                adopt(Accepted(fd: fd, host: remote, port: Int(port)))
            } else {
                target.inbox.withLock { $0.append(Accepted(fd: fd, host: remote, port: Int(port))) }
                target.wake()
            }
        }
    }

    /// Takes the connections other loops accepted for this one.
    func drainInbox() {
        let pending = inbox.withLock { list -> [Accepted] in
            defer { list.removeAll() }
            return list
        }
        for accepted in pending { adopt(accepted) }
    }

    private func adopt(_ accepted: Accepted) {
        let slot: Int
        if let free = freeSlots.popLast() { slot = free } else { slot = slots.count; slots.append(nil) }
        let connection: FastSocketOwner
        switch router.kind {
        case .http:
            connection = FastConnection(fd: accepted.fd, slot: slot, generation: nextGeneration(), remoteAddress: accepted.host,
                                        remotePort: accepted.port, loop: self)
        case .https(let contexts):
            guard let tls = TLSStream(contexts: contexts, fd: accepted.fd) else {
                shared.logger.warning("router: cannot start a TLS session (out of memory?); closing the connection")
                slots[slot] = nil
                freeSlots.append(slot)
                _ = crio_close(accepted.fd)
                return
            }
            connection = FastConnection(fd: accepted.fd, slot: slot, generation: nextGeneration(), remoteAddress: accepted.host,
                                        remotePort: accepted.port, tls: tls, loop: self)
        case .relay:
            connection = FastRelayConnection(fd: accepted.fd, slot: slot, generation: nextGeneration(), loop: self)
        }
        slots[slot] = connection
        if crio_epoll_add(epfd, accepted.fd, FastLoop.token(.client, slot: slot, generation: connection.generation), 1, 1, 0) != 0 {
            slots[slot] = nil
            freeSlots.append(slot)
            _ = crio_close(accepted.fd)
        }
    }

    /// Puts another owner in a slot (same client registration: `owner` keeps the generation).
    func replace(slot: Int, with owner: FastSocketOwner) {
        slots[slot] = owner
    }

    /// Forgets a connection (its sockets are closed or handed off already).
    func release(slot: Int) {
        slots[slot] = nil
        freeSlots.append(slot)
    }

    /// Per-domain counts of this loop, added to the shared table every 100 ms (one lock then, not per request).
    private var counts: [[UInt8]: (hits: Int, bytes: Int)] = [:]

    /// Request durations (ns) of this loop per domain, recorded into the latency histograms at the same flush.
    private var durations: [[UInt8]: [Int64]] = [:]

    func count(key: [UInt8]?, bytes: Int, nanoseconds: UInt64) {
        let name = key ?? [0x2D]  // "-": no domain
        if durations.count < 10_000 || durations[name] != nil { durations[name, default: []].append(Int64(nanoseconds)) }
        if var c = counts[name] {
            c.hits += 1
            c.bytes += bytes
            counts[name] = c
        } else if counts.count < 10_000 {
            counts[name] = (1, bytes)
        }
    }

    func flushCounts() {
        guard !counts.isEmpty else { return }
        var batch: [String: (hits: Int, bytes: Int)] = [:]
        for (key, c) in counts { batch[String(decoding: key, as: UTF8.self)] = c }
        counts.removeAll(keepingCapacity: true)
        shared.store.count(batch: batch)
        for (key, values) in durations {
            NodeMetrics.recordRouterLatency(domain: String(decoding: key, as: UTF8.self), nanoseconds: values)
        }
        durations.removeAll(keepingCapacity: true)
    }

    func address(for raw: [UInt8]) -> BackendAddress? {
        if let cached = addresses[raw] { return cached }
        let parsed = FastLoop.parseAddress(raw)
        if addresses.count > 10_000 { addresses.removeAll() }
        addresses[raw] = parsed
        return parsed
    }

    /// `/path` (UNIX socket), `host:port`, `:port` (127.0.0.1), `[v6]:port`; nil for names.
    static func parseAddress(_ raw: [UInt8]) -> BackendAddress? {
        if raw.first == 0x2F { return BackendAddress(host: raw.map { CChar(bitPattern: $0) } + [0], port: -1) }
        guard let colon = raw.lastIndex(of: 0x3A), let port = Int32(String(decoding: raw[(colon + 1)...], as: UTF8.self)),
              port > 0, port < 65536 else { return nil }
        var host = Array(raw[..<colon])
        if host.first == 0x5B, host.last == 0x5D { host = Array(host.dropFirst().dropLast()) }
        if host.isEmpty { host = Array("127.0.0.1".utf8) }
        // Only literals: anything with a letter other than hex digits and ':' (IPv6) is a name.
        let literal = host.allSatisfy { ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x2E || $0 == 0x3A || ($0 >= 0x61 && $0 <= 0x66) || ($0 >= 0x41 && $0 <= 0x46) }
        guard literal, host.contains(0x2E) || host.contains(0x3A) else { return nil }
        return BackendAddress(host: host.map { CChar(bitPattern: $0) } + [0], port: port)
    }
}
#endif
