import Metrics
import Synchronization

/// The node's own measurements, emitted through swift-metrics (the node bootstraps the Prometheus factory;
/// without it — unit tests, other embedders — they are no-ops). Names are Prometheus names; each histogram's
/// buckets are set where the factory is made (`NodeMetricsExporter`).
public enum NodeMetrics {
    /// New Lord: time since the previous Lord was last heard (what clients of the VIP went without a Lord).
    public static let failoverGap = "legion_failover_gap_seconds"
    /// New Lord: time since this node noticed the Lord was gone (the election itself).
    public static let lordElection = "legion_lord_election_seconds"
    /// Lease left when the Lord renewed it: how close it came to lapsing.
    public static let leaseMargin = "legion_lease_margin_seconds"
    /// Router: request start to response end, per domain (a bounded label set).
    public static let routerLatency = "legion_router_request_duration_seconds"
    public static let emperorRespawns = "legion_emperor_respawns_total"
    public static let emperorThrottled = "legion_emperor_throttled_total"
    public static let containerOOMKills = "legion_container_oom_kills_total"
    /// Stalls of the task pool or a shared event loop reported by the watchdog, by `executor`.
    public static let executorStalls = "legion_executor_stalls_total"

    /// The first 50 domains seen get their own label; the rest share "other" (Prometheus series stay bounded
    /// whatever customers subscribe).
    public static let domainLabels = BoundedLabels(limit: 50)

    public static func recordRouterLatency(domain: String?, nanoseconds: [Int64]) {
        guard !nanoseconds.isEmpty else { return }
        let timer = Timer(label: routerLatency, dimensions: [("domain", domainLabels.label(for: domain ?? "-"))])
        for value in nanoseconds { timer.recordNanoseconds(value) }
    }
}

/// At most `limit` distinct label values; later ones map to "other".
public final class BoundedLabels: Sendable {
    private let seen = Mutex<Set<String>>([])
    public let limit: Int

    public init(limit: Int) {
        precondition(limit > 0, "a label set holds at least one value")
        self.limit = limit
    }

    public func label(for value: String) -> String {
        seen.withLock { set in
            if set.contains(value) { return value }
            if set.count < limit {
                set.insert(value)
                return value
            }
            return "other"
        }
    }
}
