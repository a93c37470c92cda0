import Foundation
import Hummingbird
import Node
import Store

/// `domains`, `domains/<id>`, `domains/<id>/containers`, `containers/<uid>/domains`, `tags`, `tags/<id>`.
enum DomainRoutes {
    static var routes: [APIRoute] {
        [
            APIRoute(method: .get, path: "/api/domains", summary: "Your domains", tag: "domains", auth: .customer, query: [.tags()],
                     body: .none, outcomes: [.ok(Schema.array(Schema.ref("Domain")))], handler: list),
            APIRoute(method: .post, path: "/api/domains", summary: "Add a domain (needs a TXT record uwsgi:<your uuid>)", tag: "domains",
                     auth: .customer, query: [], body: .json(Schema.object([("name", Schema.string)])),
                     outcomes: [.init(status: 201, description: "added", schema: Schema.ref("DomainCreated")),
                                .forbidden("the TXT record uwsgi:<your uuid> was not found"), .conflict("the domain is already taken")],
                     handler: add),
            APIRoute(method: .delete, path: "/api/domains", summary: "Delete a domain by name", tag: "domains", auth: .customer, query: [],
                     body: .json(Schema.object([("name", Schema.string)])), outcomes: [.okMessage, .notFound("you have no such domain")],
                     handler: deleteByName),
            APIRoute(method: .get, path: "/api/domains/{id}", summary: "One domain", tag: "domains", auth: .customer, query: [], body: .none,
                     outcomes: [.ok(Schema.ref("Domain")), .notFound("not your domain")],
                     handler: { call throws(APIError) in APIResponse.json(try await one(call, id: try call.number("id"))) }),
            APIRoute(method: .post, path: "/api/domains/{id}", summary: "Change a domain's note or tags", tag: "domains", auth: .customer,
                     query: [], body: .json(Schema.object([("note", Schema.nullableString), ("tags", Schema.array(Schema.string))], required: [])),
                     outcomes: [.ok(Schema.ref("Domain")), .notFound("not your domain")], handler: update),
            APIRoute(method: .delete, path: "/api/domains/{id}", summary: "Delete a domain", tag: "domains", auth: .customer, query: [],
                     body: .none, outcomes: [.okMessage, .notFound("not your domain")], handler: delete),
            APIRoute(method: .get, path: "/api/domains/{id}/containers", summary: "Containers that served this domain today", tag: "domains",
                     auth: .customer, query: [], body: .none,
                     outcomes: [.ok(Schema.array(Schema.ref("ContainerRef"))), .notFound("not your domain")], handler: containersToday),
            APIRoute(method: .get, path: "/api/containers/{uid}/domains", summary: "Domains this container served today", tag: "domains",
                     auth: .customer, query: [], body: .none,
                     outcomes: [.ok(Schema.array(Schema.ref("DomainRef"))), .notFound("not your container")], handler: domainsToday),
            APIRoute(method: .get, path: "/api/tags", summary: "Your tags", tag: "tags", auth: .customer, query: [], body: .none,
                     outcomes: [.ok(Schema.array(Schema.ref("Tag")))], handler: tags),
            APIRoute(method: .post, path: "/api/tags", summary: "Create a tag", tag: "tags", auth: .customer, query: [],
                     body: .json(Schema.object([("name", Schema.string), ("note", Schema.nullableString)], required: ["name"])),
                     outcomes: [.init(status: 201, description: "created", schema: Schema.ref("Tag")), .forbidden("name is required"),
                                .conflict("you already have a tag with that name")], handler: createTag),
            APIRoute(method: .get, path: "/api/tags/{id}", summary: "One tag", tag: "tags", auth: .customer, query: [], body: .none,
                     outcomes: [.ok(Schema.ref("Tag")), .notFound("not your tag")],
                     handler: { call throws(APIError) in APIResponse.json(try await tag(call, id: try call.number("id"))) }),
            APIRoute(method: .post, path: "/api/tags/{id}", summary: "Rename a tag or change its note", tag: "tags", auth: .customer, query: [],
                     body: .json(Schema.object([("name", Schema.string), ("note", Schema.nullableString)], required: [])),
                     outcomes: [.ok(Schema.ref("Tag")), .notFound("not your tag"), .conflict("you already have a tag with that name")],
                     handler: updateTag),
            APIRoute(method: .delete, path: "/api/tags/{id}", summary: "Delete a tag", tag: "tags", auth: .customer, query: [], body: .none,
                     outcomes: [.okMessage, .notFound("not your tag")], handler: deleteTag),
        ]
    }

    static let columns = """
        d.id, d.name, d.uuid, (SELECT json_group_array(t.name) FROM domain_tags dt JOIN tags t ON t.id = dt.tag_id WHERE dt.domain_id = d.id), d.note
        """

    static func object(_ row: [DqliteValue]) -> JSONValue {
        .object([("id", row[0].json), ("name", row[1].json), ("uuid", row[2].json), ("tags", row[3].jsonArray), ("note", row[4].json)])
    }

    static func list(_ call: APICall) async throws(APIError) -> Response {
        let me = try call.me
        let rows = try await call.services.query("""
            SELECT \(columns) FROM domains d WHERE d.customer_id = ?1 AND (?2 IS NULL OR d.id IN (
              SELECT dt.domain_id FROM domain_tags dt JOIN tags t ON t.id = dt.tag_id
              WHERE t.customer_id = ?1 AND t.name IN (SELECT value FROM json_each(?2)))) ORDER BY d.name
            """, [.integer(me.id), CustomerSQL.tagFilter(call)])
        return APIResponse.json(.array(rows.rows.map(object)))
    }

    static func one(_ call: APICall, id: Int64) async throws(APIError) -> JSONValue {
        let me = try call.me
        let rows = try await call.services.query("SELECT \(columns) FROM domains d WHERE d.id = ? AND d.customer_id = ?", [.integer(id), .integer(me.id)])
        guard let row = rows.rows.first else { throw .notFound("domain \(id) is not one of yours") }
        return object(row)
    }

    /// A domain name as customers give it: lowercased; a leading dot (wildcard, for dotsplit subscriptions) kept.
    static func normalized(_ name: String) throws(APIError) -> String {
        let lower = name.lowercased()
        let bare = lower.hasPrefix(".") ? String(lower.dropFirst()) : lower
        let labels = bare.split(separator: ".", omittingEmptySubsequences: false)
        let valid = !bare.isEmpty && bare.utf8.count <= 253 && labels.count >= 2 && labels.allSatisfy { label in
            !label.isEmpty && label.utf8.count <= 63 && !label.hasPrefix("-") && !label.hasSuffix("-")
                && label.unicodeScalars.allSatisfy { $0.isASCII && ($0.properties.isAlphabetic || ("0"..."9").contains($0) || $0 == "-" || $0 == "_") }
        }
        guard valid else {
            throw .forbidden("\(name.prefix(80)) is not a domain name (dot-separated labels of letters, digits and '-'; a leading '.' for a wildcard)")
        }
        return lower
    }

    static func add(_ call: APICall) async throws(APIError) -> Response {
        let me = try call.me
        let body = try call.json(allowed: ["name"])
        let name = try normalized(try body.requiredString("name"))
        let taken = try await call.services.query("SELECT customer_id FROM domains WHERE name = ?", [.text(name)])
        if let owner = taken.rows.first?[0].int {
            // A retried add of our own domain (same X-Request-Id) answers as the first time.
            let replay = owner == me.id ? try await call.services.query("SELECT 1 FROM store_requests WHERE id = ?", [.text(call.requestID)]) : DqliteRows(columns: [], rows: [])
            if replay.rows.isEmpty { throw .conflict("domain \(name) is already taken") }
        } else {
            let bare = name.hasPrefix(".") ? String(name.dropFirst()) : name
            switch await call.services.ownership.check(domain: bare, customerUUID: me.uuid) {
            case .proven: break
            case .missing:
                throw .forbidden("no TXT record \"uwsgi:\(me.uuid)\" on \(bare) or its parents; add it at your DNS provider and retry")
            case .unreachable(let why):
                throw .forbidden("the TXT record uwsgi:\(me.uuid) could not be checked (\(why)); retry later")
            }
            try await call.services.write(call, [
                .init("INSERT INTO domains(name, customer_id, uuid, ctime_ms, mtime_ms) VALUES(?, ?, ?, \(CustomerSQL.now), \(CustomerSQL.now))",
                      [.text(name), .integer(me.id), .text(UUID().uuidString.lowercased())]),
            ], conflict: "domain \(name) is already taken")
        }
        let rows = try await call.services.query("SELECT \(columns) FROM domains d WHERE d.name = ? AND d.customer_id = ?", [.text(name), .integer(me.id)])
        guard let row = rows.rows.first else { throw .conflict("domain \(name) was deleted meanwhile") }
        guard case .object(let fields) = object(row) else { throw .conflict("domain \(name) was deleted meanwhile") }
        return APIResponse.json(.object([("message", .string("Created"))] + fields), status: .created)
    }

    static func deleteByName(_ call: APICall) async throws(APIError) -> Response {
        let me = try call.me
        let body = try call.json(allowed: ["name"])
        let name = try body.requiredString("name").lowercased()
        let rows = try await call.services.query("SELECT id FROM domains WHERE name = ? AND customer_id = ?", [.text(name), .integer(me.id)])
        guard let id = rows.rows.first?[0].int else { throw .notFound("you have no domain \(name)") }
        try await call.services.write(call, [.init("DELETE FROM domains WHERE id = ? AND customer_id = ?", [.integer(id), .integer(me.id)])])
        return APIResponse.ok()
    }

    static func update(_ call: APICall) async throws(APIError) -> Response {
        let me = try call.me
        let id = try call.number("id")
        _ = try await one(call, id: id)
        let body = try call.json(allowed: ["note", "tags"])
        var statements: [StoreClient.Statement] = []
        if let note = try body.nullableString("note", max: 65536) {
            statements.append(.init("UPDATE domains SET note = ?, mtime_ms = \(CustomerSQL.now) WHERE id = ?", [.optional(note), .integer(id)]))
        }
        if let tags = try body.stringList("tags") {
            statements.append(.init("DELETE FROM domain_tags WHERE domain_id = ?", [.integer(id)]))
            statements.append(.init("""
                INSERT OR IGNORE INTO domain_tags(domain_id, tag_id)
                SELECT ?, id FROM tags WHERE customer_id = ? AND name IN (SELECT value FROM json_each(?))
                """, [.integer(id), .integer(me.id), CustomerSQL.namesJSON(tags)]))
        }
        if !statements.isEmpty { try await call.services.write(call, statements) }
        return APIResponse.json(try await one(call, id: id))
    }

    static func delete(_ call: APICall) async throws(APIError) -> Response {
        let me = try call.me
        let id = try call.number("id")
        _ = try await one(call, id: id)
        try await call.services.write(call, [.init("DELETE FROM domains WHERE id = ? AND customer_id = ?", [.integer(id), .integer(me.id)])])
        return APIResponse.ok()
    }

    /// Per-day hits live in the node-local metric store (the metrics issue); until a node records them, no
    /// container has served a domain "today" and both relation routes answer an empty list.
    static func containersToday(_ call: APICall) async throws(APIError) -> Response {
        _ = try await one(call, id: try call.number("id"))
        return APIResponse.json(.array([]))
    }

    static func domainsToday(_ call: APICall) async throws(APIError) -> Response {
        let me = try call.me
        let id = try call.containerID()
        let rows = try await call.services.query("SELECT 1 FROM containers WHERE id = ? AND customer_id = ?", [.integer(id), .integer(me.id)])
        if rows.rows.isEmpty { throw .notFound("container \(id + 30000) is not one of yours") }
        return APIResponse.json(.array([]))
    }

    // MARK: Tags

    static func tags(_ call: APICall) async throws(APIError) -> Response {
        let me = try call.me
        let rows = try await call.services.query("SELECT id, name, note FROM tags WHERE customer_id = ? ORDER BY name", [.integer(me.id)])
        return APIResponse.json(.array(rows.rows.map { .object([("id", $0[0].json), ("name", $0[1].json), ("note", $0[2].json)]) }))
    }

    static func tag(_ call: APICall, id: Int64) async throws(APIError) -> JSONValue {
        let me = try call.me
        let rows = try await call.services.query("SELECT id, name, note FROM tags WHERE id = ? AND customer_id = ?", [.integer(id), .integer(me.id)])
        guard let row = rows.rows.first else { throw .notFound("tag \(id) is not one of yours") }
        return .object([("id", row[0].json), ("name", row[1].json), ("note", row[2].json)])
    }

    static func createTag(_ call: APICall) async throws(APIError) -> Response {
        let me = try call.me
        let body = try call.json(allowed: ["name", "note"])
        let name = try body.requiredString("name")
        if name.isEmpty { throw .forbidden("name must not be empty") }
        let note = try body.nullableString("note", max: 65536) ?? nil
        let receipt = try await call.services.write(call, [
            .init("INSERT INTO tags(name, customer_id, note, ctime_ms, mtime_ms) VALUES(?, ?, ?, \(CustomerSQL.now), \(CustomerSQL.now))",
                  [.text(name), .integer(me.id), .optional(note)]),
        ], conflict: "you already have a tag named \(name)")
        let id = receipt.insertIDs.first ?? 0
        return APIResponse.json(.object([("id", .int(id)), ("name", .string(name)), ("note", note.map { .string($0) } ?? .null)]), status: .created)
    }

    static func updateTag(_ call: APICall) async throws(APIError) -> Response {
        let id = try call.number("id")
        _ = try await tag(call, id: id)
        let body = try call.json(allowed: ["name", "note"])
        var sets: [(String, DqliteValue)] = []
        if let name = try body.string("name") {
            if name.isEmpty { throw .forbidden("name must not be empty") }
            sets.append(("name", .text(name)))
        }
        if let note = try body.nullableString("note", max: 65536) { sets.append(("note", .optional(note))) }
        if !sets.isEmpty {
            try await call.services.write(call, [
                .init("UPDATE tags SET \(sets.map { "\($0.0) = ?" }.joined(separator: ", ")), mtime_ms = \(CustomerSQL.now) WHERE id = ?",
                      sets.map(\.1) + [.integer(id)]),
            ], conflict: "you already have a tag with that name")
        }
        return APIResponse.json(try await tag(call, id: id))
    }

    static func deleteTag(_ call: APICall) async throws(APIError) -> Response {
        let me = try call.me
        let id = try call.number("id")
        _ = try await tag(call, id: id)
        try await call.services.write(call, [.init("DELETE FROM tags WHERE id = ? AND customer_id = ?", [.integer(id), .integer(me.id)])])
        return APIResponse.ok()
    }
}
