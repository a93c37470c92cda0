import Foundation
import TestSupport
import Testing
import UwsgiWire
@testable import Subscriptions

@Suite struct SubscriptionPacketTests {
    @Test func decodesAndReencodesEveryCapturedDatagram() throws {
        for name in try FixtureFile.names(in: "subscription") {
            let bytes = try FixtureFile("subscription/\(name)").bytes("datagram_hex")
            let packet = try SubscriptionPacket(decoding: bytes)
            #expect(packet.key.count > 0 && packet.address.count > 0)
            #expect(try packet.encode() == bytes, "\(name) re-encodes byte-exactly")
            #expect(packet.command == (name.contains("unsubscribe") ? .unsubscribe : .subscribe), "\(name)")
            #expect(packet.isSigned == (name.contains("signed_valid") || name.contains("wrong_key")), "\(name)")
        }
    }

    @Test func theSpecMinimalPacketDecodesWithDefaults() throws {
        let bytes = try #require(Hex.decode("e02b000003006b65790b006578616d706c652e636f6d0700616464726573730e003132372e302e302e313a33303331"))
        let p = try SubscriptionPacket(decoding: bytes)
        #expect(p.keyString == "example.com" && p.addressString == "127.0.0.1:3031" && p.weight == 0 && p.modifier1 == 0)
    }

    @Test func malformedPacketsAreRefusedWithReasons() throws {
        let good = try SubscriptionPacket(command: .subscribe, key: "example.com", address: "127.0.0.1:3031").encode()
        var wrongType = good; wrongType[0] = 0x99
        #expect(throws: SubscriptionError.notSubscription(0x99)) { try SubscriptionPacket(decoding: wrongType) }
        var wrongSize = good; wrongSize[1] = 0
        #expect(throws: SubscriptionError.self) { try SubscriptionPacket(decoding: wrongSize) }
        #expect(throws: SubscriptionError.self) { try SubscriptionPacket(decoding: Array(good.dropLast(3))) }
        #expect(throws: SubscriptionError.oversized(5000)) { try SubscriptionPacket(decoding: [UInt8](repeating: 0xe0, count: 5000)) }
        var noAddress = UwsgiVars(); noAddress.append("key", "a")
        #expect(throws: SubscriptionError.missingField("address")) {
            try SubscriptionPacket(decoding: try UwsgiPacket(modifier1: 224, vars: noAddress).encode())
        }
        var badNumber = UwsgiVars(); badNumber.append("key", "a"); badNumber.append("address", "b:1"); badNumber.append("modifier1", "300")
        #expect(throws: SubscriptionError.badNumber("modifier1")) {
            try SubscriptionPacket(decoding: try UwsgiPacket(modifier1: 224, vars: badNumber).encode())
        }
    }

    /// Attack 4 of spec §3.8/§1.3: keys over 255 bytes crash uWSGI's router. Refused here.
    @Test func theLongKeyCrashIsRefused() throws {
        let long = String(repeating: "a", count: 300) + ".example.com"
        let bytes = try SubscriptionPacket(command: .subscribe, key: long, address: "127.0.0.1:1").encode()
        #expect(throws: SubscriptionError.keyTooLong(312)) { try SubscriptionPacket(decoding: bytes) }
    }
}

@Suite struct SubscriptionSigningTests {
    static func verifier(requireDir: Bool = true) throws -> SubscriptionVerifier {
        // The router's key directory: example.com.pem = the captured public key.
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("legion-keys-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let pub = try FixtureFile.text("subscription/example.com.pub.pem")
        try pub.write(to: dir.appendingPathComponent("example.com.pem"), atomically: true, encoding: .utf8)
        return SubscriptionVerifier(digest: .sha1, keyDirectory: dir.path)
    }

    static func signer() throws -> SubscriptionSigner {
        try SubscriptionSigner(privateKeyPEM: try FixtureFile.text("subscription/TEST-ONLY-example.com.priv.pem"), digest: .sha1)
    }

    @Test func capturedSignaturesVerifyExactlyAsUwsgiDecided() throws {
        let v = try Self.verifier()
        func verdict(_ file: String) throws -> SubscriptionTable.Verification {
            v.verify(try SubscriptionPacket(decoding: try FixtureFile("subscription/\(file)").bytes("datagram_hex")))
        }
        #expect(try verdict("04_subscribe_signed_valid.txt") == .valid)
        #expect(try verdict("05_subscribe_signed_wrong_key.txt") == .invalid)
        #expect(try verdict("06_subscribe_unsigned_to_signed_router.txt") == .unsigned)
        #expect(try verdict("07_unsubscribe_signed_valid.txt") == .valid)
        #expect(SubscriptionVerifier.fileName(forKey: Array("test.uwsgi.it:8000".utf8)) == "test.uwsgi.it_8000.pem")
    }

    @Test func ourSignerReproducesTheCapturedSignature() throws {
        let captured = try FixtureFile("subscription/04_subscribe_signed_valid.txt").bytes("datagram_hex")
        var packet = try SubscriptionPacket(decoding: captured)
        packet.signature = nil
        let signer = try Self.signer()
        #expect(try packet.encode(sign: signer.sign) == captured, "PKCS#1 v1.5 is deterministic")
    }

    func signed(_ command: SubscriptionPacket.Command, unix: UInt64, key: String = "example.com") throws -> [UInt8] {
        var p = SubscriptionPacket(command: command, key: key, address: "127.0.0.1:3031")
        p.unix = unix
        return try p.encode(sign: try Self.signer().sign)
    }

    func apply(_ bytes: [UInt8], to table: inout SubscriptionTable, verifier: SubscriptionVerifier, nowMs: UInt64) -> SubscriptionTable.Outcome {
        do {
            let p = try SubscriptionPacket(decoding: bytes)
            return table.apply(p, verification: verifier.verify(p), nowMs: nowMs)
        } catch {
            return .rejected(error)
        }
    }

    /// Attack 1: flipping the unsigned header byte turns a captured signed subscribe into an
    /// unsubscribe in uWSGI. Here the flipped packet carries an already-used `unix` and is refused.
    @Test func headerFlipAttackIsRejected() throws {
        let v = try Self.verifier()
        var policy = SubscriptionTable.Policy(); policy.requireSignature = true
        var table = SubscriptionTable(policy: policy)
        let now: UInt64 = 1_800_000_000
        let sub = try signed(.subscribe, unix: now)
        #expect(apply(sub, to: &table, verifier: v, nowMs: now * 1000).accepted)
        var flipped = sub; flipped[3] = 1
        #expect(v.verify(try SubscriptionPacket(decoding: flipped)) == .valid, "the signature does not cover the header")
        let outcome = apply(flipped, to: &table, verifier: v, nowMs: now * 1000 + 500)
        #expect(outcome == .rejected(.replayed(unix: now, last: now)))
        #expect(table.nodes(forKey: "example.com").count == 1, "the node survives the attack")
        // The real unsubscribe (uWSGI sends unix = now + 1) still works.
        #expect(apply(try signed(.unsubscribe, unix: now + 1), to: &table, verifier: v, nowMs: now * 1000 + 600).accepted)
        #expect(table.nodes(forKey: "example.com").isEmpty)
    }

    /// Attack 2: replaying a captured signed packet (uWSGI only compares with the first packet's unix).
    @Test func replayedPacketsAreRejectedEvenAfterTheNodeIsGone() throws {
        let v = try Self.verifier()
        var table = SubscriptionTable()
        let now: UInt64 = 1_800_000_000
        let first = try signed(.subscribe, unix: now)
        let second = try signed(.subscribe, unix: now + 10)
        #expect(apply(first, to: &table, verifier: v, nowMs: now * 1000).accepted)
        #expect(apply(second, to: &table, verifier: v, nowMs: (now + 10) * 1000).accepted)
        #expect(apply(second, to: &table, verifier: v, nowMs: (now + 12) * 1000) == .rejected(.replayed(unix: now + 10, last: now + 10)))
        #expect(apply(first, to: &table, verifier: v, nowMs: (now + 12) * 1000) == .rejected(.replayed(unix: now, last: now + 10)))
        // After the node expired, its old packets still cannot resurrect it.
        #expect(table.expire(nowMs: (now + 40) * 1000).count == 1)
        #expect(apply(second, to: &table, verifier: v, nowMs: (now + 41) * 1000) == .rejected(.replayed(unix: now + 10, last: now + 10)))
        #expect(table.nodeCount == 0)
    }

    /// Attack 3: unsigned or stale unsubscribes.
    @Test func unsignedAndStaleUnsubscribesAreRejected() throws {
        let v = try Self.verifier()
        var policy = SubscriptionTable.Policy(); policy.requireSignature = true
        var table = SubscriptionTable(policy: policy)
        let now: UInt64 = 1_800_000_000
        #expect(apply(try signed(.subscribe, unix: now), to: &table, verifier: v, nowMs: now * 1000).accepted)
        let unsignedUnsub = try SubscriptionPacket(command: .unsubscribe, key: "example.com", address: "127.0.0.1:3031").encode()
        #expect(apply(unsignedUnsub, to: &table, verifier: v, nowMs: now * 1000) == .rejected(.unsigned))
        let stale = try signed(.unsubscribe, unix: now - 3600)
        #expect(apply(stale, to: &table, verifier: v, nowMs: now * 1000) == .rejected(.stale(unix: now - 3600, now: now)))
        let forged = try SubscriptionPacket(decoding: try FixtureFile("subscription/05_subscribe_signed_wrong_key.txt").bytes("datagram_hex"))
        #expect(table.apply(forged, verification: v.verify(forged), nowMs: now * 1000) == .rejected(.badSignature))
        #expect(table.nodes(forKey: "example.com").count == 1)
    }
}

@Suite struct SubscriptionTableTests {
    func sub(_ key: String, _ address: String, weight: UInt64 = 0, modifier1: UInt8 = 0) -> SubscriptionPacket {
        var p = SubscriptionPacket(command: .subscribe, key: key, address: address)
        p.weight = weight
        p.modifier1 = modifier1
        return p
    }

    @Test func weightedRoundRobinMatchesUwsgiSequences() {
        var t = SubscriptionTable()
        _ = t.apply(sub("example.com", "A", weight: 1), verification: .unsigned, nowMs: 0)
        _ = t.apply(sub("example.com", "B", weight: 3), verification: .unsigned, nowMs: 0)
        let seq = (0..<8).compactMap { _ in t.pick(host: Array("example.com".utf8), algorithm: .weightedRoundRobin, nowMs: 1)?.addressString }
        #expect(seq == ["B", "A", "B", "B", "B", "A", "B", "B"])

        var u = SubscriptionTable()
        _ = u.apply(sub("k", "A", weight: 2), verification: .unsigned, nowMs: 0)
        _ = u.apply(sub("k", "B", weight: 3), verification: .unsigned, nowMs: 0)
        let seq2 = (0..<4).compactMap { _ in u.pick(host: Array("k".utf8), algorithm: .weightedRoundRobin, nowMs: 1)?.addressString }
        #expect(seq2 == ["B", "A", "B", "A"])
    }

    @Test func aHostWithAPortFindsThePortlessKey() {
        var t = SubscriptionTable()
        _ = t.apply(sub("example.com", "A"), verification: .unsigned, nowMs: 0)
        _ = t.apply(sub("shop.example.com:8443", "B"), verification: .unsigned, nowMs: 0)
        func key(_ host: String) -> String? { t.matchKey(for: Array(host.utf8)).map { String(decoding: $0, as: UTF8.self) } }
        #expect(key("example.com:80") == "example.com")
        #expect(key("example.com:443") == "example.com")
        #expect(key("example.com:8080") == "example.com")
        #expect(key("shop.example.com:8443") == "shop.example.com:8443")  // a key with the port still wins
        #expect(key("shop.example.com") == nil)
        #expect(key("example.com:") == nil)
        #expect(key("example.com:8x") == nil)
        #expect(SubscriptionTable.strippingPort(Array("[::1]:8080".utf8)).map { String(decoding: $0, as: UTF8.self) } == "[::1]")
        #expect(SubscriptionTable.strippingPort(Array("::1".utf8)) == nil)
    }

    @Test func anUnusedPickGivesTheTurnBack() {
        // The fast path picks, sees an HTTP backend and hands the request to the general router, which picks
        // again: with the first pick given back, requests still alternate (without it, one node got them all).
        var t = SubscriptionTable()
        _ = t.apply(sub("api", "http://A", weight: 1), verification: .unsigned, nowMs: 0)
        _ = t.apply(sub("api", "http://B", weight: 1), verification: .unsigned, nowMs: 0)
        var served: [String] = []
        for _ in 0..<6 {
            guard let first = t.pick(host: Array("api".utf8), algorithm: .weightedRoundRobin, nowMs: 1) else { break }
            t.unpick(key: first.key, address: first.address)
            if let second = t.pick(host: Array("api".utf8), algorithm: .weightedRoundRobin, nowMs: 1) {
                served.append(second.addressString)
                t.release(key: second.key, address: second.address)
            }
        }
        #expect(served.count == 6)
        #expect(served.filter { $0 == "http://A" }.count == 3, "\(served)")
        #expect(zip(served, served.dropFirst()).allSatisfy { $0 != $1 }, "\(served)")
        #expect(t.nodes(forKey: "api").allSatisfy { $0.references == 0 })
    }

    @Test func dotsplitMatchingFollowsUwsgi() {
        var t = SubscriptionTable()
        for key in ["example.com", ".example.com", "www.example.com:8081"] {
            _ = t.apply(sub(key, "127.0.0.1:1"), verification: .unsigned, nowMs: 0)
        }
        func match(_ host: String) -> String? { t.matchKey(for: Array(host.utf8)).map { String(decoding: $0, as: UTF8.self) } }
        #expect(match("example.com") == "example.com")
        #expect(match("EXAMPLE.com") == nil)
        #expect(match("example.com:8080") == "example.com")  // a port the key lacks: the port-less key (nginx; uWSGI gave 404)
        #expect(match("a.b.example.com") == ".example.com")
        #expect(match("a.b.c.d.example.com") == ".example.com")
        #expect(match("a.b.c.d.e.example.com") == nil)
        #expect(match("www.example.com:8081") == "www.example.com:8081")
    }

    @Test func refreshKeepsModifiersAndExpiryRemovesSilentNodes() {
        var t = SubscriptionTable()
        #expect(t.apply(sub("k", "A", modifier1: 5), verification: .unsigned, nowMs: 0).accepted)
        let refreshed = t.apply(sub("k", "A", weight: 4, modifier1: 9), verification: .unsigned, nowMs: 10_000)
        guard case .refreshed(let node) = refreshed else { Issue.record("expected a refresh"); return }
        #expect(node.modifier1 == 5 && node.weight == 4)
        #expect(t.expire(nowMs: 26_000).isEmpty, "16 s after the refresh: still alive")
        #expect(t.expire(nowMs: 27_001).count == 1)
        #expect(t.keyCount == 0)
        #expect(t.pick(host: Array("k".utf8), algorithm: .weightedRoundRobin, nowMs: 27_002) == nil)
    }

    @Test func nextExpiryIsTheEarliestToleranceOrDrainEndAndARefreshOnlyMovesItLater() {
        var policy = SubscriptionTable.Policy()
        policy.drainLastMs = 5000
        var t = SubscriptionTable(policy: policy)
        #expect(t.nextExpiryMs == nil, "an empty table never expires anything")
        _ = t.apply(sub("a", "A"), verification: .unsigned, nowMs: 1000)
        _ = t.apply(sub("b", "B"), verification: .unsigned, nowMs: 2000)
        #expect(t.nextExpiryMs == 1000 + policy.toleranceMs + 1)
        #expect(t.expire(nowMs: 1000 + policy.toleranceMs).isEmpty, "not a millisecond before")
        _ = t.apply(sub("a", "A"), verification: .unsigned, nowMs: 3000)
        #expect(t.nextExpiryMs == 2000 + policy.toleranceMs + 1, "the refresh moved a's expiry after b's")
        _ = t.apply(SubscriptionPacket(command: .unsubscribe, key: "b", address: "B"), verification: .unsigned, nowMs: 4000)
        #expect(t.nextExpiryMs == 4000 + 5000 + 1, "b's drain ends before any tolerance")
        #expect(t.expire(nowMs: 9000).isEmpty)
        #expect(t.expire(nowMs: 9001).map(\.keyString) == ["b"])
    }

    @Test func leastConnectionsPrefersIdleNodes() {
        var t = SubscriptionTable()
        for a in ["A", "B", "C"] { _ = t.apply(sub("k", a), verification: .unsigned, nowMs: 0) }
        let host = Array("k".utf8)
        let first = t.pick(host: host, algorithm: .leastConnections, nowMs: 1)?.addressString
        let second = t.pick(host: host, algorithm: .leastConnections, nowMs: 1)?.addressString
        let third = t.pick(host: host, algorithm: .leastConnections, nowMs: 1)?.addressString
        #expect(Set([first, second, third].compactMap { $0 }) == ["A", "B", "C"], "three busy picks spread over three nodes")
        t.release(key: host, address: Array("B".utf8))
        #expect(t.pick(host: host, algorithm: .leastConnections, nowMs: 1)?.addressString == "B")
    }

    @Test func theTableIsBounded() {
        var policy = SubscriptionTable.Policy(); policy.maxKeys = 2; policy.maxNodesPerKey = 1
        var t = SubscriptionTable(policy: policy)
        #expect(t.apply(sub("a", "1"), verification: .unsigned, nowMs: 0).accepted)
        #expect(t.apply(sub("b", "1"), verification: .unsigned, nowMs: 0).accepted)
        #expect(t.apply(sub("c", "1"), verification: .unsigned, nowMs: 0) == .rejected(.tableFull("2 keys")))
        #expect(t.apply(sub("a", "2"), verification: .unsigned, nowMs: 0) == .rejected(.tableFull("1 nodes for one key")))
    }
}

@Suite struct SubscriptionDrainTests {
    static func packet(_ command: SubscriptionPacket.Command, _ address: String) -> SubscriptionPacket {
        SubscriptionPacket(command: command, key: "app.example.com", address: address)
    }

    @Test func theLastNodeThatUnsubscribesIsAFallbackUntilItComesBackOrItsTimeRunsOut() {
        var policy = SubscriptionTable.Policy()
        policy.drainLastMs = 5000
        var table = SubscriptionTable(policy: policy)
        let host = Array("app.example.com".utf8)
        _ = table.apply(Self.packet(.subscribe, "/run/a.sock"), verification: .unsigned, nowMs: 1000)
        _ = table.apply(Self.packet(.subscribe, "/run/b.sock"), verification: .unsigned, nowMs: 1000)
        // Not the last one: removed at once, as uWSGI.
        #expect(table.apply(Self.packet(.unsubscribe, "/run/a.sock"), verification: .unsigned, nowMs: 2000).accepted)
        #expect(table.nodes(forKey: "app.example.com").map(\.addressString) == ["/run/b.sock"])
        // The last one (reloading): kept, still picked while nothing else serves.
        #expect(table.apply(Self.packet(.unsubscribe, "/run/b.sock"), verification: .unsigned, nowMs: 3000).accepted)
        #expect(table.pick(host: host, algorithm: .weightedRoundRobin, nowMs: 3100)?.addressString == "/run/b.sock")
        // A sibling subscribes: the draining node is no longer used.
        _ = table.apply(Self.packet(.subscribe, "/run/c.sock"), verification: .unsigned, nowMs: 3200)
        for _ in 0..<4 { #expect(table.pick(host: host, algorithm: .weightedRoundRobin, nowMs: 3300)?.addressString == "/run/c.sock") }
        // It subscribes again after its reload: serving again.
        _ = table.apply(Self.packet(.subscribe, "/run/b.sock"), verification: .unsigned, nowMs: 4000)
        let picked = Set((0..<4).compactMap { _ in table.pick(host: host, algorithm: .weightedRoundRobin, nowMs: 4100)?.addressString })
        #expect(picked == ["/run/b.sock", "/run/c.sock"])
        // A last node that never comes back is gone after the drain time.
        _ = table.apply(Self.packet(.unsubscribe, "/run/c.sock"), verification: .unsigned, nowMs: 5000)
        _ = table.apply(Self.packet(.unsubscribe, "/run/b.sock"), verification: .unsigned, nowMs: 5000)
        #expect(table.pick(host: host, algorithm: .weightedRoundRobin, nowMs: 9000) != nil)
        #expect(table.pick(host: host, algorithm: .weightedRoundRobin, nowMs: 10_001) == nil)
        _ = table.expire(nowMs: 10_001)
        #expect(table.matchKey(for: host) == nil)
    }

    @Test func withoutDrainingTheLastUnsubscribeRemovesTheKey() {
        var table = SubscriptionTable()
        _ = table.apply(Self.packet(.subscribe, "/run/a.sock"), verification: .unsigned, nowMs: 1000)
        _ = table.apply(Self.packet(.unsubscribe, "/run/a.sock"), verification: .unsigned, nowMs: 2000)
        #expect(table.matchKey(for: Array("app.example.com".utf8)) == nil)
    }
}
