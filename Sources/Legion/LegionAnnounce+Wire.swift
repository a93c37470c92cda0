import UwsgiWire

/// The announce's cleartext written and read in one pass over one buffer — what `vars.encode()` and
/// `init(vars: UwsgiVars(decoding:))` give, byte for byte and error for error (a test holds them together), without the
/// key/value arrays in between: every node handles one announce from each member every heartbeat, and on an idle
/// node that path is most of its work.
extension LegionAnnounce {
    /// The keys this type reads and writes, in `vars` order; a field's index is its place here.
    static let wireKeys: [[UInt8]] = [
        "legion", "valor", "unix", "lord", "name", "pid", "uuid", "checksum", "lord_valor", "lord_uuid", "scroll", "dead",
        "seq", "ack", "unix_ms", "lease_ms", "heard",
    ].map { Array($0.utf8) }

    private enum Key: Int {
        case legion, valor, unix, lord, name, pid, uuid, checksum, lordValor, lordUUID, scroll, dead, seq, ack, unixMs, leaseMs, heard
    }

    /// `vars.encode()`, written straight into one buffer.
    public func encodedVars() throws(UwsgiWireError) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(256 + legion.count + name.count + (scroll?.count ?? 0))
        try Self.put(.legion, legion, into: &out)
        Self.put(.valor, number: valor, into: &out)
        Self.put(.unix, number: unix, into: &out)
        Self.put(.lord, number: lord, into: &out)
        try Self.put(.name, name, into: &out)
        Self.put(.pid, number: pid, into: &out)
        try Self.put(.uuid, uuid.bytes, into: &out)
        Self.put(.checksum, number: checksum, into: &out)
        Self.put(.lordValor, number: lordValor, into: &out)
        try Self.put(.lordUUID, lordUUID.bytes, into: &out)
        if let scroll, !scroll.isEmpty { try Self.put(.scroll, scroll, into: &out) }
        if dead { try Self.put(.dead, [0x31], into: &out) }
        if let seq { Self.put(.seq, number: seq, into: &out) }
        if let ack { Self.put(.ack, number: ack, into: &out) }
        if let unixMs { Self.put(.unixMs, number: unixMs, into: &out) }
        if let leaseMs { Self.put(.leaseMs, number: leaseMs, into: &out) }
        if let heard { Self.put(.heard, number: heard, into: &out) }
        guard out.count <= Int(UInt16.max) else { throw .bodyTooLarge(size: out.count) }
        return out
    }

    private static func put(_ key: Key, _ value: [UInt8], into out: inout [UInt8]) throws(UwsgiWireError) {
        let name = wireKeys[key.rawValue]
        guard value.count <= Int(UInt16.max) else { throw .fieldTooLarge(key: String(decoding: name, as: UTF8.self), size: value.count) }
        putLength(name.count, into: &out)
        out.append(contentsOf: name)
        putLength(value.count, into: &out)
        out.append(contentsOf: value)
    }

    private static func put(_ key: Key, number: UInt64, into out: inout [UInt8]) {
        let name = wireKeys[key.rawValue]
        putLength(name.count, into: &out)
        out.append(contentsOf: name)
        var digits = 1
        var rest = number / 10
        while rest > 0 {
            digits += 1
            rest /= 10
        }
        putLength(digits, into: &out)
        let end = out.count + digits
        out.append(contentsOf: repeatElement(0x30, count: digits))
        var value = number
        var at = end - 1
        repeat {
            out[at] = 0x30 &+ UInt8(truncatingIfNeeded: value % 10)
            value /= 10
            at -= 1
        } while value > 0
    }

    private static func putLength(_ count: Int, into out: inout [UInt8]) {
        out.append(UInt8(truncatingIfNeeded: count))
        out.append(UInt8(truncatingIfNeeded: count >> 8))
    }

    /// `init(vars: UwsgiVars(decoding: bytes))` in one pass: the block must be whole (every entry complete, every key
    /// non-empty), unknown keys are skipped, the last of duplicate keys wins, and the fields are checked in the same
    /// order with the same errors.
    public init(decodingVars bytes: [UInt8]) throws(LegionPacketError) {
        // Where each known key's last value starts and how long it is (start -1: absent).
        var starts = InlineArray<17, Int>(repeating: -1)
        var lengths = InlineArray<17, Int>(repeating: 0)
        let length = bytes.count
        var pos = 0
        while pos < length {
            let entryStart = pos
            guard length - pos > 2 else { throw .malformed(.truncatedEntry(offset: entryStart)) }
            let keyLength = Int(bytes[pos]) | (Int(bytes[pos + 1]) << 8)
            pos += 2
            guard keyLength > 0 else { throw .malformed(.emptyKey(offset: entryStart)) }
            guard pos + keyLength <= length else { throw .malformed(.truncatedEntry(offset: entryStart)) }
            let keyStart = pos
            pos += keyLength
            guard pos + 2 <= length else { throw .malformed(.truncatedEntry(offset: entryStart)) }
            let valueLength = Int(bytes[pos]) | (Int(bytes[pos + 1]) << 8)
            pos += 2
            guard pos + valueLength <= length else { throw .malformed(.truncatedEntry(offset: entryStart)) }
            if let index = Self.keyIndex(bytes, at: keyStart, count: keyLength) {
                starts[index] = pos
                lengths[index] = valueLength
            }
            pos += valueLength
        }
        func value(_ key: Key) -> ArraySlice<UInt8>? {
            let start = starts[key.rawValue]
            return start < 0 ? nil : bytes[start..<(start + lengths[key.rawValue])]
        }
        func required(_ key: Key) throws(LegionPacketError) -> [UInt8] {
            guard let raw = value(key) else { throw .missingField(Self.keyName(key)) }
            return Array(raw)
        }
        func number(_ key: Key) throws(LegionPacketError) -> UInt64? {
            guard let raw = value(key) else { return nil }
            guard let parsed = UwsgiVars.parseDecimal(raw) else { throw .badNumber(Self.keyName(key)) }
            return parsed
        }
        func requiredNumber(_ key: Key) throws(LegionPacketError) -> UInt64 {
            guard let parsed = try number(key) else { throw .missingField(Self.keyName(key)) }
            return parsed
        }
        let legion = try required(.legion)
        let valor = try requiredNumber(.valor)
        let unix = try requiredNumber(.unix)
        let lord = (try? number(.lord)) ?? 0
        let name = try required(.name)
        let pid = try number(.pid) ?? 0
        guard let uuid = LegionUUID(bytes: try required(.uuid)) else { throw .badUUID("uuid") }
        let checksum = try number(.checksum) ?? 0
        let lordValor = try number(.lordValor) ?? 0
        let lordUUID = value(.lordUUID).flatMap { LegionUUID(bytes: Array($0)) } ?? .none
        let scroll = value(.scroll).map { Array($0) }
        let dead = value(.dead) != nil
        self.init(legion: legion, valor: valor, unix: unix, lord: lord, name: name, pid: pid, uuid: uuid, checksum: checksum,
                  lordValor: lordValor, lordUUID: lordUUID, scroll: scroll, dead: dead,
                  seq: try number(.seq), ack: try number(.ack), unixMs: try number(.unixMs), leaseMs: try number(.leaseMs),
                  heard: try number(.heard))
    }

    private static func keyName(_ key: Key) -> String { String(decoding: wireKeys[key.rawValue], as: UTF8.self) }

    private static func keyIndex(_ bytes: [UInt8], at start: Int, count: Int) -> Int? {
        guard count <= 10 else { return nil }   // the longest known key is "lord_valor"
        for (index, key) in wireKeys.enumerated() where key.count == count {
            var same = true
            for i in 0..<count where bytes[start + i] != key[i] {
                same = false
                break
            }
            if same { return index }
        }
        return nil
    }
}
