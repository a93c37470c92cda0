import Foundation
import UwsgiWire

/// Reads `key=value` lines from a captured-vector text file (the format of `../shared/vectors`),
/// copied into a test target's `Fixtures/` folder. Each test target passes its own bundle.
public struct FixtureFile {
    public let fields: [String: String]

    public init(_ relativePath: String, bundle: Bundle) throws {
        let text = try FixtureFile.text(relativePath, bundle: bundle)
        var fields: [String: String] = [:]
        for line in text.split(separator: "\n") where !line.hasPrefix("#") {
            guard let eq = line.firstIndex(of: "=") else { continue }
            let key = line[..<eq].trimmingCharacters(in: .whitespaces)
            let value = line[line.index(after: eq)...].split(separator: " ").first.map(String.init) ?? ""
            if fields[key] == nil { fields[key] = value }
        }
        self.fields = fields
    }

    public static func base(_ bundle: Bundle) throws -> URL {
        guard let base = bundle.resourceURL?.appendingPathComponent("Fixtures") else { throw FixtureError.missing("Fixtures") }
        return base
    }

    public static func names(in folder: String, bundle: Bundle) throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: base(bundle).appendingPathComponent(folder).path)
            .filter { $0.hasSuffix(".txt") }.sorted()
    }

    public static func text(_ relativePath: String, bundle: Bundle) throws -> String {
        try String(contentsOf: base(bundle).appendingPathComponent(relativePath), encoding: .utf8)
    }

    public subscript(key: String) -> String? { fields[key] }

    /// The bytes of a hex field, or an error naming the field.
    public func bytes(_ key: String) throws -> [UInt8] {
        guard let text = fields[key], let bytes = Hex.decode(text) else { throw FixtureError.missing(key) }
        return bytes
    }
}

public enum FixtureError: Error { case missing(String) }
