import TOMLKit

/// Strict reading of one TOML table: every key must be known, every value of the right type, and
/// every error names the full key (`legion.valor`) and what to do.
struct ConfigTable {
    let path: String
    let table: TOMLTable
    private(set) var known: Set<String> = []

    init(path: String, table: TOMLTable) {
        self.path = path
        self.table = table
    }

    func key(_ name: String) -> String { path.isEmpty ? name : "\(path).\(name)" }

    private mutating func value(_ name: String) -> TOMLValueConvertible? {
        known.insert(name)
        return table[name]
    }

    mutating func string(_ name: String) throws(NodeConfigError) -> String? {
        guard let v = value(name) else { return nil }
        guard let s = v.string else { throw .wrongType(key: key(name), expected: "a string", found: v.type.description) }
        return s
    }

    mutating func requiredString(_ name: String, hint: String) throws(NodeConfigError) -> String {
        guard let s = try string(name) else { throw .missing(key: key(name), hint: hint) }
        guard !s.isEmpty else { throw .invalid(key: key(name), problem: "must not be empty; \(hint)") }
        return s
    }

    mutating func int(_ name: String, range: ClosedRange<Int>) throws(NodeConfigError) -> Int? {
        guard let v = value(name) else { return nil }
        guard let i = v.int else { throw .wrongType(key: key(name), expected: "an integer", found: v.type.description) }
        guard range.contains(i) else {
            throw .invalid(key: key(name), problem: "\(i) is out of range; use \(range.lowerBound)...\(range.upperBound)")
        }
        return i
    }

    mutating func double(_ name: String, range: ClosedRange<Double>) throws(NodeConfigError) -> Double? {
        guard let v = value(name) else { return nil }
        let d: Double
        if let x = v.double { d = x } else if let i = v.int { d = Double(i) } else {
            throw .wrongType(key: key(name), expected: "a number", found: v.type.description)
        }
        guard range.contains(d) else { throw .invalid(key: key(name), problem: "\(d) is out of range; use \(range.lowerBound)...\(range.upperBound)") }
        return d
    }

    mutating func bool(_ name: String) throws(NodeConfigError) -> Bool? {
        guard let v = value(name) else { return nil }
        guard let b = v.bool else { throw .wrongType(key: key(name), expected: "true or false", found: v.type.description) }
        return b
    }

    mutating func stringArray(_ name: String) throws(NodeConfigError) -> [String]? {
        guard let v = value(name) else { return nil }
        guard let array = v.array else { throw .wrongType(key: key(name), expected: "an array of strings", found: v.type.description) }
        var out: [String] = []
        for (index, element) in array.enumerated() {
            guard let s = element.string else {
                throw .wrongType(key: "\(key(name))[\(index)]", expected: "a string", found: element.type.description)
            }
            out.append(s)
        }
        return out
    }

    mutating func subtable(_ name: String) throws(NodeConfigError) -> ConfigTable? {
        guard let v = value(name) else { return nil }
        guard let t = v.table else { throw .wrongType(key: key(name), expected: "a table [\(key(name))]", found: v.type.description) }
        return ConfigTable(path: key(name), table: t)
    }

    /// Call after reading: any key not read is an error (typos must not be silently ignored).
    func rejectUnknownKeys() throws(NodeConfigError) {
        for k in table.keys.sorted() where !known.contains(k) {
            let allowed = known.sorted().joined(separator: ", ")
            throw .unknownKey(key: key(k), allowed: allowed)
        }
    }
}
