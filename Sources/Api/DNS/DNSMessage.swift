/// DNS wire format, only as much as the domain ownership check needs: a TXT query and its answer (RFC 1035).
public enum DNSMessage {
    public enum ParseError: Error, Equatable, CustomStringConvertible {
        case truncated
        case mismatchedID
        case badName
        case serverFailure(rcode: Int)

        public var description: String {
            switch self {
            case .truncated: "the DNS answer was cut short"
            case .mismatchedID: "the DNS answer does not belong to our query"
            case .badName: "the DNS answer holds a malformed name"
            case .serverFailure(let rcode): "the DNS server answered with error code \(rcode)"
            }
        }
    }

    public static let typeTXT: UInt16 = 16

    /// A recursive query for `name`'s TXT records; nil when the name cannot be encoded.
    public static func query(id: UInt16, name: String, type: UInt16 = typeTXT) -> [UInt8]? {
        var out: [UInt8] = [UInt8(id >> 8), UInt8(id & 0xff), 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]
        for label in name.split(separator: ".") {
            let bytes = Array(label.utf8)
            guard !bytes.isEmpty, bytes.count <= 63 else { return nil }
            out.append(UInt8(bytes.count))
            out += bytes
        }
        out.append(0)
        guard out.count <= 12 + 255 else { return nil }
        out += [UInt8(type >> 8), UInt8(type & 0xff), 0, 1]
        return out
    }

    /// The TXT strings of an answer (each record's character-strings joined, as resolvers present them).
    /// NXDOMAIN and empty answers give an empty list.
    public static func txtStrings(answer bytes: [UInt8], id: UInt16) throws(ParseError) -> [String] {
        guard bytes.count >= 12 else { throw .truncated }
        guard UInt16(bytes[0]) << 8 | UInt16(bytes[1]) == id else { throw .mismatchedID }
        let rcode = Int(bytes[3] & 0x0f)
        if rcode == 3 { return [] }
        if rcode != 0 { throw .serverFailure(rcode: rcode) }
        let questions = Int(UInt16(bytes[4]) << 8 | UInt16(bytes[5]))
        let answers = Int(UInt16(bytes[6]) << 8 | UInt16(bytes[7]))
        var offset = 12
        for _ in 0..<questions {
            offset = try skipName(bytes, offset)
            offset += 4
        }
        var texts: [String] = []
        for _ in 0..<answers {
            offset = try skipName(bytes, offset)
            guard offset + 10 <= bytes.count else { throw .truncated }
            let type = UInt16(bytes[offset]) << 8 | UInt16(bytes[offset + 1])
            let length = Int(UInt16(bytes[offset + 8]) << 8 | UInt16(bytes[offset + 9]))
            offset += 10
            guard offset + length <= bytes.count else { throw .truncated }
            if type == typeTXT {
                var text: [UInt8] = []
                var cursor = offset
                while cursor < offset + length {
                    let count = Int(bytes[cursor])
                    guard cursor + 1 + count <= offset + length else { throw .truncated }
                    text += bytes[(cursor + 1)..<(cursor + 1 + count)]
                    cursor += 1 + count
                }
                texts.append(String(decoding: text, as: UTF8.self))
            }
            offset += length
        }
        return texts
    }

    static func skipName(_ bytes: [UInt8], _ start: Int) throws(ParseError) -> Int {
        var offset = start
        var labels = 0
        while true {
            guard offset < bytes.count else { throw .truncated }
            let length = bytes[offset]
            if length == 0 { return offset + 1 }
            if length & 0xc0 == 0xc0 { return offset + 2 }  // a compression pointer ends the name
            guard length & 0xc0 == 0 else { throw .badName }
            offset += 1 + Int(length)
            labels += 1
            if labels > 127 { throw .badName }
        }
    }
}
