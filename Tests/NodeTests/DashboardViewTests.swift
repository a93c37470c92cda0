import Foundation
import Testing
@testable import Api
@testable import Node

@Suite struct DashboardViewTests {
    func report(_ name: String, lord: Bool, lordName: String?, phase: String, storeAddress: String, isLeader: Bool, running: [Int] = [],
                audit: String = "") throws -> DashboardView.NodeReport {
        let json = """
            {"status": {"name": "\(name)", "lord": \(lord), "valor": 100, "vip": "10.0.0.100:80", "vip_phase": "\(phase)",
                        "legion": {"lord_name": \(lordName.map { "\"\($0)\"" } ?? "null"), "lease_ms": 900, "quorum": 2, "votes": 3,
                                   "members": [{"name": "a"}, {"name": "b"}]},
                        "store": {"address": "\(storeAddress)", "is_leader": \(isLeader), "role": "voter", "applied_seq": 7, "reachable": true},
                        "hosting": {"containers": 1, "sub_emperors": 1, "applied_version": 7, "running": \(running),
                                    "storage": {"30001": {"used_bytes": 5, "total_bytes": 10}}}},
             "audit": [\(audit)],
             "domains": [{"domain": "example.com", "backends": ["127.0.0.1:9001"]}]}
            """
        return .init(node: name, report: try JSONDecoder().decode(JSONInput.self, from: Data(json.utf8)))
    }

    func field(_ value: JSONValue, _ key: String) -> String? {
        guard case .object(let pairs) = value, let v = pairs.first(where: { $0.0 == key })?.1 else { return nil }
        if case .string(let s) = v { return s }
        return v.serialized
    }

    @Test func theOperatorViewNamesTheLordTheVIPHolderAndTheStoreLeaderByNode() throws {
        let reports = [
            try report("n2", lord: false, lordName: "n1", phase: "released", storeAddress: "10.0.0.2:9000", isLeader: true, running: [30001],
                       audit: #"{"event": "lord", "time_ms": 2000, "node": "n2", "reason": "quorum_elected"}, {"event": "member_joined", "time_ms": 2500}"#),
            try report("n1", lord: true, lordName: "n1", phase: "held", storeAddress: "10.0.0.1:9000", isLeader: false,
                       audit: #"{"event": "unlord", "time_ms": 1000, "node": "n1", "reason": "quorum_lost"}"#),
            .init(node: "n3", report: nil, error: "n3 unreachable: connection refused"),
        ]
        let view = DashboardView.operatorView(legion: "prod", reports: reports, alarms: [], nowMs: 5)
        #expect(field(view, "lord") == "n1" && field(view, "vip_holder") == "n1" && field(view, "store_leader") == "n2")
        let text = view.serialized
        #expect(text.contains(#""name":"n3","reachable":false"#) && text.contains("connection refused"))
        #expect(text.contains(#""failovers":[{"at_ms":2000,"event":"lord","node":"n2","detail":"quorum_elected"},{"at_ms":1000,"event":"unlord""#),
                "newest first; member_joined is not failover history")
        #expect(text.contains(#""domains":[{"domain":"example.com","backends":["127.0.0.1:9001"]}]"#), "backends merged across nodes")
        #expect(DashboardView.containerState(uid: 30001, server: "n2", reports: reports) == "running")
        #expect(DashboardView.containerState(uid: 30001, server: "n1", reports: reports) == "stopped")
        #expect(DashboardView.containerState(uid: 30001, server: "n3", reports: reports) == "unknown")
        #expect(DashboardView.storageUsed(uid: 30001, server: "n2", reports: reports) == .int(5))
    }

    @Test func twoNodesClaimingLordshipAreBothShownNeverHidden() throws {
        let reports = [
            try report("n1", lord: true, lordName: "n1", phase: "held", storeAddress: "a", isLeader: false),
            try report("n2", lord: true, lordName: "n2", phase: "acquiring", storeAddress: "b", isLeader: false),
        ]
        #expect(field(DashboardView.operatorView(legion: "x", reports: reports, alarms: [], nowMs: 0), "lord") == "n1,n2")
        let none = [try report("n1", lord: false, lordName: nil, phase: "released", storeAddress: "a", isLeader: false)]
        #expect(field(DashboardView.operatorView(legion: "x", reports: none, alarms: [], nowMs: 0), "lord") == "null")
    }

    @Test func theEmbeddedAssetsAreThePageItsScriptAndStyle() {
        let names = DashboardAssets.all.map(\.name).sorted()
        #expect(names == ["app.css", "app.js", "index.html"])
        let page = DashboardAssets.all.first { $0.name == "index.html" }?.text ?? ""
        #expect(page.contains("/dashboard/app.js") && page.contains("/dashboard/app.css"))
        #expect(!page.contains("http://") && !page.contains("https://"), "no CDN: nothing loaded from elsewhere")
    }
}
