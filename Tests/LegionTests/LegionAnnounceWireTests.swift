import Testing
import UwsgiWire
@testable import Legion

/// The one-pass announce codec (`encodedVars`, `init(decodingVars:)`) against the reference it replaces on the hot
/// path — `vars.encode()` and `init(vars: UwsgiVars(decoding:))`: same bytes, same announces, same errors, for
/// random announces and for every kind of damage to them.
@Suite struct LegionAnnounceWireTests {
    /// The reference decode, its structural errors wrapped as the codec wraps them.
    static func reference(_ bytes: [UInt8]) -> Result<LegionAnnounce, LegionPacketError> {
        let vars: UwsgiVars
        do { vars = try UwsgiVars(decoding: bytes) } catch { return .failure(.malformed(error)) }
        do { return .success(try LegionAnnounce(vars: vars)) } catch { return .failure(error) }
    }

    static func onePass(_ bytes: [UInt8]) -> Result<LegionAnnounce, LegionPacketError> {
        do { return .success(try LegionAnnounce(decodingVars: bytes)) } catch { return .failure(error) }
    }

    static func randomBytes(_ rng: inout SplitMix64, upTo count: Int) -> [UInt8] {
        (0..<Int.random(in: 0...count, using: &rng)).map { _ in UInt8.random(in: 0x20...0x7e, using: &rng) }
    }

    static func randomNumber(_ rng: inout SplitMix64) -> UInt64 {
        switch Int.random(in: 0..<5, using: &rng) {
        case 0: return 0
        case 1: return UInt64.random(in: 1...9, using: &rng)
        case 2: return UInt64.max   // 20 digits: written by both, refused by both on the way back
        case 3: return 9_999_999_999_999_999_999 / UInt64.random(in: 1...1000, using: &rng)
        default: return UInt64.random(in: 0...UInt64(UInt32.max), using: &rng)
        }
    }

    static func randomAnnounce(_ rng: inout SplitMix64) -> LegionAnnounce {
        func maybe(_ value: UInt64) -> UInt64? { Bool.random(using: &rng) ? value : nil }
        let uuid = LegionUUID.random(using: &rng)
        return LegionAnnounce(
            legion: randomBytes(&rng, upTo: 12), valor: randomNumber(&rng), unix: randomNumber(&rng), lord: randomNumber(&rng),
            name: randomBytes(&rng, upTo: 20), pid: randomNumber(&rng), uuid: uuid, checksum: randomNumber(&rng),
            lordValor: randomNumber(&rng), lordUUID: Bool.random(using: &rng) ? uuid : .none,
            scroll: Bool.random(using: &rng) ? randomBytes(&rng, upTo: 30) : nil, dead: Bool.random(using: &rng),
            seq: maybe(randomNumber(&rng)), ack: maybe(randomNumber(&rng)), unixMs: maybe(randomNumber(&rng)),
            leaseMs: maybe(randomNumber(&rng)), heard: maybe(randomNumber(&rng)))
    }

    /// One kind of damage, chosen at random: a flipped byte, a cut, inserted junk, a duplicated or an unknown entry,
    /// a removed entry, a number made of letters.
    static func damage(_ bytes: [UInt8], _ rng: inout SplitMix64) -> [UInt8] {
        var out = bytes
        guard !out.isEmpty else { return [UInt8.random(in: 0...255, using: &rng)] }
        switch Int.random(in: 0..<7, using: &rng) {
        case 0:
            out[Int.random(in: 0..<out.count, using: &rng)] = UInt8.random(in: 0...255, using: &rng)
        case 1:
            out.removeLast(Int.random(in: 1...out.count, using: &rng))
        case 2:
            out.insert(contentsOf: (0..<Int.random(in: 1...4, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) },
                       at: Int.random(in: 0...out.count, using: &rng))
        case 3:
            // A second value for a known key, after the first: the last one wins in both.
            let key = LegionAnnounce.wireKeys[Int.random(in: 0..<LegionAnnounce.wireKeys.count, using: &rng)]
            let value: [UInt8] = Bool.random(using: &rng) ? Array(String(randomNumber(&rng)).utf8) : randomBytes(&rng, upTo: 40)
            out += [UInt8(key.count), 0] + key + [UInt8(value.count), 0] + value
        case 4:
            out += [3, 0] + Array("zzz".utf8) + [2, 0] + Array("hi".utf8)
        case 5:
            // Drop the entry starting at a random entry boundary (walk the well-formed block).
            var starts: [Int] = []
            var pos = 0
            while pos + 2 <= out.count {
                starts.append(pos)
                let k = Int(out[pos]) | Int(out[pos + 1]) << 8
                guard pos + 2 + k + 2 <= out.count else { break }
                let v = Int(out[pos + 2 + k]) | Int(out[pos + 3 + k]) << 8
                pos += 4 + k + v
            }
            if let start = starts.randomElement(using: &rng), start < pos {
                let k = Int(out[start]) | Int(out[start + 1]) << 8
                let v = Int(out[start + 2 + k]) | Int(out[start + 3 + k]) << 8
                out.removeSubrange(start..<min(out.count, start + 4 + k + v))
            }
        default:
            let key = Array(["valor", "unix", "pid", "seq", "lord", "checksum"].randomElement(using: &rng)!.utf8)
            out += [UInt8(key.count), 0] + key + [2, 0] + Array("x1".utf8)
        }
        return out
    }

    @Test func randomAnnouncesEncodeToTheSameBytesAndDecodeToTheSameAnnounces() throws {
        var rng = SplitMix64(seed: 0x1e61_0a11)
        for _ in 0..<3000 {
            let announce = Self.randomAnnounce(&rng)
            let bytes = try announce.encodedVars()
            #expect(bytes == (try announce.vars.encode()))
            let (fast, slow) = (Self.onePass(bytes), Self.reference(bytes))
            #expect(fast == slow)
            // What decodes is what was sent (an empty scroll is not sent; a 20-digit number is refused by both, except
            // `lord`, which uWSGI reads leniently: unreadable is 0).
            var sent = announce
            if sent.lord == .max { sent.lord = 0 }
            if case .success(let decoded) = fast, announce.scroll?.isEmpty != true { #expect(decoded == sent) }
        }
    }

    @Test func damagedAnnouncesFailTheSameWayInBothDecoders() throws {
        var rng = SplitMix64(seed: 0xdead_beef)
        var outcomes: [String: Int] = [:]
        for _ in 0..<20_000 {
            var bytes = try Self.randomAnnounce(&rng).encodedVars()
            for _ in 0..<Int.random(in: 1...3, using: &rng) { bytes = Self.damage(bytes, &rng) }
            let (fast, slow) = (Self.onePass(bytes), Self.reference(bytes))
            #expect(fast == slow, "bytes: \(bytes)")
            switch fast {
            case .success: outcomes["decoded", default: 0] += 1
            case .failure(let error): outcomes[error.reason, default: 0] += 1
            }
        }
        // The damage reaches every way of failing (so the comparison above covered them), and some survive it.
        for reason in ["decoded", "malformed", "missing_field", "bad_number", "bad_uuid"] {
            #expect(outcomes[reason, default: 0] > 50, "\(reason): \(outcomes)")
        }
    }

    @Test func oversizedFieldsAreRefusedAsTheReferenceRefusesThem() {
        let big = [UInt8](repeating: 0x61, count: 70_000)
        let a = LegionAnnounce(legion: Array("l".utf8), valor: 1, unix: 1, name: Array("n".utf8), pid: 1, uuid: .none, scroll: big)
        #expect(throws: UwsgiWireError.fieldTooLarge(key: "scroll", size: 70_000)) { try a.encodedVars() }
        #expect(throws: UwsgiWireError.fieldTooLarge(key: "scroll", size: 70_000)) { try a.vars.encode() }
        let wide = LegionAnnounce(legion: Array("l".utf8), valor: 1, unix: 1, name: [UInt8](repeating: 0x62, count: 40_000), pid: 1,
                                  uuid: .none, scroll: [UInt8](repeating: 0x61, count: 40_000))
        var expected: UwsgiWireError?
        do { _ = try wide.vars.encode() } catch { expected = error }
        guard let expected, case .bodyTooLarge = expected else { Issue.record("the reference refuses a body over 64 KiB"); return }
        #expect(throws: expected) { try wide.encodedVars() }
    }
}
