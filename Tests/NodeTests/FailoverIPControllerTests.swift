import Foundation
import Logging
import Synchronization
import Testing
@testable import Node

/// The controller's self-fence, with a recording driver: renewed leases keep the IP, a lease left to run out (the
/// protocol loop stalled) loses it on time, on the controller's own clock.
@Suite struct FailoverIPControllerTests {
    final class RecordingDriver: FailoverIPDriver {
        let name = "recording"
        let events = Mutex<[String]>([])
        func acquire() async throws { events.withLock { $0.append("acquire") } }
        func release() async throws { events.withLock { $0.append("release") } }
    }

    func waitFor(_ phase: FailoverIPController.Phase, on controller: FailoverIPController, within: Duration) async -> Bool {
        let end = ContinuousClock.now + within
        while ContinuousClock.now < end {
            if controller.phase == phase { return true }
            try? await Task.sleep(for: .milliseconds(2))
        }
        return controller.phase == phase
    }

    @Test func aRenewedLeaseKeepsTheIPAndAnExpiredOneReleasesItOnTime() async {
        let driver = RecordingDriver()
        let controller = FailoverIPController(driver: driver, httpHost: nil, httpPort: 0, logger: Logger(label: "test"),
                                              listener: { _, _ in throw FailoverIPError("no listener in this test") })
        #expect(controller.hasKernelFence, "the fence is a kernel timer, not a task waking at every deadline")
        let run = Task { await controller.run() }
        // Leases long enough for a loaded test machine to take the IP before they end.
        controller.want(held: true, fenceUntil: SystemClock.monotonicNanos() + 5_000_000_000)
        #expect(await waitFor(.held, on: controller, within: .seconds(5)))
        // Renewed every 50 ms, each renewal moving the deadline: held throughout.
        for _ in 0..<10 {
            controller.renew(fenceUntil: SystemClock.monotonicNanos() + 2_000_000_000)
            try? await Task.sleep(for: .milliseconds(50))
            #expect(controller.phase == .held)
        }
        // No more renewals: released once the deadline passes, never before it.
        let deadline = SystemClock.monotonicNanos() + 300_000_000
        controller.renew(fenceUntil: deadline)
        #expect(await waitFor(.released, on: controller, within: .seconds(5)))
        let late = Int64(bitPattern: SystemClock.monotonicNanos()) - Int64(bitPattern: deadline)
        #expect(late >= 0, "released \(-late / 1_000_000) ms before the lease ended")
        #expect(late < 2_000_000_000, "released \(late / 1_000_000) ms after the deadline")
        #expect(driver.events.withLock { $0 } == ["acquire", "release"])
        await controller.stop()
        await run.value
    }
}
