import Foundation
import Hummingbird
import Node
import Store

/// `me`, `distros`, `custom_distros`, `custom_distro`, `news`.
enum ProfileRoutes {
    static var routes: [APIRoute] {
        [
            APIRoute(method: .get, path: "/api/me", summary: "Your profile", tag: "profile", auth: .customer, query: [], body: .none,
                     outcomes: [.ok(Schema.ref("Me"))], handler: me),
            APIRoute(method: .post, path: "/api/me", summary: "Change your email, company, VAT or password", tag: "profile", auth: .customer,
                     query: [], body: .json(Schema.object([("email", Schema.nullableString), ("company", Schema.nullableString),
                                                           ("vat", Schema.nullableString), ("password", Schema.string)], required: [])),
                     outcomes: [.ok(Schema.ref("Me"))], handler: updateMe),
            APIRoute(method: .get, path: "/api/distros", summary: "Shared distros", tag: "distros", auth: .customer, query: [], body: .none,
                     outcomes: [.ok(Schema.array(Schema.ref("Distro")))], handler: distros),
            APIRoute(method: .get, path: "/api/custom_distros", summary: "Custom distros stored in your containers", tag: "distros",
                     auth: .customer, query: [], body: .none, outcomes: [.ok(Schema.array(Schema.ref("CustomDistroOfContainer")))],
                     handler: customDistros),
            APIRoute(method: .get, path: "/api/custom_distros/{uid}", summary: "Custom distros this container may use", tag: "distros",
                     auth: .customer, query: [], body: .none,
                     outcomes: [.ok(Schema.array(Schema.ref("Distro"))), .forbidden("not your container")], handler: usableDistros),
            APIRoute(method: .post, path: "/api/custom_distros/{uid}", summary: "Store a custom distro in this container", tag: "distros",
                     auth: .customer, query: [],
                     body: .json(Schema.object([("name", Schema.string), ("path", Schema.string), ("note", Schema.nullableString)], required: ["name", "path"])),
                     outcomes: [.created, .forbidden("not your container, or it does not store custom distros"),
                                .conflict("a custom distro with that name or path exists")], handler: createCustomDistro),
            APIRoute(method: .get, path: "/api/custom_distro/{id}", summary: "One custom distro", tag: "distros", auth: .customer, query: [],
                     body: .none, outcomes: [.ok(Schema.ref("CustomDistro")), .forbidden("not yours")], handler: customDistro),
            APIRoute(method: .post, path: "/api/custom_distro/{id}", summary: "Rename a custom distro or change its path or note", tag: "distros",
                     auth: .customer, query: [],
                     body: .json(Schema.object([("name", Schema.string), ("path", Schema.string), ("note", Schema.nullableString)], required: [])),
                     outcomes: [.ok(Schema.ref("CustomDistro")), .forbidden("not yours"), .conflict("name or path taken")], handler: updateCustomDistro),
            APIRoute(method: .delete, path: "/api/custom_distro/{id}", summary: "Delete a custom distro", tag: "distros", auth: .customer,
                     query: [], body: .none, outcomes: [.okMessage, .forbidden("not yours")], handler: deleteCustomDistro),
            APIRoute(method: .get, path: "/api/news", summary: "The latest 10 news (public ones only without credentials)", tag: "news",
                     auth: .optionalCustomer, query: [], body: .none, outcomes: [.ok(Schema.array(Schema.ref("News")))], handler: news),
        ]
    }

    static func profile(_ call: APICall) async throws(APIError) -> JSONValue {
        let me = try call.me
        let rows = try await call.services.query("""
            SELECT email, vat, company, uuid,
                   (SELECT json_group_array(id + 30000) FROM (SELECT id FROM containers WHERE customer_id = c.id ORDER BY id)),
                   (SELECT json_group_array(address) FROM servers WHERE owner_id = c.id)
            FROM customers c WHERE id = ?
            """, [.integer(me.id)])
        guard let row = rows.rows.first else { throw .unauthorized }
        return .object([("email", row[0].json), ("vat", row[1].json), ("company", row[2].json), ("uuid", row[3].json),
                        ("containers", row[4].jsonArray), ("servers", row[5].jsonArray)])
    }

    static func me(_ call: APICall) async throws(APIError) -> Response { APIResponse.json(try await profile(call)) }

    static func updateMe(_ call: APICall) async throws(APIError) -> Response {
        let me = try call.me
        let body = try call.json(allowed: ["email", "company", "vat", "password"])
        var sets: [(String, DqliteValue)] = []
        for key in ["email", "company", "vat"] {
            if let value = try body.nullableString(key) { sets.append((key, .optional(value))) }
        }
        if let password = try body.string("password", max: 1024) {
            let hash: String
            do {
                hash = try await PasswordHasher.hashOffLoop(password)
            } catch {
                throw APIError.badRequest(error.description)
            }
            sets.append(("password_hash", .text(hash)))
        }
        if !sets.isEmpty {
            try await call.services.write(call, [
                .init("UPDATE customers SET \(sets.map { "\($0.0) = ?" }.joined(separator: ", ")), mtime_ms = \(CustomerSQL.now) WHERE id = ?",
                      sets.map(\.1) + [.integer(me.id)], mustChange: "your customer record is gone"),
            ])
        }
        return APIResponse.json(try await profile(call))
    }

    static func distros(_ call: APICall) async throws(APIError) -> Response {
        let rows = try await call.services.query("SELECT id, name FROM distros ORDER BY id")
        return APIResponse.json(.array(rows.rows.map { .object([("id", $0[0].json), ("name", $0[1].json)]) }))
    }

    static func customDistros(_ call: APICall) async throws(APIError) -> Response {
        let me = try call.me
        let rows = try await call.services.query("""
            SELECT cd.id, cd.name, cd.container_id + 30000 FROM custom_distros cd JOIN containers k ON k.id = cd.container_id
            WHERE k.customer_id = ? ORDER BY cd.id
            """, [.integer(me.id)])
        return APIResponse.json(.array(rows.rows.map { .object([("id", $0[0].json), ("name", $0[1].json), ("container", $0[2].json)]) }))
    }

    static func usableDistros(_ call: APICall) async throws(APIError) -> Response {
        let me = try call.me
        let id = try call.containerID()
        try await CustomerSQL.requireContainer(call, id: id)
        let rows = try await call.services.query("""
            SELECT cd.id, cd.name FROM custom_distros cd JOIN containers k ON k.id = cd.container_id
            WHERE k.customer_id = ? AND k.id != ? AND k.server_id = (SELECT server_id FROM containers WHERE id = ?) ORDER BY cd.id
            """, [.integer(me.id), .integer(id), .integer(id)])
        return APIResponse.json(.array(rows.rows.map { .object([("id", $0[0].json), ("name", $0[1].json)]) }))
    }

    static func checkDistroPath(_ path: String) throws(APIError) {
        guard !path.isEmpty, path != ".", path != "..",
              path.unicodeScalars.allSatisfy({ ($0.isASCII && ($0.properties.isAlphabetic || ("0"..."9").contains($0))) || "._-".unicodeScalars.contains($0) })
        else { throw .forbidden("path must be a directory name of letters, digits, '.', '_' and '-'") }
    }

    static func createCustomDistro(_ call: APICall) async throws(APIError) -> Response {
        let me = try call.me
        let id = try call.containerID()
        let body = try call.json(allowed: ["name", "path", "note"])
        let name = try body.requiredString("name")
        let path = try body.requiredString("path")
        if name.isEmpty { throw .forbidden("name must not be empty") }
        try checkDistroPath(path)
        let note = try body.nullableString("note", max: 65536) ?? nil
        let rows = try await call.services.query("SELECT custom_distros_storage FROM containers WHERE id = ? AND customer_id = ?", [.integer(id), .integer(me.id)])
        guard let row = rows.rows.first else { throw .forbidden("container \(id + 30000) is not one of yours") }
        if (row[0].int ?? 0) == 0 { throw .forbidden("container \(id + 30000) does not store custom distros; set custom_distros_storage first") }
        let receipt = try await call.services.write(call, [
            .init("INSERT INTO custom_distros(container_id, name, path, uuid, note) VALUES(?, ?, ?, ?, ?)",
                  [.integer(id), .text(name), .text(path), .text(UUID().uuidString.lowercased()), .optional(note)]),
        ], conflict: "this container already stores a custom distro with that name or path")
        return APIResponse.json(.object([("message", .string("Created")), ("id", .int(receipt.insertIDs.first ?? 0))]), status: .created)
    }

    static func loadCustomDistro(_ call: APICall) async throws(APIError) -> (Int64, JSONValue) {
        let me = try call.me
        let id = try call.number("id")
        let rows = try await call.services.query("""
            SELECT cd.id, cd.container_id + 30000, cd.name, cd.path, cd.note, cd.uuid FROM custom_distros cd
            JOIN containers k ON k.id = cd.container_id WHERE cd.id = ? AND k.customer_id = ?
            """, [.integer(id), .integer(me.id)])
        guard let row = rows.rows.first else { throw .forbidden("custom distro \(id) is not one of yours") }
        return (id, .object([("id", row[0].json), ("container", row[1].json), ("name", row[2].json), ("path", row[3].json),
                             ("note", row[4].json), ("uuid", row[5].json)]))
    }

    static func customDistro(_ call: APICall) async throws(APIError) -> Response {
        APIResponse.json(try await loadCustomDistro(call).1)
    }

    static func updateCustomDistro(_ call: APICall) async throws(APIError) -> Response {
        let (id, _) = try await loadCustomDistro(call)
        let body = try call.json(allowed: ["name", "path", "note"])
        var sets: [(String, DqliteValue)] = []
        if let name = try body.string("name") {
            if name.isEmpty { throw .forbidden("name must not be empty") }
            sets.append(("name", .text(name)))
        }
        if let path = try body.string("path") {
            try checkDistroPath(path)
            sets.append(("path", .text(path)))
        }
        if let note = try body.nullableString("note", max: 65536) { sets.append(("note", .optional(note))) }
        if !sets.isEmpty {
            try await call.services.write(call, [
                .init("UPDATE custom_distros SET \(sets.map { "\($0.0) = ?" }.joined(separator: ", ")) WHERE id = ?", sets.map(\.1) + [.integer(id)]),
            ], conflict: "the container already stores a custom distro with that name or path")
        }
        return APIResponse.json(try await loadCustomDistro(call).1)
    }

    static func deleteCustomDistro(_ call: APICall) async throws(APIError) -> Response {
        let (id, _) = try await loadCustomDistro(call)
        try await call.services.write(call, [.init("DELETE FROM custom_distros WHERE id = ?", [.integer(id)])])
        return APIResponse.ok()
    }

    static func news(_ call: APICall) async throws(APIError) -> Response {
        let rows = try await call.services.query("SELECT content, ctime_ms FROM news WHERE public = 1 OR ? ORDER BY ctime_ms DESC, id DESC LIMIT 10",
                                                 [.integer(call.customer == nil ? 0 : 1)])
        return APIResponse.json(.array(rows.rows.map { .object([("content", $0[0].json), ("date", $0[1].millisAsSeconds)]) }))
    }
}

extension PasswordHasher {
    /// Hashes on the NIO thread pool (PBKDF2 takes ~0.5 s of CPU), not on a request's event loop.
    static func hashOffLoop(_ password: String) async throws(StoreError) -> String {
        try validate(password)
        do {
            return try await NIOThreadPoolRunner.run { try PasswordHasher.hash(password) }
        } catch let error as StoreError {
            throw error
        } catch {
            throw .invalidInput("cannot hash the password: \(error)")
        }
    }
}
