import Logging
import Synchronization

/// Owns the failover IP on this node.
///
/// The protocol loop states what it wants (`want(held:fenceUntil:)`, synchronous and therefore
/// strictly ordered); `run()` reconciles the real IP toward that wish without ever blocking the
/// protocol loop. It fences itself: if the lease deadline passes without a renewal (the protocol
/// loop stalled), it releases the IP on its own.
public final class FailoverIPController: Sendable {
    public enum Phase: String, Sendable { case released, acquiring, held, releasing }

    struct Shared {
        var wanted = false
        var fenceUntil: UInt64?
        var phase: Phase = .released
        var lastError: String?
        var stopping = false
        var fenced = false
    }

    let driver: FailoverIPDriver
    let httpHost: String?
    let httpPort: Int
    let listenerFactory: VIPListenerFactory
    let logger: Logger
    private let shared = Mutex(Shared())
    private let pokes: AsyncStream<Void>
    private let poke: AsyncStream<Void>.Continuation
    /// The self-fence: a kernel timer at the lease deadline, re-armed by every renewal (no wakeups while renewed).
    private let fence: FenceTimer?
    /// Wakes the fallback fence clock when a new lease deadline is set (only when `fence` is nil).
    private let fenceWake = WakeSignal()

    public init(driver: FailoverIPDriver, httpHost: String?, httpPort: Int, logger: Logger, listener: @escaping VIPListenerFactory) {
        self.driver = driver
        self.httpHost = httpHost
        self.httpPort = httpPort
        self.logger = logger
        self.listenerFactory = listener
        let (pokes, poke) = AsyncStream<Void>.makeStream(bufferingPolicy: .bufferingNewest(1))
        (self.pokes, self.poke) = (pokes, poke)
        fence = FenceTimer(name: "legion-fence") { poke.yield() }
    }

    deinit { fence?.stop() }

    public var phase: Phase { shared.withLock { $0.phase } }
    /// Whether the self-fence runs on a kernel timer (false only if the kernel gave none).
    var hasKernelFence: Bool { fence != nil }
    public var lastError: String? { shared.withLock { $0.lastError } }

    /// Records the wish and wakes the reconciler. `fenceUntil` is the lease end (monotonic ns).
    public func want(held: Bool, fenceUntil: UInt64?) {
        shared.withLock {
            $0.wanted = held
            $0.fenceUntil = held ? fenceUntil : nil
        }
        // The external fence learns the deadline before the IP is added, and is told "idle" only
        // after it is removed (in `run()`).
        if held { driver.leaseChanged(heldUntil: fenceUntil ?? .max) }  // compat: no lease, fence on death only
        if held, let fenceUntil { fence?.arm(at: fenceUntil) } else { fence?.disarm() }
        poke.yield()
        fenceWake.notify()
    }

    public func renew(fenceUntil: UInt64) {
        let held = shared.withLock { state -> Bool in
            if state.wanted { state.fenceUntil = fenceUntil }
            return state.wanted
        }
        if held {
            fence?.arm(at: fenceUntil)
            driver.leaseChanged(heldUntil: fenceUntil)
        }
    }

    private func stillWanted() -> Bool {
        shared.withLock { state in
            if state.wanted, let fence = state.fenceUntil, SystemClock.monotonicNanos() >= fence {
                state.wanted = false
                state.fenceUntil = nil
                state.fenced = true
                return false
            }
            return state.wanted
        }
    }

    /// Reconciles until `stop()`; releases the IP before returning.
    public func run() async {
        var server: VIPListener?
        var held = false
        // The self-fence: `fence` pokes the reconciler at the lease deadline, so a stalled protocol loop loses the
        // IP on time. Without a kernel timer, this task keeps the same clock (waking at every deadline).
        let fenceTicker = Task { [self] in
            while fence == nil, !Task.isCancelled {
                let until = shared.withLock { $0.wanted ? $0.fenceUntil : nil }
                let now = SystemClock.monotonicNanos()
                guard let until else {
                    await fenceWake.wait(timeout: .seconds(60))   // `want` wakes it with a lease
                    continue
                }
                if until <= now {
                    poke.yield()
                    await fenceWake.wait(timeout: .milliseconds(1))   // the reconciler takes it from here
                } else {
                    await fenceWake.wait(timeout: .nanoseconds(Int64(min(until - now, 1_000_000_000))))
                }
            }
        }
        defer { fenceTicker.cancel() }
        for await _ in pokes {
            let stopping = shared.withLock { $0.stopping }
            let wanted = !stopping && stillWanted()
            if wanted, !held {
                shared.withLock { $0.phase = .acquiring }
                let started = SystemClock.monotonicNanos()
                var attempt = 0
                while stillWanted(), !shared.withLock({ $0.stopping }) {
                    attempt += 1
                    do {
                        // The listener first (bound with IP_FREEBIND), then the IP: a client never finds the IP
                        // without a listener, which would answer its SYN with a reset instead of letting it retry.
                        if let host = httpHost, server == nil {
                            server = try await listenerFactory(host, httpPort)
                        }
                        try await driver.acquire()
                        held = true
                        shared.withLock { $0.phase = .held; $0.lastError = nil }
                        logger.notice("failover IP acquired", metadata: [
                            "driver": "\(driver.name)", "vip": "\(httpHost ?? "-"):\(httpPort)",
                            "ms": "\((SystemClock.monotonicNanos() - started) / 1_000_000)", "attempts": "\(attempt)",
                        ])
                        break
                    } catch {
                        shared.withLock { $0.lastError = "\(error)" }
                        if attempt == 1 || attempt % 100 == 0 {
                            logger.warning("cannot take the failover IP yet; retrying every 10 ms", metadata: ["error": "\(error)", "attempt": "\(attempt)"])
                        }
                        try? await Task.sleep(for: .milliseconds(10))
                    }
                }
            }
            if !stillWanted() || shared.withLock({ $0.stopping }), held || server != nil {
                if shared.withLock({ state in defer { state.fenced = false }; return state.fenced }) {
                    logger.critical("lease deadline passed without renewal; releasing the failover IP (fence)")
                }
                shared.withLock { $0.phase = .releasing }
                let started = SystemClock.monotonicNanos()
                // The IP first, then the listener: new clients' SYNs go unanswered (and are retransmitted to the next
                // Lord) instead of meeting a closed port, and requests in flight finish.
                do {
                    try await driver.release()
                } catch {
                    shared.withLock { $0.lastError = "\(error)" }
                    logger.error("failed to release the failover IP; remove it by hand if it is still present", metadata: ["error": "\(error)"])
                }
                if let s = server {
                    await s.stop()
                    server = nil
                }
                held = false
                driver.leaseChanged(heldUntil: nil)
                logger.notice("failover IP released", metadata: ["driver": "\(driver.name)", "ms": "\((SystemClock.monotonicNanos() - started) / 1_000_000)"])
            }
            if !held { shared.withLock { $0.phase = .released } }
            if shared.withLock({ $0.stopping }), !held { break }
        }
    }

    /// Releases the IP and ends `run()`; returns once the IP is released (or after the timeout).
    public func stop(timeoutMs: UInt64 = 3000) async {
        shared.withLock {
            $0.stopping = true
            $0.wanted = false
        }
        poke.yield()
        let deadline = SystemClock.monotonicNanos() + timeoutMs * 1_000_000
        while phase != .released, SystemClock.monotonicNanos() < deadline {
            try? await Task.sleep(for: .milliseconds(1))
        }
        poke.finish()
        fence?.stop()
        driver.close()
    }
}
