import Foundation

/// Binds parameters into SQL text as literals, for the one-request group commit (a dqlite EXEC with several
/// statements binds parameters to the first one only).
///
/// SQLite literals have no escapes besides a doubled quote, so a text value is `'…'` with `'` doubled; integers
/// as digits, blobs as `X'…'`, NULL as NULL. Values that have no exact literal (NaN, infinities, text with NUL)
/// and SQL with named parameters return nil: such writes take the bound-parameter path.
enum SQLLiteral {
    static func literal(_ value: DqliteValue) -> String? {
        switch value {
        case .integer(let v): return String(v)
        case .boolean(let v): return v ? "1" : "0"
        case .null: return "NULL"
        case .float(let v):
            guard v.isFinite else { return nil }
            return "\(v)"
        case .text(let v):
            guard !v.utf8.contains(0) else { return nil }
            return "'" + v.replacingOccurrences(of: "'", with: "''") + "'"
        case .blob(let bytes):
            let hex: [Character] = Array("0123456789abcdef")
            var out = "X'"
            out.reserveCapacity(bytes.count * 2 + 3)
            for byte in bytes {
                out.append(hex[Int(byte >> 4)])
                out.append(hex[Int(byte & 0x0f)])
            }
            return out + "'"
        }
    }

    /// `sql` with every `?` / `?NNN` outside quotes and comments replaced by its parameter's literal; nil when a
    /// parameter is missing or unused, a name is used (`:a`, `@a`, `$a`), or a value has no literal.
    static func inline(_ sql: String, _ parameters: [DqliteValue]) -> String? {
        let literals = parameters.map(literal)
        if literals.contains(where: { $0 == nil }) { return nil }
        let chars = Array(sql.unicodeScalars)
        var out = String.UnicodeScalarView()
        var used = Set<Int>()
        var highest = 0
        var i = 0
        func copyUntil(_ end: Unicode.Scalar) {
            out.append(chars[i])
            i += 1
            while i < chars.count {
                out.append(chars[i])
                if chars[i] == end {
                    // A doubled quote stays inside the literal.
                    if i + 1 < chars.count, chars[i + 1] == end, end != "]" {
                        out.append(chars[i + 1])
                        i += 2
                        continue
                    }
                    i += 1
                    return
                }
                i += 1
            }
        }
        while i < chars.count {
            let c = chars[i]
            switch c {
            case "'", "\"", "`": copyUntil(c)
            case "[": copyUntil("]")
            case "-" where i + 1 < chars.count && chars[i + 1] == "-":
                while i < chars.count, chars[i] != "\n" { out.append(chars[i]); i += 1 }
            case "/" where i + 1 < chars.count && chars[i + 1] == "*":
                out.append(chars[i]); out.append(chars[i + 1]); i += 2
                while i < chars.count, !(chars[i] == "*" && i + 1 < chars.count && chars[i + 1] == "/") { out.append(chars[i]); i += 1 }
                if i < chars.count { out.append(chars[i]); out.append(chars[i + 1]); i += 2 }
            case ":", "@", "$":
                if i + 1 < chars.count, chars[i + 1].properties.isAlphabetic || chars[i + 1] == "_" { return nil }
                out.append(c)
                i += 1
            case "?":
                i += 1
                var digits = ""
                while i < chars.count, ("0"..."9").contains(chars[i]) { digits.unicodeScalars.append(chars[i]); i += 1 }
                let number = digits.isEmpty ? highest + 1 : (Int(digits) ?? 0)
                guard number >= 1, number <= literals.count, let text = literals[number - 1] else { return nil }
                highest = max(highest, number)
                used.insert(number)
                out.append(contentsOf: text.unicodeScalars)
            default:
                out.append(c)
                i += 1
            }
        }
        guard used.count == literals.count else { return nil }
        return String(out)
    }
}

/// A JSON array of request ids (validated: letters, digits and `-_.:` only, so no escaping is needed).
enum JSONArrayOfIDs {
    static func make(_ ids: [String]) -> String {
        "[" + ids.map { "\"\($0)\"" }.joined(separator: ",") + "]"
    }
}
