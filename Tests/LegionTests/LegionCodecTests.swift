import TestSupport
import Testing
import UwsgiWire
@testable import Legion

@Suite struct LegionCodecTests {
    static let capturedSecret = LegionSecret(cipher: .aes128cbc, secret: Array("secret".utf8))

    @Test func secretParsingFollowsUwsgiRules() throws {
        let plain = try LegionSecret(parsing: "aes-128-cbc:mysecret")
        #expect(Hex.encode(plain.compatKey) == "6d797365637265740000000000000000")
        #expect(Hex.encode(plain.compatIV) == "30303030303030303030303030303030")
        let withIV = try LegionSecret(parsing: "aes-256-cbc:0123456789abcdef0123456789abcdef myiv")
        #expect(Hex.encode(withIV.compatKey) == "3031323334353637383961626364656630313233343536373839616263646566")
        #expect(Hex.encode(withIV.compatIV) == "6d796976303030303030303030303030")
        #expect(throws: LegionConfigError.self) { try LegionSecret(parsing: "bf-cbc:x") }
        #expect(throws: LegionConfigError.self) { try LegionSecret(parsing: "nocolon") }
        #expect(throws: LegionConfigError.self) { try LegionSecret(parsing: "aes-128-cbc:") }
        #expect(!String(describing: plain).contains("mysecret"))
    }

    @Test func decryptsEveryCapturedUwsgiAnnounceAndReencryptsByteExactly() throws {
        let codec = try LegionCodec(mode: .compat, secret: Self.capturedSecret)
        let names = try FixtureFile.names(in: "legion")
        #expect(names.count == 5)
        var uuids: Set<String> = []
        for name in names {
            let file = try FixtureFile("legion/\(name)")
            let datagram = try file.bytes("datagram_hex")
            let announce = try codec.decode(datagram)
            #expect(announce.legion == Array("mylegion".utf8))
            #expect(announce.name == Array("vm".utf8))
            #expect([100, 200, 300].contains(announce.valor))
            uuids.insert(announce.uuid.description)
            // uWSGI's encryption is deterministic: our encoder must reproduce the capture exactly.
            #expect(try codec.encode(announce) == datagram, "\(name) re-encodes byte-exactly")
            if name.hasPrefix("01") {
                #expect(announce.checksum == 0 && announce.lordValor == 0 && announce.lordUUID.isNone)
            }
            if name.hasPrefix("03") {
                #expect(announce.lord == 1_795_305_101 && announce.checksum == 7945 && announce.lordUUID == announce.uuid)
            }
            if name.hasPrefix("05") { #expect(announce.dead) }
        }
        // Two capture runs (start-up: files 01-02; steady state and shutdown: 03-05), fresh uuids each.
        #expect(uuids.count == 5)
    }

    @Test func capturedChecksumEqualsTheSumOverTheThreeMembers() throws {
        let codec = try LegionCodec(mode: .compat, secret: Self.capturedSecret)
        var members: [LegionUUID: UInt64] = [:]
        var reported: Set<UInt64> = []
        // Files 03-05 come from one run of the three-node legion (valor 300, 200, 100).
        for name in try FixtureFile.names(in: "legion") where name.hasPrefix("03") || name.hasPrefix("04") || name.hasPrefix("05") {
            let file = try FixtureFile("legion/\(name)")
            let a = try codec.decode(try file.bytes("datagram_hex"))
            members[a.uuid] = a.valor
            reported.insert(a.checksum)
        }
        let list = members.map { ($0.value, $0.key) }
        let sum = CompatLegion.checksum(selfValor: list[0].0, selfUUID: list[0].1, members: Array(list.dropFirst()))
        #expect(members.count == 3)
        #expect(reported == [sum])
        #expect(sum == 7945)
    }

    @Test func encodesSpecVectorTVL1() throws {
        let codec = try LegionCodec(mode: .compat, secret: try LegionSecret(parsing: "aes-128-cbc:mysecret"))
        let announce = LegionAnnounce(legion: Array("mylegion".utf8), valor: 100, unix: 4_102_444_800, lord: 0,
                                      name: Array("nodeB".utf8), pid: 4242,
                                      uuid: try #require(LegionUUID("11111111-2222-3333-4444-555555555555")))
        let expected = """
        6dca000014776f0f73aa1350fbd17c1b80d6bfd9277bf283153d069c219a9a6dbfa4446574956d9ff60fad786efbdf83\
        e2c3d8989e192730777e318529d98d51f1d30b22f1123d44f69517c19a5f92a9a9be41eefaa91a09b3f6bc5336b3f434\
        5ab9c34f1c00f38231465b2f4b76034a287eb5a114174141de37e628b4572850622df473c77cf0c9e3819a429f3ca4ba\
        cf16ce53b9d7432d0a82211e6d0629f64b86c995889d52825b8d59e974ea8cb76c75b58ea97ac5a517092594f85de660\
        82176bc4864831fe638905dd976aa0bb829bbdbe
        """
        #expect(Hex.encode(try codec.encode(announce)) == expected)
    }

    @Test func encodesSpecVectorTVL2WithIVAndScroll() throws {
        let codec = try LegionCodec(mode: .compat, secret: try LegionSecret(parsing: "aes-256-cbc:0123456789abcdef0123456789abcdef myiv"))
        let uuid = try #require(LegionUUID("aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"))
        let announce = LegionAnnounce(legion: Array("cluster2".utf8), valor: 50, unix: 4_102_444_801, lord: 0,
                                      name: Array("nodeC".utf8), pid: 7, uuid: uuid, checksum: 3406,
                                      lordValor: 50, lordUUID: uuid, scroll: Array("hi".utf8))
        let expected = """
        6dd60000ccf38595e630d02f2495956d35ca6a4a21f2d070f4ae6be1ec1736bb9874484c208129ef588fc40ba62ad85c\
        c919674c107ed8b47d5d477ae2d699b60648d00ef00821c8121f3d30a1e2ece580d308eea3c04b703d2fa69132294457\
        03e3b6e108c43bc2c4d47b0e9caa42a575bb9a25539f90c92da85fc810df03afcadf7095bfcdde57c49da5b72378b002\
        6546fafe1efd1baf8552c32bb26af1c8f8d0073c92d5930e3b78035e46b20999f7a99ca2928b2da88dc4f7a0cbac91de\
        0fb14e8c12aee144e0a29b2790fdc2b4c0ad8dd9ed0cfd3e1fd0973cfe8d92c5fbad4f3f
        """
        #expect(Hex.encode(try codec.encode(announce)) == expected)
        #expect(uuid.checksumContribution == 3356)
    }

    @Test func nativePacketsRoundTripWithFreshNoncesAndRejectTampering() throws {
        let secret = try LegionSecret(parsing: "aes-256-cbc:native-secret")
        let codec = try LegionCodec(mode: .native, secret: secret)
        let announce = LegionAnnounce(legion: Array("l".utf8), valor: 10, unix: 1, name: Array("n1".utf8), pid: 1,
                                      uuid: LegionUUID.random(), seq: 42, ack: 7, unixMs: 1000, leaseMs: 200)
        let a = try codec.encode(announce)
        let b = try codec.encode(announce)
        #expect(a != b, "every packet has a fresh nonce")
        #expect(try codec.decode(a) == announce)
        // Flip every single byte in turn: each flip must be rejected.
        for i in 0..<a.count {
            var tampered = a
            tampered[i] ^= 0x01
            #expect(throws: LegionPacketError.self) { try codec.decode(tampered) }
        }
        let other = try LegionCodec(mode: .native, secret: try LegionSecret(parsing: "aes-256-cbc:other"))
        #expect(throws: LegionPacketError.decryptFailed) { try other.decode(a) }
        let compat = try LegionCodec(mode: .compat, secret: secret)
        #expect(throws: LegionPacketError.self) { try compat.decode(a) }
    }

    @Test func nativeRequiresASequenceNumber() throws {
        let codec = try LegionCodec(mode: .native, secret: try LegionSecret(parsing: "aes-128-cbc:k"))
        let announce = LegionAnnounce(legion: Array("l".utf8), valor: 10, unix: 1, name: Array("n1".utf8), pid: 1,
                                      uuid: LegionUUID.random())
        #expect(throws: LegionPacketError.missingSequence) { try codec.decode(try codec.encode(announce)) }
    }

    @Test func wrongSecretAndGarbageAreRejectedNotCrashed() throws {
        let codec = try LegionCodec(mode: .compat, secret: try LegionSecret(parsing: "aes-128-cbc:wrong"))
        let file = try FixtureFile("legion/03_lord_steady_announce.txt")
        let datagram = try file.bytes("datagram_hex")
        #expect(throws: LegionPacketError.self) { try codec.decode(datagram) }
        #expect(throws: LegionPacketError.tooShort(3)) { try codec.decode([0x6d, 0, 0]) }
        #expect(throws: LegionPacketError.notLegion(modifier1: 0xe0)) { try codec.decode([0xe0, 0, 0, 0, 1]) }
        #expect(throws: LegionPacketError.oversized(70_000)) { try codec.decode([UInt8](repeating: 0x6d, count: 70_000)) }
    }

    /// ≥ 100 000 random mutations of the captured packets: the decoder must never trap, and a
    /// mutation that still decodes must decode to a well-formed announce.
    @Test func survivesOneHundredThousandMutations() throws {
        let compat = try LegionCodec(mode: .compat, secret: Self.capturedSecret)
        let native = try LegionCodec(mode: .native, secret: Self.capturedSecret)
        var seeds: [[UInt8]] = []
        for name in try FixtureFile.names(in: "legion") {
            let file = try FixtureFile("legion/\(name)")
            seeds.append(try file.bytes("datagram_hex"))
        }
        seeds.append(try native.encode(LegionAnnounce(legion: Array("mylegion".utf8), valor: 1, unix: 1, name: [0x61],
                                                      pid: 1, uuid: LegionUUID.random(), seq: 1)))
        var rng = SplitMix64(seed: 0x5eed)
        var accepted = 0
        var rejected: [String: Int] = [:]
        let iterations = 100_000
        for i in 0..<iterations {
            var packet = seeds[i % seeds.count]
            let mutations = Int.random(in: 1...4, using: &rng)
            for _ in 0..<mutations {
                switch Int.random(in: 0..<6, using: &rng) {
                case 0 where !packet.isEmpty:
                    let at = Int.random(in: 0..<packet.count, using: &rng)
                    packet[at] ^= UInt8.random(in: 1...255, using: &rng)
                case 1 where !packet.isEmpty:
                    packet.removeLast(Int.random(in: 0...packet.count, using: &rng))
                case 2:
                    packet.append(contentsOf: (0..<Int.random(in: 1...64, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) })
                case 3 where packet.count > 3:
                    let size = UInt16.random(in: 0...UInt16.max, using: &rng)
                    packet[1] = UInt8(truncatingIfNeeded: size)
                    packet[2] = UInt8(truncatingIfNeeded: size >> 8)
                case 4 where packet.count > 20:
                    // Swap two ciphertext blocks (CBC cut-and-paste).
                    let a = 4 + 16 * Int.random(in: 0..<((packet.count - 4) / 16), using: &rng)
                    let b = 4 + 16 * Int.random(in: 0..<((packet.count - 4) / 16), using: &rng)
                    if a + 16 <= packet.count, b + 16 <= packet.count {
                        let blockA = Array(packet[a..<(a + 16)])
                        packet.replaceSubrange(a..<(a + 16), with: packet[b..<(b + 16)])
                        packet.replaceSubrange(b..<(b + 16), with: blockA)
                    }
                default:
                    packet = (0..<Int.random(in: 0...300, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
                }
            }
            for codec in [compat, native] {
                do {
                    let announce = try codec.decode(packet)
                    #expect(announce.uuid.bytes.count == 36)
                    #expect(announce.valor <= 65_535)
                    accepted += 1
                } catch {
                    rejected[error.reason, default: 0] += 1
                }
            }
        }
        let total = rejected.values.reduce(0, +) + accepted
        #expect(total == 2 * iterations)
        #expect(rejected["decrypt_failed", default: 0] > iterations / 2)
        print("fuzz: \(iterations) mutations × 2 codecs, accepted \(accepted), rejected \(rejected.sorted { $0.key < $1.key })")
    }
}

/// Small deterministic generator (SplitMix64) for reproducible tests.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9e37_79b9_7f4a_7c15
        var z = state
        z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
        z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
        return z ^ (z >> 31)
    }
}
