import UwsgiWire

/// Why a received Legion datagram was dropped. Each case maps to a counter in the shell.
public enum LegionPacketError: Error, Equatable, Sendable, CustomStringConvertible {
    case tooShort(Int)
    case notLegion(modifier1: UInt8)
    case decryptFailed
    case lengthMismatch(declared: Int, actual: Int)
    case malformed(UwsgiWireError)
    case missingField(String)
    case badNumber(String)
    case badUUID(String)
    case oversized(Int)
    case wrongLegion
    case stale(skewSeconds: Int64)
    case replayed(seq: UInt64, last: UInt64)
    case missingSequence
    case valorOutOfRange(UInt64)

    /// A short stable name used as a metric label and in rate-limited logs.
    public var reason: String {
        switch self {
        case .tooShort: return "too_short"
        case .notLegion: return "not_legion"
        case .decryptFailed: return "decrypt_failed"
        case .lengthMismatch: return "length_mismatch"
        case .malformed: return "malformed"
        case .missingField: return "missing_field"
        case .badNumber: return "bad_number"
        case .badUUID: return "bad_uuid"
        case .oversized: return "oversized"
        case .wrongLegion: return "wrong_legion"
        case .stale: return "stale"
        case .replayed: return "replayed"
        case .missingSequence: return "missing_sequence"
        case .valorOutOfRange: return "valor_out_of_range"
        }
    }

    public var description: String {
        switch self {
        case .tooShort(let n): return "datagram of \(n) bytes is too short for a Legion packet"
        case .notLegion(let m): return "modifier1 \(m) is not a Legion packet (109)"
        case .decryptFailed: return "could not decrypt: wrong secret/cipher/IV or mode (compat vs native), or a forged packet"
        case .lengthMismatch(let d, let a): return "header declares \(d) cleartext bytes, decrypted \(a)"
        case .malformed(let e): return "cleartext is not a valid vars block: \(e)"
        case .missingField(let k): return "required field '\(k)' is missing"
        case .badNumber(let k): return "field '\(k)' is not a decimal number"
        case .badUUID(let k): return "field '\(k)' is not a 36-byte uuid"
        case .oversized(let n): return "datagram of \(n) bytes exceeds the Legion limit"
        case .wrongLegion: return "announce is for another legion name"
        case .stale(let s): return "announce clock is \(s) s away from ours, outside the skew tolerance (check NTP, or a replayed packet)"
        case .replayed(let s, let l): return "sequence \(s) is not newer than \(l) (replayed or duplicated packet)"
        case .missingSequence: return "native announce without a sequence number"
        case .valorOutOfRange(let v): return "valor \(v) is outside 0...65535 (uWSGI corrupts its member table with it)"
        }
    }
}
