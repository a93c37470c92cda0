import Foundation
import Logging
import ServiceLifecycle

/// uwsgi.it's collector inside the node: every `interval` (default 60 s), one sample of each of this node's
/// containers (`ContainerSampler`) and of the router's per-domain counters (hits, response bytes) into the
/// node-local `MetricDatabase`; once an hour, the retention plan. Samples are stamped with wall-clock seconds on
/// interval boundaries, so two nodes' samples of the same minute line up.
public struct MetricsCollector: Service {
    public let database: MetricDatabase
    let sampler: ContainerSampler
    let feed: DesiredStateFeed
    let state: NodeState
    let subscriptions: SubscriptionStore?
    let intervalSeconds: Int64
    let retention: MetricRetention
    let logger: Logger

    public init(database: MetricDatabase, sampler: ContainerSampler, feed: DesiredStateFeed, state: NodeState, subscriptions: SubscriptionStore?,
                intervalSeconds: Int64, retention: MetricRetention, logger: Logger) {
        precondition(intervalSeconds >= 1, "the metrics interval is at least a second")
        self.database = database
        self.sampler = sampler
        self.feed = feed
        self.state = state
        self.subscriptions = subscriptions
        self.intervalSeconds = intervalSeconds
        self.retention = retention
        self.logger = logger
    }

    public func run() async throws {
        logger.info("metrics collector started", metadata: ["store": "\(database.path)", "interval_s": "\(intervalSeconds)",
                                                            "samples": "\(database.count())"])
        await cancelWhenGracefulShutdown {
            var lastRetention: Int64 = 0
            while !Task.isCancelled {
                let nowMs = Int64(SystemClock.wallMillis())
                let next = (nowMs / 1000 / intervalSeconds + 1) * intervalSeconds
                try? await Task.sleep(for: .milliseconds(max(1, next * 1000 - nowMs)))
                if Task.isCancelled { break }
                collect(at: next)
                if next - lastRetention >= 3600 {
                    lastRetention = next
                    do {
                        let removed = try database.applyRetention(retention, now: next)
                        if removed > 0 { logger.info("metric retention applied", metadata: ["removed": "\(removed)"]) }
                    } catch {
                        logger.warning("metric retention failed; samples kept", metadata: ["error": "\(error)"])
                    }
                }
            }
        }
    }

    /// One round of samples stamped `unix`; returns how many were stored.
    @discardableResult
    public func collect(at unix: Int64) -> Int {
        var samples: [MetricDatabase.Sample] = []
        let storage = state.snapshot.hosting?.storage ?? [:]
        for container in feed.current?.containers ?? [] {
            for (metric, value) in sampler.sample(uid: container.uid, storageUsed: storage[container.uid]?.used) {
                samples.append(.init(series: "container.\(metric)/\(container.uid)", unix: unix, value: value))
            }
        }
        if let subscriptions {
            let stats = subscriptions.snapshot.stats
            for (domain, hits) in stats.hits where domain != "-" {
                samples.append(.init(series: "domain.hits/\(domain.lowercased())", unix: unix, value: Int64(hits)))
                samples.append(.init(series: "domain.net.tx/\(domain.lowercased())", unix: unix, value: Int64(stats.bytes[domain] ?? 0)))
            }
        }
        do {
            try database.insert(samples)
        } catch {
            logger.warning("metric samples not stored", metadata: ["error": "\(error)", "samples": "\(samples.count)"])
            return 0
        }
        return samples.count
    }
}
