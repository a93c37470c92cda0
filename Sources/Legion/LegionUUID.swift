import UwsgiWire

/// A Legion member uuid: exactly 36 bytes on the wire (libuuid's lower-case text form), or 36 NUL
/// bytes for "nobody" (spec §2.3). Ordered by byte-wise comparison, as uWSGI's `uwsgi_uuid_cmp`.
public struct LegionUUID: Hashable, Sendable, Comparable, CustomStringConvertible {
    public static let length = 36
    public static let none = LegionUUID(unchecked: [UInt8](repeating: 0, count: length))

    public let bytes: [UInt8]

    private init(unchecked bytes: [UInt8]) { self.bytes = bytes }

    /// nil unless `bytes` is exactly 36 bytes long.
    public init?(bytes: [UInt8]) {
        guard bytes.count == LegionUUID.length else { return nil }
        self.bytes = bytes
    }

    public init?(_ text: String) { self.init(bytes: Array(text.utf8)) }

    /// A fresh random version-4 uuid in canonical lower-case form.
    public static func random<G: RandomNumberGenerator>(using generator: inout G) -> LegionUUID {
        var raw = (0..<16).map { _ in UInt8.random(in: 0...255, using: &generator) }
        raw[6] = (raw[6] & 0x0f) | 0x40
        raw[8] = (raw[8] & 0x3f) | 0x80
        let hex = Array(Hex.encode(raw).utf8)
        var out: [UInt8] = []
        out.reserveCapacity(length)
        for (index, char) in hex.enumerated() {
            if index == 8 || index == 12 || index == 16 || index == 20 { out.append(0x2d) }
            out.append(char)
        }
        return LegionUUID(unchecked: out)
    }

    public static func random() -> LegionUUID {
        var generator = SystemRandomNumberGenerator()
        return random(using: &generator)
    }

    public var isNone: Bool { bytes.allSatisfy { $0 == 0 } }

    /// Byte sum as uWSGI's checksum computes it (C `char`, signed on x86).
    public var checksumContribution: UInt64 {
        bytes.reduce(UInt64(0)) { $0 &+ UInt64(bitPattern: Int64(Int8(bitPattern: $1))) }
    }

    public static func < (lhs: LegionUUID, rhs: LegionUUID) -> Bool {
        lhs.bytes.lexicographicallyPrecedes(rhs.bytes)
    }

    public var description: String {
        isNone ? "-" : String(decoding: bytes, as: UTF8.self)
    }
}
