import Foundation
import Legion
import Testing
import TestSupport
import UwsgiWire
@testable import Node

@Suite struct StoreChangeHintsTests {
    /// What node `from` would put on the wire for `seq`.
    func hint(_ seq: Int64, from: String) async -> [UInt8] {
        let sender = StoreChangeHints(origin: from)
        sender.announce(seq: seq)
        var iterator = sender.outbox.makeAsyncIterator()
        return await iterator.next() ?? []
    }

    @Test func aHintIsToldApartFromAClusterRelay() async {
        let payload = await hint(42, from: "n1")
        #expect(StoreChangeHints.isHint(payload))
        var relay = UwsgiVars()
        relay.append("origin", "n1")
        relay.append("sub", [1, 2, 3])
        #expect(!StoreChangeHints.isHint((try? relay.encode()) ?? []))
        #expect(!StoreChangeHints.isHint([]) && !StoreChangeHints.isHint([9]))
    }

    @Test func onlyNewerPositionsFromOtherNodesCount() async {
        let hints = StoreChangeHints(origin: "n2")
        #expect(hints.latestHeard == -1)
        #expect(hints.received(await hint(7, from: "n1")) == 7)
        #expect(hints.latestHeard == 7)
        hints.received(await hint(5, from: "n3"))
        #expect(hints.latestHeard == 7, "an older position (a late datagram) does not go back")
        #expect(hints.received(await hint(9, from: "n2")) == nil, "its own announcement echoed back is ignored")
        #expect(hints.received([0xFF, 0x00, 0x01]) == nil, "a malformed payload is ignored")
        #expect(hints.latestHeard == 7)
    }

    @Test func aWaitEndsWhenANewerPositionIsHeardOrAtItsTimeout() async {
        let hints = StoreChangeHints(origin: "n2")
        let newer = await hint(3, from: "n1")
        let clock = ContinuousClock()
        let started = clock.now
        async let waited: Void = hints.wait(timeout: .seconds(10))
        try? await Task.sleep(for: .milliseconds(50))
        hints.received(newer)
        await waited
        #expect(clock.now - started < .seconds(5), "woken by the hint, not the timeout")
        let quiet = clock.now
        await hints.wait(timeout: .milliseconds(100))
        #expect(clock.now - quiet >= .milliseconds(90), "nothing newer heard: the timeout ends the wait")
    }

    @Test func aWriteOnThisNodeWakesItsFollowerOnceAndMarksAgainAfterward() async {
        let hints = StoreChangeHints(origin: "n1")
        #expect(!hints.hasWritten && !hints.takeWrote())
        let clock = ContinuousClock()
        let started = clock.now
        async let waited: Void = hints.wait(timeout: .seconds(10))
        try? await Task.sleep(for: .milliseconds(50))
        hints.wroteHere()
        await waited
        #expect(clock.now - started < .seconds(5), "woken by the write, not the timeout")
        #expect(hints.hasWritten)
        #expect(hints.takeWrote(), "the mark is taken once")
        #expect(!hints.takeWrote() && !hints.hasWritten)
        hints.wroteHere()
        #expect(hints.takeWrote(), "a write after the read marks again")
        #expect(hints.latestHeard == -1, "a local write is not a position heard from a member")
    }

    @Test func aWriteNoticeFromTheCLIMakesANodeReadTheChangeLog() {
        let hints = StoreChangeHints(origin: "n1")
        let notice = StoreChangeHints.writeNotice(origin: "legion-cli-7") ?? []
        #expect(StoreChangeHints.isHint(notice), "it travels as a change hint")
        #expect(hints.received(notice) == 0)
        #expect(hints.hasWritten, "the node reads the change log now")
        #expect(hints.latestHeard == -1, "no position was announced")
        let own = StoreChangeHints(origin: "legion-cli-7")
        own.received(notice)
        #expect(!own.hasWritten, "its own notice echoed back is ignored")
        let replayed = StoreChangeHints.writeNotice(origin: "legion-cli-7", atMs: SystemClock.wallMillis() - 60_000) ?? []
        let node = StoreChangeHints(origin: "n2")
        #expect(node.received(replayed) == nil && !node.hasWritten, "a notice from a minute ago is a replay: ignored")
    }

    @Test func theCLIsNoticeIsSealedWithTheLegionSecretAndReachesEveryMember() throws {
        let config = try NodeConfig.parse(NodeConfigTests.valid, path: "/etc/legion/test.toml")
        // Two listening "members" on loopback.
        var listeners: [(fd: Int32, port: Int)] = []
        defer { for l in listeners { close(l.fd) } }
        for _ in 0..<2 {
            let listener = LoopbackSocket.bind(SOCK_DGRAM)
            var timeout = timeval(tv_sec: 2, tv_usec: 0)
            setsockopt(listener.fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            listeners.append(listener)
        }
        let sent = StoreChangeHints.noticeWrite(config: config, members: listeners.map { NodeConfig.Endpoint(host: "127.0.0.1", port: $0.port) },
                                                origin: "legion-cli-1")
        #expect(sent == 2)
        let codec = try LegionCodec(mode: config.mode, secret: config.secret, aead: OpenSSLAEAD.make)
        let stranger = try NodeConfig.parse(NodeConfigTests.valid.replacingOccurrences(of: "s3cret myiv", with: "other myiv"), path: "/x.toml")
        let wrongKey = try LegionCodec(mode: stranger.mode, secret: stranger.secret, aead: OpenSSLAEAD.make)
        for listener in listeners {
            var buffer = [UInt8](repeating: 0, count: 65_536)
            let n = recv(listener.fd, &buffer, buffer.count, 0)
            #expect(n > 0, "member on port \(listener.port) got the notice")
            guard n > 0 else { continue }
            let datagram = Array(buffer[0..<n])
            #expect(throws: LegionPacketError.self, "a legion with another secret drops it") { try wrongKey.openRelay(datagram) }
            let payload = try codec.openRelay(datagram)
            let member = StoreChangeHints(origin: "n2")
            member.received(payload)
            #expect(member.hasWritten)
        }
    }
}
