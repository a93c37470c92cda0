import Foundation
import Node

/// A parsed JSON request body (booleans, integers and other numbers kept apart so type checks are exact).
public indirect enum JSONInput: Sendable, Equatable, Decodable {
    case null
    case bool(Bool)
    case int(Int64)
    case number(Double)
    case string(String)
    case array([JSONInput])
    case object([String: JSONInput])

    public init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        if container.decodeNil() { self = .null; return }
        if let value = try? container.decode(Bool.self) { self = .bool(value); return }
        if let value = try? container.decode(Int64.self) { self = .int(value); return }
        if let value = try? container.decode(Double.self) { self = .number(value); return }
        if let value = try? container.decode(String.self) { self = .string(value); return }
        if let value = try? container.decode([JSONInput].self) { self = .array(value); return }
        self = .object(try container.decode([String: JSONInput].self))
    }

    var typeName: String {
        switch self {
        case .null: "null"
        case .bool: "a boolean"
        case .int, .number: "a number"
        case .string: "a string"
        case .array: "an array"
        case .object: "an object"
        }
    }

    /// Parses a body; empty or malformed bodies are the caller's mistake, said plainly.
    static func parse(_ bytes: [UInt8]) throws(APIError) -> JSONInput {
        if bytes.allSatisfy({ $0 == 0x20 || $0 == 0x0a || $0 == 0x0d || $0 == 0x09 }) {
            throw .badRequest("the request body is empty; send a JSON object")
        }
        do {
            return try JSONDecoder().decode(JSONInput.self, from: Data(bytes))
        } catch let DecodingError.dataCorrupted(context) {
            let detail = (context.underlyingError as NSError?)?.userInfo[NSDebugDescriptionErrorKey] as? String ?? context.debugDescription
            throw .badRequest("the request body is not valid JSON: \(detail)")
        } catch {
            throw .badRequest("the request body is not valid JSON")
        }
    }
}

/// Reads the fields of a JSON object body with exact types; unknown fields are refused with the list of
/// accepted ones (uwsgi.it ignored them silently, so a typo looked like success).
public struct BodyReader: Sendable {
    let fields: [String: JSONInput]

    init(_ input: JSONInput, allowed: Set<String>) throws(APIError) {
        guard case .object(let fields) = input else {
            throw .badRequest("the request body must be a JSON object, not \(input.typeName)")
        }
        let unknown = fields.keys.filter { !allowed.contains($0) }.sorted()
        if !unknown.isEmpty {
            throw .badRequest("unknown field\(unknown.count > 1 ? "s" : "") \(unknown.joined(separator: ", ")); accepted: \(allowed.sorted().joined(separator: ", "))")
        }
        self.fields = fields
    }

    func has(_ key: String) -> Bool { fields[key] != nil }

    /// A string, or nil when absent. `null` clears a nullable field: `.some(nil)`.
    func nullableString(_ key: String, max: Int = 255) throws(APIError) -> String?? {
        guard let value = fields[key] else { return nil }
        if case .null = value { return .some(nil) }
        return .some(try string(key, max: max))
    }

    func string(_ key: String, max: Int = 255) throws(APIError) -> String? {
        guard let value = fields[key] else { return nil }
        guard case .string(let text) = value else { throw .badRequest("\(key) must be a string, not \(value.typeName)") }
        if text.utf8.count > max { throw .badRequest("\(key) is longer than \(max) bytes") }
        if text.unicodeScalars.contains(where: { $0.value == 0 }) { throw .badRequest("\(key) contains a NUL character") }
        return text
    }

    func requiredString(_ key: String, max: Int = 255) throws(APIError) -> String {
        guard let text = try string(key, max: max) else { throw .forbidden("\(key) is required") }
        return text
    }

    /// An integer; a string of digits is accepted too (uwsgi.it's clients send uids both ways).
    func int(_ key: String, range: ClosedRange<Int64> = Int64.min...Int64.max) throws(APIError) -> Int64? {
        guard let value = fields[key] else { return nil }
        let number: Int64
        switch value {
        case .int(let v): number = v
        case .string(let s) where Int64(s) != nil: number = Int64(s) ?? 0
        default: throw .badRequest("\(key) must be an integer, not \(value.typeName)")
        }
        guard range.contains(number) else { throw .badRequest("\(key) must be between \(range.lowerBound) and \(range.upperBound) (got \(number))") }
        return number
    }

    /// A boolean; 0/1 are accepted as uwsgi.it's Django form did.
    func bool(_ key: String) throws(APIError) -> Bool? {
        guard let value = fields[key] else { return nil }
        switch value {
        case .bool(let v): return v
        case .int(0): return false
        case .int(1): return true
        default: throw .badRequest("\(key) must be true or false, not \(value.typeName)")
        }
    }

    func stringList(_ key: String, maxItems: Int = 1000, maxLength: Int = 4096) throws(APIError) -> [String]? {
        guard let value = fields[key] else { return nil }
        guard case .array(let items) = value else { throw .badRequest("\(key) must be a list of strings, not \(value.typeName)") }
        if items.count > maxItems { throw .badRequest("\(key) has more than \(maxItems) items") }
        var out: [String] = []
        for item in items {
            guard case .string(let text) = item else { throw .badRequest("every item of \(key) must be a string (found \(item.typeName))") }
            if text.utf8.count > maxLength { throw .badRequest("an item of \(key) is longer than \(maxLength) bytes") }
            out.append(text)
        }
        return out
    }
}
