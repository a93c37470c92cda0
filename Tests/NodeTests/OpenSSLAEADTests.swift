import Legion
import Testing
@testable import Node

/// The protocol thread's OpenSSL AES-GCM speaks exactly the wire format of swift-crypto's (the reference).
@Suite struct OpenSSLAEADTests {
    let key = (0..<32).map { UInt8($0 &* 7 &+ 3) }

    @Test func sealsAndOpensInteroperablyWithTheReference() throws {
        let fast = try #require(OpenSSLAEAD(key: key))
        let reference = SwiftCryptoAEAD(key: key)
        let header: [UInt8] = [0x6d, 0x20, 0x00, 0x00]
        for size in [0, 1, 15, 16, 17, 200, 1400] {
            let text = (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 31) }
            let a = try fast.seal(text, authenticating: header)
            let b = try fast.seal(text, authenticating: header)
            #expect(a.count == 12 + size + 16 && a != b, "a fresh nonce for every message")
            #expect(try reference.open(a[...], authenticating: header) == text, "OpenSSL -> swift-crypto, \(size) bytes")
            let c = try reference.seal(text, authenticating: header)
            #expect(try fast.open(c[...], authenticating: header) == text, "swift-crypto -> OpenSSL, \(size) bytes")
            // A slice that does not start at index 0 (the codec passes the datagram after its header).
            let framed = header + a
            #expect(try fast.open(framed[4...], authenticating: header) == text)
        }
    }

    @Test func rejectsEveryTamperedByteAWrongHeaderAndAWrongKey() throws {
        let fast = try #require(OpenSSLAEAD(key: key))
        let header: [UInt8] = [0xe2, 0x05, 0x00, 0x00]
        let sealed = try fast.seal(Array("hello".utf8), authenticating: header)
        for i in sealed.indices {
            var tampered = sealed
            tampered[i] ^= 0x80
            #expect(throws: (any Error).self) { try fast.open(tampered[...], authenticating: header) }
        }
        #expect(throws: (any Error).self) { try fast.open(sealed[...], authenticating: [0xe2, 0x06, 0x00, 0x00]) }
        let other = try #require(OpenSSLAEAD(key: key.map { $0 ^ 1 }))
        #expect(throws: (any Error).self) { try other.open(sealed[...], authenticating: header) }
        #expect(throws: (any Error).self) { try fast.open(sealed[0..<20], authenticating: header) }
        #expect(try fast.open(sealed[...], authenticating: header) == Array("hello".utf8), "the context is still usable after failures")
    }

    @Test func aNodeCodecAndTheReferenceCodecUnderstandEachOther() throws {
        let secret = try LegionSecret(parsing: "aes-256-cbc:native-secret")
        let node = try LegionCodec(mode: .native, secret: secret, aead: OpenSSLAEAD.make)
        let reference = try LegionCodec(mode: .native, secret: secret)
        let announce = LegionAnnounce(legion: Array("l".utf8), valor: 10, unix: 1, name: Array("n1".utf8), pid: 1,
                                      uuid: LegionUUID.random(), seq: 42, ack: 7, unixMs: 1000, leaseMs: 200, heard: 3)
        #expect(try reference.decode(try node.encode(announce)) == announce)
        #expect(try node.decode(try reference.encode(announce)) == announce)
        let payload = Array("origin\u{0}relay".utf8)
        #expect(try reference.openRelay(try node.sealRelay(payload)) == payload)
        #expect(try node.openRelay(try reference.sealRelay(payload)) == payload)
        var tampered = try node.encode(announce)
        tampered[tampered.count - 1] ^= 1
        #expect(throws: LegionPacketError.decryptFailed) { try node.decode(tampered) }
    }
}
