/// The 4-byte uwsgi packet header: `modifier1`, a little-endian u16 body size, `modifier2`.
public struct UwsgiHeader: Sendable, Equatable {
    public static let size = 4

    public var modifier1: UInt8
    public var dataSize: UInt16
    public var modifier2: UInt8

    public init(modifier1: UInt8, dataSize: UInt16, modifier2: UInt8) {
        self.modifier1 = modifier1
        self.dataSize = dataSize
        self.modifier2 = modifier2
    }

    /// Reads the header from the first four bytes of `bytes`.
    public init<Bytes: RandomAccessCollection>(decoding bytes: Bytes) throws(UwsgiWireError) where Bytes.Element == UInt8 {
        guard bytes.count >= UwsgiHeader.size else {
            throw .truncatedHeader(received: bytes.count)
        }
        let start = bytes.startIndex
        modifier1 = bytes[start]
        let lo = UInt16(bytes[bytes.index(start, offsetBy: 1)])
        let hi = UInt16(bytes[bytes.index(start, offsetBy: 2)])
        dataSize = lo | (hi << 8)
        modifier2 = bytes[bytes.index(start, offsetBy: 3)]
    }

    public func append(to out: inout [UInt8]) {
        out.append(modifier1)
        out.append(UInt8(truncatingIfNeeded: dataSize))
        out.append(UInt8(truncatingIfNeeded: dataSize >> 8))
        out.append(modifier2)
    }

    public var bytes: [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(UwsgiHeader.size)
        append(to: &out)
        return out
    }
}

/// Well-known `modifier1` values (uwsgi-wire spec §1.5).
public enum UwsgiModifier {
    public static let request: UInt8 = 0
    public static let rawHTTPResponse: UInt8 = 72
    public static let legion: UInt8 = 109
    public static let streamingRequest: UInt8 = 123
    public static let subscription: UInt8 = 224
}

/// A whole uwsgi packet: header plus a vars body.
public struct UwsgiPacket: Sendable, Equatable {
    public var modifier1: UInt8
    public var modifier2: UInt8
    public var vars: UwsgiVars

    public init(modifier1: UInt8, modifier2: UInt8 = 0, vars: UwsgiVars) {
        self.modifier1 = modifier1
        self.modifier2 = modifier2
        self.vars = vars
    }

    /// Encodes header + body. Throws when the body exceeds the 65 535-byte limit of the u16 size field.
    public func encode() throws(UwsgiWireError) -> [UInt8] {
        let body = try vars.encode()
        var out: [UInt8] = []
        out.reserveCapacity(UwsgiHeader.size + body.count)
        UwsgiHeader(modifier1: modifier1, dataSize: UInt16(body.count), modifier2: modifier2).append(to: &out)
        out.append(contentsOf: body)
        return out
    }

    /// Strict decode: the header's size must equal the body length that follows, and the body must parse.
    public init<Bytes: RandomAccessCollection>(decoding bytes: Bytes) throws(UwsgiWireError) where Bytes.Element == UInt8 {
        let header = try UwsgiHeader(decoding: bytes)
        let body = bytes.dropFirst(UwsgiHeader.size)
        guard body.count == Int(header.dataSize) else {
            throw .sizeMismatch(declared: Int(header.dataSize), actual: body.count)
        }
        modifier1 = header.modifier1
        modifier2 = header.modifier2
        vars = try UwsgiVars(decoding: body)
    }
}

/// Errors from decoding or encoding uwsgi packets. Messages name the offending byte offset so a
/// captured packet can be inspected with `xxd`.
public enum UwsgiWireError: Error, Equatable, CustomStringConvertible, Sendable {
    case truncatedHeader(received: Int)
    case sizeMismatch(declared: Int, actual: Int)
    case truncatedEntry(offset: Int)
    case emptyKey(offset: Int)
    case bodyTooLarge(size: Int)
    case fieldTooLarge(key: String, size: Int)

    public var description: String {
        switch self {
        case .truncatedHeader(let received):
            return "uwsgi packet too short: \(received) byte(s), a header needs 4"
        case .sizeMismatch(let declared, let actual):
            return "uwsgi header declares a \(declared)-byte body but \(actual) byte(s) follow"
        case .truncatedEntry(let offset):
            return "uwsgi vars block truncated at body offset \(offset): an entry runs past the end"
        case .emptyKey(let offset):
            return "uwsgi vars block has an empty key at body offset \(offset)"
        case .bodyTooLarge(let size):
            return "uwsgi body of \(size) bytes exceeds the 65535-byte limit of the protocol; send fewer or shorter vars"
        case .fieldTooLarge(let key, let size):
            return "uwsgi var '\(key)' is \(size) bytes; keys and values are limited to 65535 bytes"
        }
    }
}
