import Logging
import Subscriptions
import Testing
@testable import Node

@Suite struct ClusterRelayTests {
    func relay(_ name: String, via internalRouter: String) -> (ClusterRelay, SubscriptionStore) {
        let store = SubscriptionStore(policy: .init(), algorithm: .weightedRoundRobin, verifier: nil)
        let local = SubscriptionStore(policy: .init(), algorithm: .weightedRoundRobin, verifier: nil)
        return (ClusterRelay(origin: name, internalAddress: internalRouter, store: store, localStore: local, logger: Logger(label: "test")), store)
    }

    @Test func aMemberThatLeavesTakesItsClusterBackendsAndItsAnnouncedServicesAlong() async {
        let (a, _) = relay("a", via: "10.0.0.1:7000")
        let (b, table) = relay("b", via: "10.0.0.2:7000")
        a.relay(SubscriptionPacket(command: .subscribe, key: "shop.test", address: "127.0.0.1:9090"), nowMs: SystemClock.wallMillis())
        a.announce(SubscriptionPacket(command: .subscribe, key: "api.test", address: "http://10.0.0.1:8080"), nowMs: SystemClock.wallMillis())
        var outbox = a.outbox.makeAsyncIterator()
        for _ in 0..<2 {
            guard let payload = await outbox.next() else { Issue.record("a relay payload was expected"); return }
            b.received(payload, nowMs: SystemClock.wallMillis())
        }
        let before = Set(table.snapshot.nodes.map { "\($0.keyString) \($0.addressString)" })
        #expect(before == ["shop.test 10.0.0.1:7000", "api.test http://10.0.0.1:8080"], "the vassal through a's internal router, the API as announced")
        b.memberLeft("a")
        #expect(table.snapshot.nodes.isEmpty, "both go with the member (its unsubscribes may never come: it left first)")
        b.memberLeft("a")   // twice: nothing left to do, no crash
        b.memberLeft("nobody")
    }
}
