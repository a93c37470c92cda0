import CRouterIO
import Foundation
import Supervisor
import Synchronization

/// The failover IP's self-fence deadline as a kernel timer (a timerfd on CLOCK_MONOTONIC) that a thread of its own
/// waits on. Re-arming it — every lease renewal, from the protocol thread — is one syscall that wakes nobody, so a
/// Lord whose lease keeps being renewed costs no wakeups at all; only a deadline that really passes (a stalled
/// protocol loop) wakes the thread, which calls `fired`. A late renewal racing the expiry only makes `fired` run
/// for a deadline that has just moved: its receiver checks the deadline again.
final class FenceTimer: Sendable {
    private let fd: Int32
    private let stopped = Atomic<Bool>(false)
    private let finished = DispatchSemaphore(value: 0)

    /// Nil when the kernel gives no timer (descriptors exhausted); the caller then keeps its own clock.
    init?(name: String, fired: @escaping @Sendable () -> Void) {
        let fd = crio_timerfd()
        guard fd >= 0 else { return nil }
        self.fd = fd
        let thread = Thread { [self] in
            ThreadName.set(name)
            while crio_timerfd_wait(fd) >= 0, !stopped.load(ordering: .acquiring) { fired() }
            finished.signal()
        }
        thread.stackSize = 256 * 1024
        thread.start()
    }

    /// Expire at `deadline` (monotonic ns, `SystemClock.monotonicNanos()`); replaces any earlier deadline.
    func arm(at deadline: UInt64) {
        _ = crio_timerfd_arm(fd, max(deadline, 1))
    }

    func disarm() {
        _ = crio_timerfd_arm(fd, 0)
    }

    /// Ends the thread and closes the timer; later calls do nothing.
    func stop() {
        guard !stopped.exchange(true, ordering: .acquiringAndReleasing) else { return }
        _ = crio_timerfd_arm(fd, 1)   // already expired: the thread wakes and sees `stopped`
        finished.wait()
        close(fd)
    }
}
