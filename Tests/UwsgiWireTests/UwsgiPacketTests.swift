import TestSupport
import Testing
import UwsgiWire

@Suite struct UwsgiPacketTests {
    @Test func encodesTheHandBuiltRequestVector() throws {
        var vars = UwsgiVars()
        vars.append("REQUEST_METHOD", "GET")
        vars.append("PATH_INFO", "/")
        vars.append("HTTP_HOST", "example.com")
        let packet = UwsgiPacket(modifier1: 0, modifier2: 0, vars: vars)
        let expected = "003b00000e00524551554553545f4d4554484f4403004745540900504154485f494e464f01002f0900485454505f484f53540b006578616d706c652e636f6d"
        #expect(Hex.encode(try packet.encode()) == expected)
        let decoded = try UwsgiPacket(decoding: try #require(Hex.decode(expected)))
        #expect(decoded == packet)
    }

    @Test func decodesEveryCapturedSubscriptionDatagram() throws {
        let names = try FixtureFile.names(in: "subscription")
        #expect(names.count == 8)
        for name in names {
            let file = try FixtureFile("subscription/\(name)")
            let bytes = try file.bytes("datagram_hex")
            let packet = try UwsgiPacket(decoding: bytes)
            #expect(packet.modifier1 == UwsgiModifier.subscription)
            #expect(packet.vars.string("key")?.isEmpty == false, "\(name) has a key")
            #expect(packet.vars.string("address")?.contains(":") == true, "\(name) has an address")
            // Re-encoding reproduces the captured bytes exactly.
            #expect(try packet.encode() == bytes, "\(name) round-trips")
        }
    }

    @Test func decodesTheCapturedRouterRequestHeaderAndVars() throws {
        let file = try FixtureFile("uwsgi-request/01_http_router_GET_query.txt")
        let bytes = try file.bytes("stream_hex")
        let header = try UwsgiHeader(decoding: bytes)
        #expect(header.modifier1 == 0)
        #expect(Int(header.dataSize) == bytes.count - 4)
        let packet = try UwsgiPacket(decoding: bytes)
        #expect(packet.vars.entries.first.map { String(decoding: $0.key, as: UTF8.self) } == "REQUEST_METHOD")
        #expect(packet.vars.string("QUERY_STRING") == "a=1&b=two")
        #expect(packet.vars.string("HTTP_HOST") == "raw.example.com")
    }

    @Test func lastDuplicateWinsAndUnknownKeysAreKept() throws {
        var vars = UwsgiVars()
        vars.append("weight", "1")
        vars.append("x-unknown", "?")
        vars.append("weight", "7")
        let decoded = try UwsgiVars(decoding: try vars.encode())
        #expect(decoded.number("weight") == 7)
        #expect(decoded.entries.count == 3)
    }

    @Test func rejectsTruncatedAndEmptyKeyBlocksWithOffsets() {
        #expect(throws: UwsgiWireError.truncatedEntry(offset: 0)) { try UwsgiVars(decoding: [0x05, 0x00, 0x61]) }
        #expect(throws: UwsgiWireError.emptyKey(offset: 0)) { try UwsgiVars(decoding: [0x00, 0x00, 0x00, 0x00]) }
        #expect(throws: UwsgiWireError.truncatedEntry(offset: 6)) {
            try UwsgiVars(decoding: [0x01, 0x00, 0x61, 0x01, 0x00, 0x62, 0x00, 0x09])
        }
        #expect(throws: UwsgiWireError.sizeMismatch(declared: 10, actual: 2)) {
            try UwsgiPacket(decoding: [0x00, 0x0a, 0x00, 0x00, 0x01, 0x02])
        }
        #expect(throws: UwsgiWireError.truncatedHeader(received: 3)) { try UwsgiHeader(decoding: [1, 2, 3]) }
    }

    @Test func prefixDecodeDeliversEntriesBeforeACorruptTail() {
        var vars = UwsgiVars()
        vars.append("key", "example.com")
        var bytes = (try? vars.encode()) ?? []
        bytes.append(contentsOf: [0x09, 0x00, 0x61])
        let (parsed, failure) = UwsgiVars.decodePrefix(bytes)
        #expect(parsed.string("key") == "example.com")
        #expect(failure == .truncatedEntry(offset: 18))
    }

    @Test func refusesToEncodeBodiesOverTheU16Limit() {
        var vars = UwsgiVars()
        vars.append("big", [UInt8](repeating: 0x41, count: 40_000))
        vars.append("big2", [UInt8](repeating: 0x41, count: 40_000))
        #expect(throws: UwsgiWireError.bodyTooLarge(size: 80_015)) { try vars.encode() }
    }

    @Test func numbersMustBeDecimal() {
        #expect(UwsgiVars.parseDecimal(Array("1700000000".utf8)) == 1_700_000_000)
        #expect(UwsgiVars.parseDecimal(Array("-1".utf8)) == nil)
        #expect(UwsgiVars.parseDecimal(Array("12a".utf8)) == nil)
        #expect(UwsgiVars.parseDecimal([]) == nil)
        #expect(UwsgiVars.parseDecimal(Array("12345678901234567890".utf8)) == nil)
    }

    @Test func numbersAreWrittenAsPlainDecimalsAsStringWouldWriteThem() {
        let samples: [Int64] = [0, 7, 10, 99, 100, 65_535, 1_700_000_000_123, Int64.max, -1, -42, Int64.min]
        for n in samples {
            var vars = UwsgiVars()
            vars.append("n", number: n)
            #expect(vars.entries[0].value == Array(String(n).utf8), "\(n)")
        }
        var big = UwsgiVars()
        big.append("u", number: UInt64.max)
        #expect(big.number("u") == nil && big.string("u") == "18446744073709551615", "20 digits: written, but not parsed back")
        big.append("k", number: UInt8(200))
        #expect(big.string("k") == "200" && big["missing"] == nil && big["u"] == Array("18446744073709551615".utf8))
        #expect(big[""] == nil, "an empty key never matches (keys on the wire are not empty)")
    }
}
