import Testing
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
}
