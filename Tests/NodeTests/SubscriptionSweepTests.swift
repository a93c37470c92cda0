import Subscriptions
import Synchronization
import Testing
@testable import Node

/// The expiry sweeper sleeps until the next expiry instead of sweeping on a schedule, and a change that brings an
/// expiry earlier (a new node in an empty table, a drain) wakes it.
@Suite struct SubscriptionSweepTests {
    func store(toleranceMs: UInt64, drainMs: UInt64 = 0) -> SubscriptionStore {
        var policy = SubscriptionTable.Policy()
        policy.toleranceMs = toleranceMs
        policy.drainLastMs = drainMs
        return SubscriptionStore(policy: policy, algorithm: .weightedRoundRobin, verifier: nil)
    }

    /// Runs the sweeper, counting its rounds and recording what it removed and when.
    final class Recorder: Sendable {
        let removed = Mutex<[(String, UInt64)]>([])
        let rounds = Atomic<Int>(0)
    }

    func sweep(_ s: SubscriptionStore, into recorder: Recorder) -> Task<Void, Never> {
        Task {
            await s.sweepExpired(clock: {
                recorder.rounds.add(1, ordering: .relaxed)
                return SystemClock.wallMillis()
            }) { gone in
                let now = SystemClock.wallMillis()
                recorder.removed.withLock { $0 += gone.map { ($0.keyString, now) } }
            }
        }
    }

    func waitFor(_ what: () -> Bool, ms: Int = 3000) async -> Bool {
        for _ in 0..<(ms / 10) {
            if what() { return true }
            try? await Task.sleep(for: .milliseconds(10))
        }
        return what()
    }

    @Test func aNewNodeInAnIdleTableExpiresOnTimeWithoutPolling() async {
        let s = store(toleranceMs: 300)
        let recorder = Recorder()
        let task = sweep(s, into: recorder)
        defer { task.cancel() }
        #expect(await waitFor { recorder.rounds.load(ordering: .relaxed) >= 1 })
        try? await Task.sleep(for: .milliseconds(300))
        #expect(recorder.rounds.load(ordering: .relaxed) == 1, "an empty table: the sweeper sleeps (its longest wait is a minute)")
        let subscribed = SystemClock.wallMillis()
        _ = s.applyTrusted(SubscriptionPacket(command: .subscribe, key: "k", address: "127.0.0.1:1"), nowMs: subscribed)
        #expect(await waitFor { !recorder.removed.withLock { $0.isEmpty } })
        let removed = recorder.removed.withLock { $0 }
        #expect(removed.map(\.0) == ["k"])
        if let at = removed.first?.1 {
            #expect(at > subscribed + 300, "never before its tolerance ran out")
            #expect(at < subscribed + 300 + 1000, "and promptly after it (woken by the new node, not a minute later)")
        }
        #expect(recorder.rounds.load(ordering: .relaxed) <= 4, "a handful of rounds, not one per second or per millisecond")
        #expect(s.snapshot.nodes.isEmpty)
    }

    @Test func aDrainWakesTheSweeperBeforeTheToleranceOfOtherNodes() async {
        let s = store(toleranceMs: 60_000, drainMs: 200)
        let recorder = Recorder()
        let now = SystemClock.wallMillis()
        _ = s.applyTrusted(SubscriptionPacket(command: .subscribe, key: "a", address: "127.0.0.1:1"), nowMs: now)
        _ = s.applyTrusted(SubscriptionPacket(command: .subscribe, key: "b", address: "127.0.0.1:2"), nowMs: now)
        let task = sweep(s, into: recorder)
        defer { task.cancel() }
        #expect(await waitFor { recorder.rounds.load(ordering: .relaxed) >= 1 })
        let unsubscribed = SystemClock.wallMillis()
        _ = s.applyTrusted(SubscriptionPacket(command: .unsubscribe, key: "b", address: "127.0.0.1:2"), nowMs: unsubscribed)
        #expect(await waitFor { !recorder.removed.withLock { $0.isEmpty } })
        let removed = recorder.removed.withLock { $0 }
        #expect(removed.map(\.0) == ["b"], "b after its drain; a keeps its minute")
        if let at = removed.first?.1 { #expect(at > unsubscribed + 200) }
        #expect(s.snapshot.nodes.map(\.keyString) == ["a"])
    }

    @Test func oneSweeperPerStore() async {
        let s = store(toleranceMs: 60_000)
        let first = Task { await s.sweepExpired(clock: { SystemClock.wallMillis() }) { _ in } }
        defer { first.cancel() }
        try? await Task.sleep(for: .milliseconds(50))
        // The second (the unix socket's server shares the store) returns at once instead of sweeping too.
        let second = Task { await s.sweepExpired(clock: { SystemClock.wallMillis() }) { _ in } }
        let returned = await withTaskGroup(of: Bool.self) { group in
            group.addTask { await second.value; return true }
            group.addTask { try? await Task.sleep(for: .seconds(2)); return false }
            let r = await group.next() ?? false
            group.cancelAll()
            return r
        }
        #expect(returned)
    }
}
