import CRouterIO
import Foundation
import NIOCore
import Supervisor
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// The Legion protocol loop's own OS thread, as keepalived runs VRRP: a Lord whose process is starved of CPU by
/// other work (busy customer apps on the same cores, a compile, a backup) must still renew its lease on time, or it
/// resigns and the failover IP moves for nothing.
///
/// - realtime scheduling (`SCHED_RR`, `[legion] realtime_priority`, default 10) where permitted — root or
///   CAP_SYS_NICE; an unprivileged node runs at normal priority and says so once;
/// - the process's memory locked (`mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT)`, `[legion] lock_memory`) so a
///   page fault never waits for swap;
/// - the loop sleeps in poll(2) until the state machine's next deadline (`nextWakeup`), a datagram or a wake-up
///   (relay payload, shutdown) — an idle node does nothing between announces;
/// - nothing on it blocks: datagrams are sent non-blocking, log lines and the audit log go to a task elsewhere.
public final class LegionThread: @unchecked Sendable {
    // @unchecked: `inbox`/`stopping` are behind the mutex; the socket and the wake eventfd are kernel objects
    // safe to use from several threads.
    private let socket: LegionSocket
    private let wakeFD: Int32
    private let inbox = Mutex<(payloads: [[UInt8]], stopping: Bool)>(([], false))
    let realtimePriority: Int
    let lockMemory: Bool

    public struct Outcome: Sendable {
        /// What became of the realtime request (nil when none was made).
        public var realtimeNote: String?
    }

    init(socket: LegionSocket, realtimePriority: Int, lockMemory: Bool) {
        self.socket = socket
        self.realtimePriority = realtimePriority
        self.lockMemory = lockMemory
        wakeFD = crio_eventfd_wrapper()
    }

    deinit {
        if wakeFD >= 0 { Glibc.close(wakeFD) }
    }

    /// A cluster-relay payload to seal and send (from any thread).
    func relay(_ payload: [UInt8]) {
        inbox.withLock { $0.payloads.append(payload) }
        wake()
    }

    /// The loop resigns (if Lord), sends its last announces and returns.
    func requestShutdown() {
        inbox.withLock { $0.stopping = true }
        wake()
    }

    private func wake() {
        _ = crio_eventfd_signal(wakeFD)
    }

    /// Runs `loop` on a new thread until `requestShutdown()`; returns after its shutdown directives are applied.
    func run(_ loop: ProtocolLoop) async -> Outcome {
        await withCheckedContinuation { (continuation: CheckedContinuation<Outcome, Never>) in
            let thread = Thread { [self] in
                ThreadName.set("legion-protocol")
                let note = self.becomeRealtime()
                var loop = loop
                self.serve(&loop)
                loop.shutdown()
                continuation.resume(returning: Outcome(realtimeNote: note))
            }
            thread.stackSize = 1 << 20
            thread.start()
        }
    }

    /// SCHED_RR for this thread and locked memory for the process, when configured and permitted.
    private func becomeRealtime() -> String? {
        guard realtimePriority > 0 else { return nil }
        var notes: [String] = []
        var param = sched_param()
        param.sched_priority = Int32(realtimePriority)
        let rc = pthread_setschedparam(pthread_self(), Int32(SCHED_RR), &param)
        if rc == 0 {
            notes.append("Legion protocol thread runs with realtime priority \(realtimePriority) (SCHED_RR)")
        } else {
            notes.append("realtime scheduling not permitted (\(String(cString: strerror(rc)))): the Legion protocol thread runs at normal priority; run as root or grant CAP_SYS_NICE to keep lordship under CPU starvation")
        }
        if lockMemory {
            let mclOnFault: Int32 = 4   // MCL_ONFAULT (Linux ≥ 4.4): lock pages as they are touched, not whole reservations
            if mlockall(Int32(MCL_CURRENT) | Int32(MCL_FUTURE) | mclOnFault) == 0 {
                notes.append("memory locked (mlockall)")
            } else {
                notes.append("memory not locked (\(String(cString: strerror(errno))))")
            }
        }
        return notes.joined(separator: "; ")
    }

    /// The loop: poll until the next deadline, a datagram or a wake-up; handle what came; repeat.
    private func serve(_ loop: inout ProtocolLoop) {
        var buffer = [UInt8](repeating: 0, count: 65_536)
        var fds = [pollfd(fd: socket.fd, events: Int16(POLLIN), revents: 0), pollfd(fd: wakeFD, events: Int16(POLLIN), revents: 0)]
        var deadline: UInt64 = 0   // the first pass ticks at once
        while true {
            let now = SystemClock.monotonicNanos()
            if now >= deadline {
                loop.handle(.tick)
                loop.publish()
                deadline = loop.machine.nextWakeup(after: SystemClock.now())
                continue
            }
            // At most a second asleep: a safety net, not a schedule.
            let timeoutMs = Int32(min((deadline - now + 999_999) / 1_000_000, 1000))
            fds[0].revents = 0
            fds[1].revents = 0
            let ready = poll(&fds, 2, timeoutMs)
            if ready < 0, errno != EINTR { usleep(1000) }
            var handled = false
            if fds[0].revents & Int16(POLLIN) != 0 {
                handled = true
                // Everything queued, then one pass over the deadlines.
                for _ in 0..<256 {
                    let n = buffer.withUnsafeMutableBytes { socket.receive(into: $0) }
                    guard n >= 0 else { break }
                    loop.handle(.datagram(Array(buffer[0..<n])))
                }
            }
            if fds[1].revents & Int16(POLLIN) != 0 {
                handled = true
                crio_eventfd_drain(wakeFD)
                let (payloads, stopping) = inbox.withLock { state -> ([[UInt8]], Bool) in
                    defer { state.payloads.removeAll() }
                    return (state.payloads, state.stopping)
                }
                for payload in payloads { loop.handle(.relay(payload)) }
                if stopping { return }
            }
            // An input may bring the next deadline forward (never back: a due tick must come, not be postponed by
            // a recomputation that always says "in a millisecond").
            if handled {
                loop.publish()
                deadline = min(deadline, loop.machine.nextWakeup(after: SystemClock.now()))
            }
        }
    }
}

/// A non-blocking, close-on-exec eventfd (CRouterIO's).
private func crio_eventfd_wrapper() -> Int32 {
    crio_eventfd()
}

/// The node's Legion UDP socket: non-blocking, bound to `[legion] bind`, sending each datagram to every peer.
public final class LegionSocket: @unchecked Sendable {
    // @unchecked: the fd is only closed once, after the protocol thread returned.
    let fd: Int32
    private let peers: [SocketAddress]

    public struct Failure: Error, CustomStringConvertible {
        public var description: String
    }

    init(bind: NodeConfig.Endpoint, peers endpoints: [NodeConfig.Endpoint]) throws(Failure) {
        var resolved: [SocketAddress] = []
        for node in endpoints {
            do {
                resolved.append(try SocketAddress.makeAddressResolvingHost(node.host, port: node.port))
            } catch {
                throw Failure(description: "cannot resolve the peer \(node): \(error)")
            }
        }
        peers = resolved
        let local: SocketAddress
        do {
            local = try SocketAddress.makeAddressResolvingHost(bind.host, port: bind.port)
        } catch {
            throw Failure(description: "cannot resolve \(bind): \(error)")
        }
        let family = local.protocol == .inet6 ? AF_INET6 : AF_INET
        let fd = Glibc.socket(family, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw Failure(description: "cannot open a UDP socket: \(String(cString: strerror(errno)))") }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var size: Int32 = 1 << 20   // absorb bursts of junk without losing announces
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
        let rc = local.withSockAddr { address, length in Glibc.bind(fd, address, socklen_t(length)) }
        guard rc == 0 else {
            let reason = String(cString: strerror(errno))
            Glibc.close(fd)
            throw Failure(description: "cannot bind UDP \(bind): \(reason) — is another node using this port?")
        }
        self.fd = fd
    }

    /// One datagram into `buffer`: its length, or -1 when none is queued.
    func receive(into buffer: UnsafeMutableRawBufferPointer) -> Int {
        let n = recv(fd, buffer.baseAddress, buffer.count, Int32(MSG_DONTWAIT))
        return n >= 0 ? n : -1
    }

    /// Sends `bytes` to every peer without waiting; returns how many sends the kernel took.
    func sendToPeers(_ bytes: [UInt8]) -> Int {
        var sent = 0
        bytes.withUnsafeBytes { raw in
            for peer in peers {
                let rc = peer.withSockAddr { address, length in
                    sendto(fd, raw.baseAddress, raw.count, Int32(MSG_DONTWAIT), address, socklen_t(length))
                }
                if rc >= 0 { sent += 1 }
            }
        }
        return sent
    }

    func close() {
        Glibc.close(fd)
    }
}
