import Foundation
import Hummingbird
import Node
import Store

/// `alarms`, `alarms/<id>`, `alarms/raise/<uid>` (alias `alarms/trigger/<uid>`), `alarm_key/<uid>`.
enum AlarmRoutes {
    static var routes: [APIRoute] {
        var routes: [APIRoute] = [
            APIRoute(method: .get, path: "/api/alarms", summary: "Your containers' alarms, newest first", tag: "alarms", auth: .customer,
                     query: filters + [
                        .init(name: "with_total", schema: Schema.string, description: "answer {total, alarms} instead of a list"),
                        .init(name: "range", schema: Schema.string, description: "N (the newest N) or A-B (a slice; reversed when A > B)"),
                     ], body: .none,
                     outcomes: [.ok(.object([("oneOf", .array([Schema.array(Schema.ref("Alarm")), Schema.ref("AlarmPage")]))])),
                                .forbidden("not your container"), .init(status: 416, description: "malformed range", schema: Schema.ref("Error"))],
                     handler: list),
            APIRoute(method: .get, path: "/api/alarms/{id}", summary: "One alarm", tag: "alarms", auth: .customer, query: [], body: .none,
                     outcomes: [.ok(Schema.ref("Alarm")), .forbidden("not your alarm")],
                     handler: { call throws(APIError) in APIResponse.json(try await one(call, id: try call.number("id"))) }),
            APIRoute(method: .delete, path: "/api/alarms/{id}", summary: "Delete an alarm", tag: "alarms", auth: .customer, query: [],
                     body: .none, outcomes: [.okMessage, .forbidden("not your alarm")], handler: delete),
        ]
        for verb in ["raise", "trigger"] {
            routes.append(APIRoute(method: .post, path: "/api/alarms/\(verb)/{uid}", summary: "Raise a user alarm (the body is the message)",
                                   tag: "alarms", auth: .customerOrAlarmKey, query: raiseParameters, body: .text,
                                   outcomes: [.created, .forbidden("not your container, wrong key, or level below 1"),
                                              .conflict("color must be 6 hex digits with an optional leading #")], handler: raise))
        }
        for method in [HTTPRequest.Method.get, .post] {
            routes.append(APIRoute(method: method, path: "/api/alarm_key/{uid}", summary: "Make a new alarm key for the container (the old one stops working)",
                                   tag: "alarms", auth: .customer, query: [], body: .none,
                                   outcomes: [.ok(Schema.ref("AlarmKey")), .forbidden("not your container")], handler: newKey))
        }
        return routes
    }

    static let filters: [APIRoute.QueryParameter] = [
        .init(name: "container", schema: Schema.integer, description: "container uid"),
        .init(name: "vassal", schema: Schema.string, description: "exact match"),
        .init(name: "class", schema: Schema.string, description: "exact match"),
        .init(name: "color", schema: Schema.string, description: "exact match"),
        .init(name: "level", schema: Schema.integer, description: "exact match"),
        .init(name: "line", schema: Schema.integer, description: "exact match"),
        .init(name: "filename", schema: Schema.string, description: "exact match"),
        .init(name: "func", schema: Schema.string, description: "exact match"),
    ]

    static let raiseParameters: [APIRoute.QueryParameter] = [
        .init(name: "key", schema: Schema.string, description: "the container's alarm key (instead of credentials)"),
        .init(name: "level", schema: Schema.integer(minimum: 1, maximum: 4), description: "1 user (default), 2 exception, 3 traceback, 4 log"),
        .init(name: "color", schema: Schema.string, description: "#rrggbb"),
        .init(name: "class", schema: Schema.string, description: "free text"),
        .init(name: "vassal", schema: Schema.string, description: "free text"),
        .init(name: "line", schema: Schema.integer(minimum: 0), description: "source line"),
        .init(name: "func", schema: Schema.string, description: "free text"),
        .init(name: "filename", schema: Schema.string, description: "free text"),
        .init(name: "unix", schema: Schema.integer(minimum: 0), description: "epoch seconds (default now)"),
    ]

    static let columns = "a.id, a.container_id + 30000, a.level, a.color, a.class, a.vassal, a.line, a.filename, a.func, a.unix_ms, a.msg"

    static func object(_ row: [DqliteValue]) -> JSONValue {
        .object([("id", row[0].json), ("container", row[1].json), ("level", row[2].json), ("color", row[3].json), ("class", row[4].json),
                 ("vassal", row[5].json), ("line", row[6].json), ("filename", row[7].json), ("func", row[8].json),
                 ("unix", row[9].millisAsSeconds), ("msg", row[10].json)])
    }

    /// `range`: "N" → [0, N); "A-B" → [min, max), reversed when A > B. Anything else → 416.
    static func parseRange(_ text: String) throws(APIError) -> (offset: Int64, count: Int64, reversed: Bool) {
        let parts = text.split(separator: "-", omittingEmptySubsequences: false)
        func number(_ part: Substring) throws(APIError) -> Int64 {
            guard !part.isEmpty, part.count <= 12, part.allSatisfy({ $0.isASCII && $0.isNumber }), let value = Int64(part) else { throw .rangeNotSatisfiable }
            return value
        }
        switch parts.count {
        case 1: return (0, try number(parts[0]), false)
        case 2:
            let a = try number(parts[0]), b = try number(parts[1])
            return (min(a, b), max(a, b) - min(a, b), a > b)
        default: throw .rangeNotSatisfiable
        }
    }

    static func list(_ call: APICall) async throws(APIError) -> Response {
        let me = try call.me
        var conditions = ["k.customer_id = ?"]
        var parameters: [DqliteValue] = [.integer(me.id)]
        if let text = call.query["container"] {
            guard let uid = Int64(text), uid > 30000 else { throw .forbidden("container must be one of your container uids") }
            try await CustomerSQL.requireContainer(call, id: uid - 30000)
            conditions.append("a.container_id = ?")
            parameters.append(.integer(uid - 30000))
        }
        for (key, column) in [("vassal", "a.vassal"), ("class", "a.class"), ("color", "a.color"), ("filename", "a.filename"), ("func", "a.func")] {
            if let value = call.query[key] {
                conditions.append("\(column) = ?")
                parameters.append(.text(value))
            }
        }
        for key in ["level", "line"] {
            if let text = call.query[key] {
                guard let value = Int64(text) else { throw .badRequest("\(key) must be an integer") }
                conditions.append("a.\(key) = ?")
                parameters.append(.integer(value))
            }
        }
        let range = try call.query["range"].map { text throws(APIError) in try parseRange(text) }
        let whereClause = "FROM alarms a JOIN containers k ON k.id = a.container_id WHERE " + conditions.joined(separator: " AND ")
        var sql = "SELECT \(columns) \(whereClause) ORDER BY a.unix_ms DESC, a.id DESC"
        var page = parameters
        if let range {
            sql += " LIMIT ? OFFSET ?"
            page += [.integer(range.count), .integer(range.offset)]
        }
        let rows = try await call.services.query(sql, page)
        var alarms = rows.rows.map(object)
        if range?.reversed == true { alarms.reverse() }
        if call.query["with_total"] != nil {
            let total = try await call.services.query("SELECT count(*) \(whereClause)", parameters)
            return APIResponse.json(.object([("total", total.scalar?.json ?? .int(0)), ("alarms", .array(alarms))]))
        }
        return APIResponse.json(.array(alarms))
    }

    static func one(_ call: APICall, id: Int64) async throws(APIError) -> JSONValue {
        let me = try call.me
        let rows = try await call.services.query("SELECT \(columns) FROM alarms a JOIN containers k ON k.id = a.container_id WHERE a.id = ? AND k.customer_id = ?",
                                                 [.integer(id), .integer(me.id)])
        guard let row = rows.rows.first else { throw .forbidden("alarm \(id) is not one of yours") }
        return object(row)
    }

    static func delete(_ call: APICall) async throws(APIError) -> Response {
        let id = try call.number("id")
        _ = try await one(call, id: id)
        try await call.services.write(call, [.init("DELETE FROM alarms WHERE id = ?", [.integer(id)])])
        return APIResponse.ok()
    }

    static func raise(_ call: APICall) async throws(APIError) -> Response {
        let id = try call.containerID()
        if let me = call.customer {
            let rows = try await call.services.query("SELECT 1 FROM containers WHERE id = ? AND customer_id = ?", [.integer(id), .integer(me.id)])
            if rows.rows.isEmpty { throw .forbidden("container \(id + 30000) is not one of yours") }
        } else {
            let key = call.query["key"] ?? ""
            let rows = try await call.services.query("SELECT alarm_key FROM containers WHERE id = ?", [.integer(id)])
            guard key.utf8.count == 36, let stored = rows.scalar?.string, stored == key else {
                throw .forbidden("the alarm key does not match container \(id + 30000)'s (GET /api/alarm_key/\(id + 30000) makes a new one)")
            }
        }
        guard let message = String(bytes: call.body, encoding: .utf8) else { throw .badRequest("the alarm message must be UTF-8 text") }
        var level: Int64 = 1
        if let text = call.query["level"] {
            guard let value = Int64(text) else { throw .badRequest("level must be an integer") }
            guard (1...4).contains(value) else { throw .forbidden("level must be 1 (user) … 4 (log); 0 is reserved for system alarms") }
            level = value
        }
        var color = call.query["color"] ?? "#ffffff"
        if !color.hasPrefix("#") { color = "#" + color }
        guard color.utf8.count == 7, color.dropFirst().allSatisfy(\.isHexDigit) else { throw .conflict("color must look like #rrggbb") }
        var unixMs = Int64(SystemClock.wallMillis())
        if let text = call.query["unix"] {
            guard let value = Int64(text), value >= 0, value < 1 << 40 else { throw .badRequest("unix must be epoch seconds") }
            unixMs = value * 1000
        }
        var line: DqliteValue = .null
        if let text = call.query["line"] {
            guard let value = Int64(text), value >= 0 else { throw .badRequest("line must be a non-negative integer") }
            line = .integer(value)
        }
        func text(_ key: String) throws(APIError) -> DqliteValue {
            guard let value = call.query[key] else { return .null }
            if value.utf8.count > 255 { throw .badRequest("\(key) is longer than 255 bytes") }
            return .text(value)
        }
        try await call.services.write(call, [
            .init("INSERT INTO alarms(container_id, unix_ms, level, color, msg, line, func, filename, class, vassal) VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                  [.integer(id), .integer(unixMs), .integer(level), .text(color), .text(message), line,
                   try text("func"), try text("filename"), try text("class"), try text("vassal")]),
        ])
        return APIResponse.created()
    }

    static func newKey(_ call: APICall) async throws(APIError) -> Response {
        let id = try call.containerID()
        try await CustomerSQL.requireContainer(call, id: id)
        let key = UUID().uuidString.lowercased()
        try await call.services.write(call, [.init("UPDATE containers SET alarm_key = ? WHERE id = ?", [.text(key), .integer(id)])])
        return APIResponse.json(.object([("message", .string("Ok")), ("alarm_key", .string(key))]))
    }
}
