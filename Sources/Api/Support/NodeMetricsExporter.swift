import CoreMetrics
import Node
import Prometheus
import Store
import Synchronization

/// The node's `/metrics`: one swift-prometheus registry, which is also the swift-metrics backend of the whole
/// process (histograms and counters that subsystems emit — `NodeMetrics`, the store's commit timer) and, at each
/// scrape, takes the node's state snapshot (Legion, router table, API writer) as gauges and counters.
///
/// Snapshot totals (packets, requests per domain…) are kept in the registry's counters by adding what grew since
/// the last scrape; a label value that disappeared (a domain no longer subscribed) is unregistered.
public final class NodeMetricsExporter: Sendable {
    /// The process's exporter; creating it bootstraps swift-metrics with its registry (once per process).
    public static let shared = NodeMetricsExporter()

    public let registry: PrometheusCollectorRegistry
    private let totals = Mutex<[String: Int64]>([:])
    private let labeledGauges = Mutex<[String: [String: Prometheus.Gauge]]>([:])

    static let durationBuckets: [String: [Duration]] = [
        NodeMetrics.failoverGap: seconds([0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 30]),
        NodeMetrics.lordElection: seconds([0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 30]),
        NodeMetrics.leaseMargin: seconds([0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1, 2]),
        NodeMetrics.routerLatency: seconds([0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]),
        GroupCommitWriter.commitLatency: seconds([0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5]),
    ]

    static func seconds(_ values: [Double]) -> [Duration] { values.map { .nanoseconds(Int64($0 * 1e9)) } }

    private init() {
        registry = PrometheusCollectorRegistry()
        var factory = PrometheusMetricsFactory(registry: registry)
        factory.durationHistogramBuckets = Self.durationBuckets
        MetricsSystem.bootstrap(factory)
        // Present from the first scrape (zero until something happens), so dashboards and alerts see them.
        for name in [NodeMetrics.emperorRespawns, NodeMetrics.emperorThrottled, NodeMetrics.containerOOMKills] {
            _ = registry.makeCounter(descriptor: MetricNameDescriptor(metricName: name, unitName: "", helpText: ""))
        }
        for name in [NodeMetrics.failoverGap, NodeMetrics.lordElection, NodeMetrics.leaseMargin, GroupCommitWriter.commitLatency] {
            _ = registry.makeDurationHistogram(descriptor: MetricNameDescriptor(metricName: name, unitName: "", helpText: ""), buckets: Self.durationBuckets[name] ?? [])
        }
    }

    func gauge(_ name: String, _ help: String, _ value: Double) {
        registry.makeGauge(descriptor: MetricNameDescriptor(metricName: name, unitName: "", helpText: help)).set(value)
    }

    /// A labeled gauge family replaced as a whole: values not in `values` are unregistered.
    func gauges(_ name: String, _ help: String, label: String, _ values: [(String, Double)]) {
        labeledGauges.withLock { families in
            var family = families[name] ?? [:]
            var next: [String: Prometheus.Gauge] = [:]
            for (value, number) in values {
                let gauge = family[value] ?? registry.makeGauge(descriptor: MetricNameDescriptor(metricName: name, unitName: "", helpText: help), labels: [(label, value)])
                gauge.set(number)
                next[value] = gauge
                family[value] = nil
            }
            for stale in family.values { registry.unregisterGauge(stale) }
            families[name] = next
        }
    }

    /// Brings a counter up to `total` (a snapshot total that only grows while the process lives).
    func counter(_ name: String, _ help: String, labels: [(String, String)] = [], total: Int) {
        let key = name + labels.map { "|\($0.0)=\($0.1)" }.joined()
        let grew = totals.withLock { totals -> Int64 in
            let last = totals[key] ?? 0
            totals[key] = max(last, Int64(total))
            return Int64(total) - last
        }
        let counter = registry.makeCounter(descriptor: MetricNameDescriptor(metricName: name, unitName: "", helpText: help), labels: labels)
        if grew > 0 { counter.increment(by: grew) }
    }

    /// The exposition text after taking this node's snapshot.
    public func render(state: NodeState, subscriptions: SubscriptionStore?, writer: GroupCommitWriter?) async -> [UInt8] {
        let s = state.snapshot
        gauge("legion_is_lord", "1 while this node is Lord", (s.legion?.isLord ?? false) ? 1 : 0)
        gauge("legion_members", "live members seen (excluding self)", Double(s.legion?.members.count ?? 0))
        gauge("legion_clock_skew_max_ms", "largest clock skew seen with a member", Double(s.maxClockSkewMs))
        gauge("legion_lease_remaining_ms", "lease left (Lord, native mode)", Double(s.legion?.leaseRemainingMs ?? 0))
        gauge("legion_vip_held", "1 while this node holds the failover IP", s.vipPhase == "held" ? 1 : 0)
        counter("legion_lord_changes_total", "times this node became Lord", total: s.lordChanges)
        counter("legion_packets_received_total", "Legion datagrams received", total: s.packetsIn)
        counter("legion_packets_sent_total", "Legion datagrams sent", total: s.packetsOut)
        for (reason, count) in s.drops {
            counter("legion_packets_dropped_total", "Legion datagrams dropped, by reason", labels: [("reason", reason)], total: count)
        }
        if let store = s.store {
            gauge("legion_store_applied_seq", "the store's change-log sequence this node has applied", Double(store.appliedSeq))
            gauge("legion_store_is_leader", "1 while this node's dqlite is the Raft leader", store.isLeader ? 1 : 0)
        }
        if let hosting = s.hosting {
            gauge("legion_hosting_containers", "containers placed on this node", Double(hosting.containers))
            gauge("legion_hosting_sub_emperors", "containers whose sub-Emperor runs", Double(hosting.subEmperors))
        }
        if let subscriptions {
            let (nodes, stats) = subscriptions.snapshot
            var backends: [String: Int] = [:]
            for node in nodes { backends[NodeMetrics.domainLabels.label(for: node.keyString), default: 0] += 1 }
            gauges("legion_router_backends", "subscribed backends per domain", label: "domain", backends.map { ($0.key, Double($0.value)) })
            // Per-domain totals, bounded like the latency histograms (the rest add up under "other").
            var hits: [String: Int] = [:], bytes: [String: Int] = [:]
            for (domain, count) in stats.hits { hits[NodeMetrics.domainLabels.label(for: domain), default: 0] += count }
            for (domain, count) in stats.bytes { bytes[NodeMetrics.domainLabels.label(for: domain), default: 0] += count }
            for (domain, count) in hits {
                counter("legion_router_requests_total", "requests finished per domain (\"-\": routed to no domain, e.g. 404)",
                        labels: [("domain", domain)], total: count)
            }
            for (domain, count) in bytes {
                counter("legion_router_response_bytes_total", "response bytes sent per domain", labels: [("domain", domain)], total: count)
            }
            counter("legion_router_handoffs_total", "connections the fast path handed to the general router", total: stats.handOffs)
            counter("legion_subscriptions_accepted_total", "subscription packets applied", total: stats.accepted)
            for (reason, count) in stats.rejected {
                counter("legion_subscriptions_rejected_total", "subscription packets refused, by reason", labels: [("reason", reason)], total: count)
            }
        }
        if let writer {
            let counters = writer.counters
            counter("legion_api_writes_total", "API writes committed through group commit", total: counters.writes)
            counter("legion_api_write_batches_total", "store transactions those writes took", total: counters.batches)
            gauge("legion_api_write_batch_max", "largest batch so far", Double(counters.largestBatch))
            counter("legion_api_write_busy_retries_total", "batches retried because another node's writer held the store lock",
                    total: await writer.busyRetries())
        }
        return registry.emitToBuffer()
    }
}
