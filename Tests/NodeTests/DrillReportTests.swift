import Testing
@testable import Node

@Suite struct DrillReportTests {
    func base() -> DrillObservations {
        var o = DrillObservations(scenario: "lord-pause", nodes: ["n1", "n2", "n3"], oldLord: "n1", target: "n1",
                                  faultStartMs: 10_000, faultEndMs: 13_000, endMs: 17_000)
        o.targetStoppedMs = 10_000
        return o
    }

    @Test func gapNewLordAndVIPMoveFromTheSamples() {
        var o = base()
        o.probes = [
            .init(tMs: 9_990, ok: true, servedBy: "n1"), .init(tMs: 10_100, ok: false, servedBy: nil, error: "connect: Connection refused"),
            .init(tMs: 10_300, ok: false, servedBy: nil), .init(tMs: 10_420, ok: true, servedBy: "n2"),
            .init(tMs: 10_430, ok: true, servedBy: "n2"),
        ]
        o.holders = [.init(tMs: 9_995, holders: ["n1"]), .init(tMs: 10_200, holders: []), .init(tMs: 10_310, holders: ["n2"])]
        o.audit = [.init(tMs: 10_250, node: "n2", event: "member_left", member: "n1"), .init(tMs: 10_280, node: "n2", event: "lord", leaseMs: 200)]
        let r = DrillReport(o)
        #expect(r.gapMs == 430)
        #expect(r.failedRequests == 2)
        #expect(r.failures.map(\.atMs) == [100, 300] && r.failures.map(\.error) == ["connect: Connection refused", "no answer"])
        #expect(r.summary.contains("first: connect: Connection refused at +100 ms"))
        #expect(r.newLordMs == 420 && r.newLord == "n2")
        #expect(r.vipMoveMs == 310)
        #expect(r.detectMs == 250)
        #expect(r.maxVIPHolders == 1)
    }

    @Test func twoHoldersAndTwoLordsAreCounted() {
        var o = base()
        o.holders = [.init(tMs: 10_500, holders: ["n1", "n2"])]
        o.arp = [.init(tMs: 10_500, macs: 2)]
        // n1 was Lord before the pause and logged unlord only after it resumed: frozen, it claims nothing.
        o.audit = [
            .init(tMs: 5_000, node: "n1", event: "lord", leaseMs: 200), .init(tMs: 13_100, node: "n1", event: "unlord"),
            .init(tMs: 10_250, node: "n2", event: "lord", leaseMs: 200),
        ]
        var r = DrillReport(o)
        #expect(r.maxVIPHolders == 2 && r.maxARPHolders == 2)
        #expect(r.maxAuditLords == 1)
        #expect(r.json.serialized.contains("\"max_vip_holders\":2"))
        // Two running nodes that both say Lord: counted.
        o.audit.append(.init(tMs: 11_000, node: "n3", event: "lord", leaseMs: 200))
        r = DrillReport(o)
        #expect(r.maxAuditLords == 2)
        #expect(r.timelineHTML.contains("<svg") && r.summary.contains("lord-pause"))
    }
}
