/// How long samples are kept and how finely: every sample for `rawSeconds` (default 2 days: uwsgi.it's one-day
/// view at full resolution, and yesterday's), then one per 5 minutes (uwsgi.it's own interval) until
/// `fineSeconds` (30 days), then one per hour until `retentionSeconds` (400 days), then nothing.
///
/// A thinned bucket keeps its last sample: for counters (cpu, bytes, hits) that is exact — a rate over a longer
/// interval; for gauges (memory, quota) it is a sample, not an average. Thinning is idempotent, so the plan can
/// run at any cadence. Pure: the database applies the steps.
public struct MetricRetention: Sendable, Equatable {
    public enum Step: Sendable, Equatable {
        /// Keep one sample per `bucket` seconds of each series in `[from, to)`.
        case thin(from: Int64, to: Int64, bucket: Int64)
        case dropBefore(Int64)
    }

    public var rawSeconds: Int64
    public var fineSeconds: Int64
    public var retentionSeconds: Int64
    public var fineBucket: Int64 = 300
    public var coarseBucket: Int64 = 3600

    public init(rawSeconds: Int64 = 2 * 86400, fineSeconds: Int64 = 30 * 86400, retentionSeconds: Int64 = 400 * 86400) {
        precondition(rawSeconds > 0 && rawSeconds <= fineSeconds && fineSeconds <= retentionSeconds,
                     "retention tiers must nest: raw ≤ fine ≤ total")
        self.rawSeconds = rawSeconds
        self.fineSeconds = fineSeconds
        self.retentionSeconds = retentionSeconds
    }

    public func steps(now: Int64) -> [Step] {
        var steps: [Step] = []
        let rawEdge = now - rawSeconds, fineEdge = now - fineSeconds, end = now - retentionSeconds
        // Bucket edges are aligned to the bucket size so a bucket is never split between two runs' ranges.
        let fineFrom = (fineEdge / fineBucket) * fineBucket, fineTo = (rawEdge / fineBucket) * fineBucket
        if fineFrom < fineTo { steps.append(.thin(from: fineFrom, to: fineTo, bucket: fineBucket)) }
        let coarseFrom = (end / coarseBucket) * coarseBucket, coarseTo = (fineEdge / coarseBucket) * coarseBucket
        if coarseFrom < coarseTo { steps.append(.thin(from: coarseFrom, to: coarseTo, bucket: coarseBucket)) }
        steps.append(.dropBefore(end))
        return steps
    }
}
