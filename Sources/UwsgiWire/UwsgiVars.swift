/// A uwsgi "vars" block: an ordered list of byte-string key/value pairs, each as
/// `u16le key length | key | u16le value length | value`, with no count and no terminator.
///
/// Order and duplicates are preserved; scalar look-ups return the **last** occurrence, as uWSGI's
/// parsers do (spec §1.2).
public struct UwsgiVars: Sendable, Equatable {
    public struct Entry: Sendable, Equatable {
        public var key: [UInt8]
        public var value: [UInt8]
        public init(key: [UInt8], value: [UInt8]) {
            self.key = key
            self.value = value
        }
    }

    public private(set) var entries: [Entry]

    public init() { entries = [] }
    public init(_ entries: [Entry]) { self.entries = entries }

    public mutating func append(_ key: String, _ value: String) {
        entries.append(Entry(key: Array(key.utf8), value: Array(value.utf8)))
    }

    public mutating func append(_ key: String, _ value: [UInt8]) {
        entries.append(Entry(key: Array(key.utf8), value: value))
    }

    /// Integers go on the wire as plain decimal ASCII (no padding, no sign for non-negatives).
    public mutating func append<I: BinaryInteger>(_ key: String, number: I) {
        entries.append(Entry(key: Array(key.utf8), value: UwsgiVars.decimal(number)))
    }

    /// `number` in decimal ASCII, written straight into bytes (announces carry a dozen numbers several times a
    /// second; no String on the way).
    static func decimal<I: BinaryInteger>(_ number: I) -> [UInt8] {
        guard var value = UInt64(exactly: number) else { return Array(String(number).utf8) }
        if value == 0 { return [0x30] }
        var digits = [UInt8](repeating: 0, count: 20)
        var start = 20
        while value > 0 {
            start -= 1
            digits[start] = 0x30 &+ UInt8(truncatingIfNeeded: value % 10)
            value /= 10
        }
        return Array(digits[start...])
    }

    /// The last value stored under `key`, or nil.
    public subscript(key: String) -> [UInt8]? {
        var key = key
        return key.withUTF8 { k -> [UInt8]? in
            for entry in entries.reversed() where entry.key.count == k.count && entry.key.elementsEqual(k) {
                return entry.value
            }
            return nil
        }
    }

    public func string(_ key: String) -> String? {
        self[key].map { String(decoding: $0, as: UTF8.self) }
    }

    /// Parses a strictly decimal value (`[0-9]+`, at most 19 digits); anything else is nil.
    public func number(_ key: String) -> UInt64? {
        guard let raw = self[key] else { return nil }
        return UwsgiVars.parseDecimal(raw)
    }

    /// `[0-9]+`, at most 19 digits, as a number; anything else is nil. Generic (and inlinable) so slices of a datagram
    /// parse in place.
    @inlinable
    public static func parseDecimal<Digits: Collection<UInt8>>(_ raw: Digits) -> UInt64? {
        guard !raw.isEmpty, raw.count <= 19 else { return nil }
        var value: UInt64 = 0
        for byte in raw {
            guard byte >= 0x30, byte <= 0x39 else { return nil }
            value = value &* 10 &+ UInt64(byte - 0x30)
        }
        return value
    }

    /// Size of the encoded block in bytes.
    public var encodedSize: Int {
        entries.reduce(0) { $0 + 4 + $1.key.count + $1.value.count }
    }

    public func encode() throws(UwsgiWireError) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(encodedSize)
        for entry in entries {
            guard entry.key.count <= Int(UInt16.max) else {
                throw .fieldTooLarge(key: String(decoding: entry.key.prefix(32), as: UTF8.self), size: entry.key.count)
            }
            guard entry.value.count <= Int(UInt16.max) else {
                throw .fieldTooLarge(key: String(decoding: entry.key.prefix(32), as: UTF8.self), size: entry.value.count)
            }
            UwsgiVars.appendU16(UInt16(entry.key.count), to: &out)
            out.append(contentsOf: entry.key)
            UwsgiVars.appendU16(UInt16(entry.value.count), to: &out)
            out.append(contentsOf: entry.value)
        }
        guard out.count <= Int(UInt16.max) else { throw .bodyTooLarge(size: out.count) }
        return out
    }

    /// Strict decode of a whole block: every entry must be complete and every key non-empty.
    /// Unknown and duplicate keys are kept.
    public init<Bytes: RandomAccessCollection>(decoding bytes: Bytes) throws(UwsgiWireError) where Bytes.Element == UInt8 {
        var parsed: [Entry] = []
        let (complete, failure) = UwsgiVars.scan(bytes) { parsed.append($0) }
        if !complete, let failure { throw failure }
        entries = parsed
    }

    /// uWSGI's incremental parse (`uwsgi_hooked_parse`): entries before a corrupt tail are still
    /// delivered. Returns the entries that parsed and the error that stopped parsing, if any.
    public static func decodePrefix<Bytes: RandomAccessCollection>(_ bytes: Bytes) -> (UwsgiVars, UwsgiWireError?) where Bytes.Element == UInt8 {
        var parsed: [Entry] = []
        let (_, failure) = scan(bytes) { parsed.append($0) }
        return (UwsgiVars(parsed), failure)
    }

    private static func scan<Bytes: RandomAccessCollection>(_ bytes: Bytes, deliver: (Entry) -> Void) -> (Bool, UwsgiWireError?) where Bytes.Element == UInt8 {
        let buffer = Array(bytes)
        let length = buffer.count
        var pos = 0
        while pos < length {
            let entryStart = pos
            guard length - pos > 2 else { return (false, .truncatedEntry(offset: entryStart)) }
            let keyLength = Int(buffer[pos]) | (Int(buffer[pos + 1]) << 8)
            pos += 2
            guard keyLength > 0 else { return (false, .emptyKey(offset: entryStart)) }
            guard pos + keyLength <= length else { return (false, .truncatedEntry(offset: entryStart)) }
            let key = Array(buffer[pos..<(pos + keyLength)])
            pos += keyLength
            guard pos + 2 <= length else { return (false, .truncatedEntry(offset: entryStart)) }
            let valueLength = Int(buffer[pos]) | (Int(buffer[pos + 1]) << 8)
            pos += 2
            guard pos + valueLength <= length else { return (false, .truncatedEntry(offset: entryStart)) }
            let value = Array(buffer[pos..<(pos + valueLength)])
            pos += valueLength
            deliver(Entry(key: key, value: value))
        }
        return (true, nil)
    }

    private static func appendU16(_ value: UInt16, to out: inout [UInt8]) {
        out.append(UInt8(truncatingIfNeeded: value))
        out.append(UInt8(truncatingIfNeeded: value >> 8))
    }
}
