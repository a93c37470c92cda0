import Foundation
import Testing
@testable import Node

@Suite struct MetricsTests {
    @Test func retentionTiersNestAndNeverOverlap() {
        let plan = MetricRetention(rawSeconds: 2 * 86400, fineSeconds: 30 * 86400, retentionSeconds: 400 * 86400)
        let now: Int64 = 1_796_000_123
        let steps = plan.steps(now: now)
        guard steps.count == 3, case .thin(let fineFrom, let fineTo, 300) = steps[0], case .thin(let coarseFrom, let coarseTo, 3600) = steps[1],
              case .dropBefore(let end) = steps[2] else {
            Issue.record("unexpected plan \(steps)")
            return
        }
        #expect(fineTo <= now - 2 * 86400 && fineTo > now - 2 * 86400 - 300, "raw samples of the last two days are untouched")
        #expect(coarseTo <= fineFrom, "the hourly tier ends where the 5-minute tier begins")
        #expect(fineFrom % 300 == 0 && fineTo % 300 == 0 && coarseFrom % 3600 == 0 && coarseTo % 3600 == 0, "edges on bucket boundaries")
        #expect(end == now - 400 * 86400)
    }

    @Test func theDatabaseStoresQueriesThinsAndDropsSamples() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("legion-metrics-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("metrics.sqlite").path
        let now: Int64 = 1_796_000_000 - 1_796_000_000 % 3600
        let plan = MetricRetention(rawSeconds: 3600, fineSeconds: 86400, retentionSeconds: 7 * 86400)
        do {
            let db = try MetricDatabase(path: path)
            var samples: [MetricDatabase.Sample] = []
            // One sample a minute for 3 days, for two series (a counter and another container's).
            for minute in 0..<(3 * 24 * 60) {
                let unix = now - Int64(minute) * 60
                samples.append(.init(series: "container.cpu/30001", unix: unix, value: unix * 10))
                samples.append(.init(series: "container.cpu/30002", unix: unix, value: 7))
            }
            samples.append(.init(series: "container.cpu/30001", unix: now - 8 * 86400, value: 1))  // past retention
            try db.insert(samples)
            #expect(db.count() == samples.count)
            let lastHour = try db.samples(series: "container.cpu/30001", from: now - 3599, to: now + 1)
            #expect(lastHour["container.cpu/30001"]?.count == 60)
            #expect(lastHour["container.cpu/30001"]?.last == [now, now * 10])
            #expect(try db.samples(series: "container.cpu/3000", prefix: true, from: now, to: now + 1).keys.sorted()
                    == ["container.cpu/30001", "container.cpu/30002"])
            #expect(try db.samples(series: "container.cpu/3000", from: now - 86400, to: now + 1).isEmpty, "exact names unless prefix")
            let removed = try db.applyRetention(plan, now: now)
            #expect(removed > 0)
            #expect(try db.applyRetention(plan, now: now) == 0, "thinning is idempotent")
            let all = try db.samples(series: "container.cpu/30001", from: 0, to: now + 1)["container.cpu/30001"] ?? []
            #expect(all.first?[0] ?? 0 >= now - 7 * 86400, "nothing older than the retention")
            let raw = all.filter { $0[0] > now - 3600 }
            #expect(raw.count == 60, "every sample of the raw hour kept")
            let fine = all.filter { $0[0] <= now - 3600 - 300 && $0[0] > now - 86400 + 300 }
            #expect(!fine.isEmpty && zip(fine, fine.dropFirst()).allSatisfy { $1[0] - $0[0] == 300 }, "one per 5 minutes in the fine tier")
            #expect(fine.allSatisfy { $0[1] == $0[0] * 10 }, "a bucket keeps a real sample (its last)")
            let coarse = all.filter { $0[0] < now - 86400 - 3600 }
            #expect(!coarse.isEmpty && zip(coarse, coarse.dropFirst()).allSatisfy { $1[0] - $0[0] == 3600 }, "one per hour beyond")
        }
        // Reopened (a node restart): the samples are still there.
        let reopened = try MetricDatabase(path: path)
        #expect(try reopened.samples(series: "container.cpu/30001", from: now, to: now + 1)["container.cpu/30001"] == [[now, now * 10]])
    }

    @Test func aMetricStoreThatCannotBeOpenedSaysWhere() {
        #expect(throws: MetricDatabase.Failure.self) { try MetricDatabase(path: "/proc/no-such-dir/metrics.sqlite") }
        do {
            _ = try MetricDatabase(path: "/proc/no-such-dir/metrics.sqlite")
        } catch {
            #expect(error.description.contains("/proc/no-such-dir/metrics.sqlite") && error.description.contains("writable"))
        }
    }

    @Test func cgroupAndProcParsers() {
        let memoryStat = "cache 4096\nrss 8192\ntotal_cache 40960\ntotal_rss 81920\nhierarchical_memory_limit 268435456\n"
        #expect(ContainerSampler.keyed(memoryStat)["total_rss"] == 81920)
        #expect(ContainerSampler.keyed("usage_usec 1234\nuser_usec 1000\n")["usage_usec"] == 1234)
        #expect(ContainerSampler.keyed("rchar: 10\nread_bytes: 4096\nwrite_bytes: 512\n")["write_bytes"] == 512)
        let blkio = "8:0 Read 1000\n8:0 Write 200\n8:0 Total 1200\n8:16 Read 5\n8:16 Write 7\nTotal 1212\n"
        #expect(ContainerSampler.blkioV1(blkio) == (1005, 207))
        #expect(ContainerSampler.ioStatV2("8:0 rbytes=100 wbytes=20 rios=1 wios=2\n259:0 rbytes=1 wbytes=2\n") == (101, 22))
        // A command with spaces and parentheses: fields are counted after the last ')'.
        let stat = "4242 (uwsgi (worker) 1) S 1 4242 4242 0 -1 4194560 100 0 0 0 37 11 0 0 20 0 1 0 100 1000000 200"
        #expect(ContainerSampler.cpuTicks(stat) == 48)
        #expect(ContainerSampler.cpuTicks("garbage") == nil)
        #expect(ContainerSampler.realUID("Name:\tuwsgi\nUid:\t30001\t30001\t30001\t30001\nGid:\t30001\n") == 30001)
    }

    @Test func aCgroupV1ContainerIsSampledFromItsFilesAndNothingIsMadeUp() throws {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("legion-cg-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: root) }
        func write(_ path: String, _ text: String) throws {
            try FileManager.default.createDirectory(atPath: (root + path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
            try text.write(toFile: root + path, atomically: true, encoding: .utf8)
        }
        try write("/cg/cpuacct/legion/node2/30001/cpuacct.usage", "123456789\n")
        try write("/cg/memory/legion/node2/30001/memory.usage_in_bytes", "1048576\n")
        try write("/cg/memory/legion/node2/30001/memory.stat", "total_rss 700000\ntotal_cache 300000\n")
        try write("/net/lv30001/statistics/rx_bytes", "111\n")
        try write("/net/lv30001/statistics/tx_bytes", "222\n")
        var sampler = ContainerSampler(source: .cgroup(node: "node2"))
        sampler.cgroupRoot = root + "/cg"
        sampler.netRoot = root + "/net"
        let sample = sampler.sample(uid: 30001, storageUsed: 4096)
        #expect(sample == ["cpu": 123456789, "mem": 1048576, "mem.rss": 700000, "mem.cache": 300000, "net.rx": 222, "net.tx": 111, "quota": 4096],
                "no blkio file: no io sample (absent, not zero)")
        #expect(sampler.sample(uid: 30002, storageUsed: nil).isEmpty, "an unknown container has no samples")
    }
}
