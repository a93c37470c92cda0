import Foundation
import UwsgiWire

/// Reads `key=value` lines from a captured-vector text file shipped in Fixtures/.
struct FixtureFile {
    let fields: [String: String]

    init(_ relativePath: String) throws {
        guard let base = Bundle.module.resourceURL?.appendingPathComponent("Fixtures") else {
            throw FixtureError.missing(relativePath)
        }
        let text = try String(contentsOf: base.appendingPathComponent(relativePath), encoding: .utf8)
        var fields: [String: String] = [:]
        for line in text.split(separator: "\n") where !line.hasPrefix("#") {
            guard let eq = line.firstIndex(of: "=") else { continue }
            let key = line[..<eq].trimmingCharacters(in: .whitespaces)
            let value = line[line.index(after: eq)...].split(separator: " ").first.map(String.init) ?? ""
            if fields[key] == nil { fields[key] = value }
        }
        self.fields = fields
    }

    static func names(in folder: String) throws -> [String] {
        guard let base = Bundle.module.resourceURL?.appendingPathComponent("Fixtures").appendingPathComponent(folder) else {
            throw FixtureError.missing(folder)
        }
        return try FileManager.default.contentsOfDirectory(atPath: base.path).filter { $0.hasSuffix(".txt") }.sorted()
    }

    subscript(key: String) -> String? { fields[key] }

    /// The bytes of a hex field, or an error naming the field.
    func bytes(_ key: String) throws -> [UInt8] {
        guard let text = fields[key], let bytes = Hex.decode(text) else { throw FixtureError.missing(key) }
        return bytes
    }
}

enum FixtureError: Error { case missing(String) }

extension FixtureFile {
    static func text(_ relativePath: String) throws -> String {
        guard let base = Bundle.module.resourceURL?.appendingPathComponent("Fixtures") else { throw FixtureError.missing(relativePath) }
        return try String(contentsOf: base.appendingPathComponent(relativePath), encoding: .utf8)
    }

    static func directory(_ relativePath: String) throws -> String {
        guard let base = Bundle.module.resourceURL?.appendingPathComponent("Fixtures") else { throw FixtureError.missing(relativePath) }
        return base.appendingPathComponent(relativePath).path
    }
}
