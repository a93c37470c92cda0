import Foundation
import Metrics
import Logging
import Synchronization

/// Batches concurrent writes into one store transaction (group commit).
///
/// Writers call `write`; while a batch is in flight, new writes queue and go together in the next one
/// (`StoreClient.writeBatch`: one Raft commit, a savepoint and an outcome per write). An uncontended write
/// goes alone at once, so batching adds no latency; under load the commit cost is shared by up to `maxBatch`
/// writes. The writer owns its own client (one connection), so it never competes with readers for it.
public final class GroupCommitWriter: Sendable {
    public let maxBatch: Int
    private let client: StoreClient
    private let state = Mutex(State())

    private struct Pending: Sendable {
        var write: StoreClient.BatchWrite
        var continuation: CheckedContinuation<Result<StoreClient.WriteReceipt, StoreError>, Never>
    }

    private struct State: Sendable {
        var queue: [Pending] = []
        var draining = false
        var batches = 0
        var writes = 0
        var largestBatch = 0
    }

    public init(client: StoreClient, maxBatch: Int = 128) {
        precondition(maxBatch >= 1, "a batch holds at least one write")
        self.client = client
        self.maxBatch = maxBatch
    }

    /// Applies `statements` at most once per `requestID`, batched with whatever else is being written.
    public func write(requestID: String = UUID().uuidString, _ statements: [StoreClient.Statement]) async throws(StoreError) -> StoreClient.WriteReceipt {
        try StoreClient.validate(requestID: requestID)
        let outcome = await withCheckedContinuation { (continuation: CheckedContinuation<Result<StoreClient.WriteReceipt, StoreError>, Never>) in
            let startDrain = state.withLock { state -> Bool in
                state.queue.append(Pending(write: .init(requestID: requestID, statements: statements), continuation: continuation))
                if state.draining { return false }
                state.draining = true
                return true
            }
            if startDrain {
                Task { await self.drain() }
            }
        }
        return try outcome.get()
    }

    /// Batches committed, writes applied, largest batch (for `/status` and the benchmark).
    public var counters: (batches: Int, writes: Int, largestBatch: Int) {
        state.withLock { ($0.batches, $0.writes, $0.largestBatch) }
    }

    /// The Prometheus histogram of one batch's commit (all its writes, one Raft round when nothing fails).
    public static let commitLatency = "legion_store_commit_seconds"

    private func drain() async {
        while true {
            let batch: [Pending] = state.withLock { state in
                let taken = Array(state.queue.prefix(maxBatch))
                state.queue.removeFirst(taken.count)
                if taken.isEmpty { state.draining = false }
                return taken
            }
            if batch.isEmpty { return }
            let started = ContinuousClock.now
            let outcomes = await client.writeBatch(batch.map(\.write))
            Metrics.Timer(label: Self.commitLatency).record(duration: ContinuousClock.now - started)
            state.withLock { state in
                state.batches += 1
                state.writes += batch.count
                state.largestBatch = max(state.largestBatch, batch.count)
            }
            precondition(outcomes.count == batch.count, "every write of a batch gets exactly one outcome")
            for (pending, outcome) in zip(batch, outcomes) { pending.continuation.resume(returning: outcome) }
        }
    }

    /// Batches retried because a writer elsewhere held the store's lock.
    public func busyRetries() async -> Int { await client.busyRetries }

    public func close() async { await client.close() }
}

/// A few store clients shared by concurrent readers: each request borrows one (one request in flight per
/// connection), waiting when all are busy.
public final class StoreClientPool: Sendable {
    private let clients: [StoreClient]
    private let state: Mutex<(free: [Int], waiters: [CheckedContinuation<Int, Never>])>

    public init(options: StoreClient.Options, size: Int = 8) {
        precondition(size >= 1, "a pool holds at least one client")
        clients = (0..<size).map { _ in StoreClient(options: options) }
        state = Mutex((Array(0..<size), []))
    }

    public func with<T: Sendable>(_ body: (StoreClient) async throws(StoreError) -> T) async throws(StoreError) -> T {
        let index = await acquire()
        defer { release(index) }
        return try await body(clients[index])
    }

    public func query(_ sql: String, _ parameters: [DqliteValue] = []) async throws(StoreError) -> DqliteRows {
        try await with { client throws(StoreError) in try await client.query(sql, parameters) }
    }

    private func acquire() async -> Int {
        if let index = state.withLock({ $0.free.popLast() }) { return index }
        return await withCheckedContinuation { continuation in
            let ready: Int? = state.withLock { state in
                if let index = state.free.popLast() { return index }
                state.waiters.append(continuation)
                return nil
            }
            if let ready { continuation.resume(returning: ready) }
        }
    }

    private func release(_ index: Int) {
        let waiter: CheckedContinuation<Int, Never>? = state.withLock { state in
            if state.waiters.isEmpty {
                state.free.append(index)
                return nil
            }
            return state.waiters.removeFirst()
        }
        waiter?.resume(returning: index)
    }

    public func close() async {
        for client in clients { await client.close() }
    }
}
