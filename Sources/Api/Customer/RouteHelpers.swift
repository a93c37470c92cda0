import Foundation
import Hummingbird
import Node
import Store

extension JSONInput {
    /// The same value as output JSON.
    var value: JSONValue {
        switch self {
        case .null: .null
        case .bool(let v): .bool(v)
        case .int(let v): .int(v)
        case .number(let v): .double(v)
        case .string(let v): .string(v)
        case .array(let items): .array(items.map(\.value))
        case .object(let fields): .object(fields.sorted { $0.key < $1.key }.map { ($0.key, $0.value.value) })
        }
    }
}

extension DqliteValue {
    /// The value as JSON (blobs as base64).
    public var json: JSONValue {
        switch self {
        case .integer(let v): .int(v)
        case .float(let v): .double(v)
        case .text(let v): .string(v)
        case .boolean(let v): .bool(v)
        case .blob(let b): .string(Data(b).base64EncodedString())
        case .null: .null
        }
    }

    var jsonBool: JSONValue { .bool((int ?? 0) != 0) }

    /// A `json_group_array(...)` column as a JSON array (empty when NULL).
    var jsonArray: JSONValue {
        guard let text = string, let parsed = try? JSONInput.parse(Array(text.utf8)) else { return .array([]) }
        if case .array(let items) = parsed {
            return .array(items.filter { $0 != .null }.map(\.value))
        }
        return .array([])
    }

    var millisAsSeconds: JSONValue { .int((int ?? 0) / 1000) }
}

extension DqliteRows {
    /// Rows as a JSON array of objects keyed by column name.
    public var json: JSONValue {
        .array(rows.map { row in .object(zip(columns, row).map { ($0, $1.json) }) })
    }
}

extension APIRoute.Outcome {
    static func ok(_ schema: JSONValue, _ description: String = "done") -> Self { .init(status: 200, description: description, schema: schema) }
    static let okMessage = Self(status: 200, description: "done", schema: Schema.ref("Message"))
    static let created = Self(status: 201, description: "created", schema: Schema.ref("Created"))
    static func forbidden(_ description: String) -> Self { .init(status: 403, description: description, schema: Schema.ref("Error")) }
    static func notFound(_ description: String) -> Self { .init(status: 404, description: description, schema: Schema.ref("Error")) }
    static func conflict(_ description: String) -> Self { .init(status: 409, description: description, schema: Schema.ref("Error")) }
}

extension APIRoute.QueryParameter {
    static func tags() -> Self {
        .init(name: "tags", schema: Schema.string, description: "comma-separated tag names; items carrying any of them")
    }
}

/// Shared SQL fragments and checks of the customer routes.
enum CustomerSQL {
    static let now = StoreSchema.nowMs

    /// uwsgi.it's hostname: the name with every character outside [A-Za-z0-9-] replaced by '-'.
    static func hostname(_ name: String) -> String {
        String(name.unicodeScalars.map { scalar -> Character in
            scalar.isASCII && (scalar.properties.isAlphabetic || ("0"..."9").contains(scalar) || scalar == "-") ? Character(scalar) : "-"
        })
    }

    /// `?tags=a,b` as a JSON array for `json_each`, or NULL when absent.
    static func tagFilter(_ call: APICall) -> DqliteValue {
        guard let text = call.query["tags"], !text.isEmpty else { return .null }
        let names = text.split(separator: ",").map { JSONValue.string(String($0)) }
        return .text(JSONValue.array(names).serialized)
    }

    /// The tag names given as a JSON array text (for `json_each`).
    static func namesJSON(_ names: [String]) -> DqliteValue { .text(JSONValue.array(names.map { .string($0) }).serialized) }

    /// 403 unless the container is the caller's (uwsgi.it answers 403 for foreign containers).
    static func requireContainer(_ call: APICall, id: Int64) async throws(APIError) {
        let me = try call.me
        let rows = try await call.services.query("SELECT 1 FROM containers WHERE id = ? AND customer_id = ?", [.integer(id), .integer(me.id)])
        if rows.rows.isEmpty { throw .forbidden("container \(id + 30000) is not one of yours") }
    }

    /// The year/month/day query of the metrics routes (default: today, UTC).
    static func day(_ call: APICall) throws(APIError) -> (Int, Int, Int) {
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = TimeZone(identifier: "UTC") ?? .current
        let today = calendar.dateComponents([.year, .month, .day], from: Date())
        func part(_ key: String, _ fallback: Int, _ range: ClosedRange<Int>) throws(APIError) -> Int {
            guard let text = call.query[key] else { return fallback }
            guard let value = Int(text), range.contains(value) else { throw .badRequest("\(key) must be an integer in \(range.lowerBound)...\(range.upperBound)") }
            return value
        }
        return (try part("year", today.year ?? 1970, 1970...9999), try part("month", today.month ?? 1, 1...12), try part("day", today.day ?? 1, 1...31))
    }
}
