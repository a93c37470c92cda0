import Foundation
import Node

/// The OpenAPI 3.1 document of the HTTP API, built from the route table itself (`APIRoute`), so every served
/// route is documented and nothing documented is missing; served at `/api/openapi.json`.
public enum OpenAPIDocument {
    /// Errors any route may answer besides its own outcomes.
    static let commonErrors: [(Int, String)] = [
        (400, "malformed JSON, a wrong type or an unknown field (the reason says which)"),
        (413, "the body is larger than 64 KiB"),
        (503, "the store has no quorum right now; retry"),
    ]
    static let authErrors: [(Int, String)] = [
        (401, "missing or wrong credentials"),
        (429, "too many failed logins from this client or for this user; see Retry-After"),
    ]

    public static func build(_ routes: [APIRoute]) -> JSONValue {
        var paths: [(String, [(String, JSONValue)])] = []
        for route in routes {
            let operation = self.operation(route)
            let method = route.method.rawValue.lowercased()
            if let index = paths.firstIndex(where: { $0.0 == route.path }) {
                precondition(!paths[index].1.contains { $0.0 == method }, "one handler per method and path: \(route.method) \(route.path)")
                paths[index].1.append((method, operation))
            } else {
                paths.append((route.path, [(method, operation)]))
            }
        }
        return .object([
            ("openapi", .string("3.1.0")),
            ("info", .object([
                ("title", .string("legion customer API (uwsgi.it-compatible, /api) and admin API (/admin)")),
                ("version", .string("1.0.0")),
                ("description", .string("Every node answers from the replicated store. Writes are idempotent per X-Request-Id.")),
            ])),
            ("paths", .object(paths.map { ($0.0, .object($0.1)) })),
            ("components", .object([
                ("schemas", .object(Schema.components)),
                ("securitySchemes", .object([
                    ("basic", .object([("type", .string("http")), ("scheme", .string("basic"))])),
                    ("alarmKey", .object([("type", .string("apiKey")), ("in", .string("query")), ("name", .string("key"))])),
                    ("operatorToken", .object([("type", .string("http")), ("scheme", .string("bearer")),
                                               ("description", .string("legion admin token add NAME"))])),
                ])),
            ])),
        ])
    }

    static func operation(_ route: APIRoute) -> JSONValue {
        var fields: [(String, JSONValue)] = [
            ("summary", .string(route.summary)),
            ("operationId", .string(operationID(route))),
            ("tags", .array([.string(route.tag)])),
        ]
        var parameters: [JSONValue] = route.pathParameters.map { name in
            .object([("name", .string(name)), ("in", .string("path")), ("required", .bool(true)),
                     ("schema", name == "ip" || name == "name" ? Schema.string : Schema.integer(minimum: 0))])
        }
        parameters += route.query.map { parameter in
            .object([("name", .string(parameter.name)), ("in", .string("query")), ("required", .bool(false)),
                     ("description", .string(parameter.description)), ("schema", parameter.schema)])
        }
        if !parameters.isEmpty { fields.append(("parameters", .array(parameters))) }
        switch route.body {
        case .none: break
        case .json(let schema):
            fields.append(("requestBody", .object([("required", .bool(true)),
                                                   ("content", .object([("application/json", .object([("schema", schema)]))]))])))
        case .text:
            fields.append(("requestBody", .object([("required", .bool(false)),
                                                   ("content", .object([("text/plain", .object([("schema", Schema.string)]))]))])))
        }
        switch route.auth {
        case .none: fields.append(("security", .array([])))
        case .customer: fields.append(("security", .array([.object([("basic", .array([]))])])))
        case .optionalCustomer: fields.append(("security", .array([.object([]), .object([("basic", .array([]))])])))
        case .customerOrAlarmKey:
            fields.append(("security", .array([.object([("basic", .array([]))]), .object([("alarmKey", .array([]))])])))
        case .operator: fields.append(("security", .array([.object([("operatorToken", .array([]))])])))
        }
        var responses: [(String, JSONValue)] = []
        var seen = Set<Int>()
        func add(_ status: Int, _ description: String, _ schema: JSONValue?) {
            guard seen.insert(status).inserted else { return }
            var response: [(String, JSONValue)] = [("description", .string(description))]
            if let schema { response.append(("content", .object([("application/json", .object([("schema", schema)]))]))) }
            responses.append((String(status), .object(response)))
        }
        for outcome in route.outcomes { add(outcome.status, outcome.description, outcome.schema) }
        if route.auth != .none { for (status, text) in authErrors { add(status, text, Schema.ref("Error")) } }
        for (status, text) in commonErrors { add(status, text, Schema.ref("Error")) }
        fields.append(("responses", .object(responses)))
        return .object(fields)
    }

    static func operationID(_ route: APIRoute) -> String {
        var id = route.method.rawValue.lowercased()
        for part in route.path.split(separator: "/") where part != "api" {
            let clean = part.replacingOccurrences(of: "{", with: "by_").replacingOccurrences(of: "}", with: "")
                .replacingOccurrences(of: ".", with: "_")
            id += "_" + clean
        }
        return id
    }
}
