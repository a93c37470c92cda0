import Store
import Synchronization

/// The desired state as a stream with many consumers: the store's change feed (or the local snapshot) publishes,
/// and the router's key verifier, the hosting reconciler, later the containers and the API caches each
/// subscribe. A new subscriber gets the current state at once; a slow one only ever sees the latest.
public final class DesiredStateFeed: Sendable {
    private struct State {
        var current: DesiredState?
        var subscribers: [Int: AsyncStream<DesiredState>.Continuation] = [:]
        var nextID = 0
    }

    private let state = Mutex(State())

    public init() {}

    /// The latest published state, if any.
    public var current: DesiredState? { state.withLock { $0.current } }

    public func publish(_ desired: DesiredState) {
        let subscribers = state.withLock { s -> [AsyncStream<DesiredState>.Continuation] in
            s.current = desired
            return Array(s.subscribers.values)
        }
        for continuation in subscribers { continuation.yield(desired) }
    }

    /// A stream of states, starting with the current one; it ends when the consumer stops iterating.
    public func subscribe() -> AsyncStream<DesiredState> {
        let (stream, continuation) = AsyncStream<DesiredState>.makeStream(bufferingPolicy: .bufferingNewest(1))
        let id = state.withLock { s -> Int in
            let id = s.nextID
            s.nextID += 1
            s.subscribers[id] = continuation
            if let current = s.current { continuation.yield(current) }
            return id
        }
        continuation.onTermination = { [weak self] _ in
            _ = self?.state.withLock { $0.subscribers.removeValue(forKey: id) }
        }
        return stream
    }

    /// Ends every subscriber's stream (node shutdown).
    public func finish() {
        let subscribers = state.withLock { s -> [AsyncStream<DesiredState>.Continuation] in
            defer { s.subscribers = [:] }
            return Array(s.subscribers.values)
        }
        for continuation in subscribers { continuation.finish() }
    }
}
