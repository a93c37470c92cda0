import Foundation
import Hummingbird
import Node
import Store

/// `loopboxes`, `loopboxes/<id>`; the path rules of uwsgi.it's model are enforced here too (uwsgi.it's API
/// skipped them).
enum LoopboxRoutes {
    static var routes: [APIRoute] {
        [
            APIRoute(method: .get, path: "/api/loopboxes", summary: "Your loopboxes", tag: "loopboxes", auth: .customer,
                     query: [.tags(), .init(name: "container", schema: Schema.integer, description: "only this container's (uid)")],
                     body: .none, outcomes: [.ok(Schema.array(Schema.ref("Loopbox"))), .forbidden("not your container")], handler: list),
            APIRoute(method: .post, path: "/api/loopboxes", summary: "Create a loopbox (an ext4 image in the container, mounted)", tag: "loopboxes",
                     auth: .customer, query: [],
                     body: .json(Schema.object([("container", Schema.integer), ("filename", Schema.string), ("mountpoint", Schema.string),
                                                ("ro", Schema.boolean)], required: ["container", "filename", "mountpoint"])),
                     outcomes: [.created, .forbidden("a key is missing, a path breaks the rules, or the container is not yours"),
                                .conflict("the container already has a loopbox with that file or mount point")], handler: create),
            APIRoute(method: .get, path: "/api/loopboxes/{id}", summary: "One loopbox", tag: "loopboxes", auth: .customer, query: [],
                     body: .none, outcomes: [.ok(Schema.ref("Loopbox")), .forbidden("not your loopbox")],
                     handler: { call throws(APIError) in APIResponse.json(try await one(call, id: try call.number("id"))) }),
            APIRoute(method: .post, path: "/api/loopboxes/{id}", summary: "Change a loopbox's tags (only tags: delete and recreate for the rest)",
                     tag: "loopboxes", auth: .customer, query: [], body: .json(Schema.object([("tags", Schema.array(Schema.string))], required: [])),
                     outcomes: [.ok(Schema.ref("Loopbox")), .forbidden("not your loopbox, or a field other than tags")], handler: update),
            APIRoute(method: .delete, path: "/api/loopboxes/{id}", summary: "Remove a loopbox (unmounted; the image file stays)", tag: "loopboxes",
                     auth: .customer, query: [], body: .none, outcomes: [.okMessage, .forbidden("not your loopbox")], handler: delete),
        ]
    }

    static let reserved: Set<String> = ["etc", "logs", "run", "tmp", "vassals"]

    /// uwsgi.it's Loopbox.clean(): relative, no `..`, `./`, `/.`, `//`, no leading or trailing `/`, not a reserved directory.
    static func checkPath(_ path: String, field: String, max: Int) throws(APIError) {
        let why: String? =
            path.isEmpty ? "is empty"
            : path.utf8.count > max ? "is longer than \(max) bytes"
            : path.contains("..") || path.contains("./") || path.contains("/.") || path.contains("//") ? "must not contain '..', './', '/.' or '//'"
            : path.hasPrefix("/") || path.hasSuffix("/") ? "must be relative to the container's home (no leading or trailing '/')"
            : reserved.contains(path) ? "must not be one of \(reserved.sorted().joined(separator: ", "))"
            : path.unicodeScalars.contains(where: { $0.properties.generalCategory == .control }) ? "must not contain control characters"
            : nil
        if let why { throw .forbidden("\(field) \(why)") }
    }

    static let columns = """
        b.id, b.container_id + 30000, b.filename, b.mountpoint, b.ro,
        (SELECT json_group_array(t.name) FROM loopbox_tags lt JOIN tags t ON t.id = lt.tag_id WHERE lt.loopbox_id = b.id)
        """

    static func object(_ row: [DqliteValue]) -> JSONValue {
        .object([("id", row[0].json), ("container", row[1].json), ("filename", row[2].json), ("mountpoint", row[3].json),
                 ("ro", row[4].jsonBool), ("tags", row[5].jsonArray)])
    }

    static func list(_ call: APICall) async throws(APIError) -> Response {
        let me = try call.me
        var container: DqliteValue = .null
        if let text = call.query["container"] {
            guard let uid = Int64(text), uid > 30000 else { throw .forbidden("container must be one of your container uids") }
            try await CustomerSQL.requireContainer(call, id: uid - 30000)
            container = .integer(uid - 30000)
        }
        let rows = try await call.services.query("""
            SELECT \(columns) FROM loopboxes b JOIN containers k ON k.id = b.container_id
            WHERE k.customer_id = ?1 AND (?2 IS NULL OR b.container_id = ?2) AND (?3 IS NULL OR b.id IN (
              SELECT lt.loopbox_id FROM loopbox_tags lt JOIN tags t ON t.id = lt.tag_id
              WHERE t.customer_id = ?1 AND t.name IN (SELECT value FROM json_each(?3)))) ORDER BY b.id
            """, [.integer(me.id), container, CustomerSQL.tagFilter(call)])
        return APIResponse.json(.array(rows.rows.map(object)))
    }

    static func one(_ call: APICall, id: Int64) async throws(APIError) -> JSONValue {
        let me = try call.me
        let rows = try await call.services.query("""
            SELECT \(columns) FROM loopboxes b JOIN containers k ON k.id = b.container_id WHERE b.id = ? AND k.customer_id = ?
            """, [.integer(id), .integer(me.id)])
        guard let row = rows.rows.first else { throw .forbidden("loopbox \(id) is not one of yours") }
        return object(row)
    }

    static func create(_ call: APICall) async throws(APIError) -> Response {
        let body = try call.json(allowed: ["container", "filename", "mountpoint", "ro"])
        guard let uid = try body.int("container") else { throw .forbidden("container, filename and mountpoint are required") }
        let filename = try body.requiredString("filename", max: 4096)
        let mountpoint = try body.requiredString("mountpoint", max: 4096)
        try checkPath(filename, field: "filename", max: 64)
        try checkPath(mountpoint, field: "mountpoint", max: 255)
        let ro = try body.bool("ro") ?? false
        guard uid > 30000 else { throw .forbidden("container \(uid) is not one of yours") }
        try await CustomerSQL.requireContainer(call, id: uid - 30000)
        let receipt = try await call.services.write(call, [
            .init("INSERT INTO loopboxes(container_id, filename, mountpoint, ro) VALUES(?, ?, ?, ?)",
                  [.integer(uid - 30000), .text(filename), .text(mountpoint), .integer(ro ? 1 : 0)]),
        ], conflict: "container \(uid) already has a loopbox with that file or mount point")
        return APIResponse.json(.object([("message", .string("Created")), ("id", .int(receipt.insertIDs.first ?? 0))]), status: .created)
    }

    static func update(_ call: APICall) async throws(APIError) -> Response {
        let me = try call.me
        let id = try call.number("id")
        _ = try await one(call, id: id)
        let input = try JSONInput.parse(call.body)
        if case .object(let fields) = input, case let others = fields.keys.filter({ $0 != "tags" }).sorted(), !others.isEmpty {
            throw .forbidden("only tags can change on a loopbox (\(others.joined(separator: ", ")) cannot); delete it and create a new one")
        }
        let body = try BodyReader(input, allowed: ["tags"])
        if let tags = try body.stringList("tags") {
            try await call.services.write(call, [
                .init("DELETE FROM loopbox_tags WHERE loopbox_id = ?", [.integer(id)]),
                .init("""
                    INSERT OR IGNORE INTO loopbox_tags(loopbox_id, tag_id)
                    SELECT ?, id FROM tags WHERE customer_id = ? AND name IN (SELECT value FROM json_each(?))
                    """, [.integer(id), .integer(me.id), CustomerSQL.namesJSON(tags)]),
            ])
        }
        return APIResponse.json(try await one(call, id: id))
    }

    static func delete(_ call: APICall) async throws(APIError) -> Response {
        let id = try call.number("id")
        _ = try await one(call, id: id)
        try await call.services.write(call, [.init("DELETE FROM loopboxes WHERE id = ?", [.integer(id)])])
        return APIResponse.ok()
    }
}
