/// Lower-case hex helpers used by logs, fixtures and tests.
public enum Hex {
    public static func encode<Bytes: Sequence>(_ bytes: Bytes) -> String where Bytes.Element == UInt8 {
        let digits = Array("0123456789abcdef".utf8)
        var out: [UInt8] = []
        for byte in bytes {
            out.append(digits[Int(byte >> 4)])
            out.append(digits[Int(byte & 0x0f)])
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// Decodes hex, ignoring ASCII white space; nil on an odd length or a non-hex character.
    public static func decode(_ text: String) -> [UInt8]? {
        var out: [UInt8] = []
        var high: UInt8?
        for char in text.utf8 {
            if char == 0x20 || char == 0x0a || char == 0x0d || char == 0x09 { continue }
            let nibble: UInt8
            switch char {
            case 0x30...0x39: nibble = char - 0x30
            case 0x61...0x66: nibble = char - 0x61 + 10
            case 0x41...0x46: nibble = char - 0x41 + 10
            default: return nil
            }
            if let h = high {
                out.append(h << 4 | nibble)
                high = nil
            } else {
                high = nibble
            }
        }
        return high == nil ? out : nil
    }
}
