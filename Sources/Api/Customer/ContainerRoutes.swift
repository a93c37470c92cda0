import Foundation
import Hummingbird
import Node
import Store

/// `containers`, `me/containers`, `containers/<uid>`, `regenerate_secret_uuid/<uid>`.
enum ContainerRoutes {
    static let updatable: Set<String> = [
        "name", "note", "quota_threshold", "jid", "jid_secret", "jid_destinations", "nofollow", "pushover_user", "pushover_token",
        "pushover_sound", "alarm_freq", "pushbullet_token", "slack_webhook", "alarm_webhook", "custom_distros_storage",
        "ssh_keys", "distro", "custom_distro", "memory", "storage", "tags", "link", "unlink", "reboot",
    ]

    static var routes: [APIRoute] {
        var routes: [APIRoute] = []
        for base in ["/api/containers", "/api/me/containers"] {
            routes.append(APIRoute(method: .get, path: base, summary: "List your containers", tag: "containers", auth: .customer,
                                   query: [.tags()], body: .none, outcomes: [.ok(Schema.array(Schema.ref("Container")))], handler: list))
            routes.append(APIRoute(method: .post, path: base, summary: "Create a container on a server you own", tag: "containers",
                                   auth: .customer, query: [], body: .json(createSchema),
                                   outcomes: [.created, .forbidden("a key is missing or the server is not yours"),
                                              .conflict("not enough memory or storage on the server")], handler: create))
        }
        routes.append(APIRoute(method: .get, path: "/api/containers/{uid}", summary: "One container", tag: "containers", auth: .customer,
                               query: [], body: .none, outcomes: [.ok(Schema.ref("ContainerDetail")), .forbidden("not your container")],
                               handler: { call throws(APIError) in APIResponse.json(try await detail(call, id: try call.containerID())) }))
        routes.append(APIRoute(method: .post, path: "/api/containers/{uid}", summary: "Change a container (keys, distro, tags, links, reboot, alarms…)",
                               tag: "containers", auth: .customer, query: [], body: .json(updateSchema),
                               outcomes: [.ok(Schema.ref("ContainerDetail")), .forbidden("not your container, or a field you may not change"),
                                          .conflict("link/unlink refused, or the server lacks memory or storage")], handler: update))
        for method in [HTTPRequest.Method.get, .post] {
            routes.append(APIRoute(method: method, path: "/api/regenerate_secret_uuid/{uid}", summary: "Give the container a new secret uuid",
                                   tag: "containers", auth: .customer, query: [], body: .none,
                                   outcomes: [.ok(Schema.object([("message", Schema.string), ("secret_uuid", Schema.string)])),
                                              .forbidden("not your container")], handler: regenerateSecret))
        }
        return routes
    }

    static let createSchema = Schema.object([("server", Schema.string), ("name", Schema.string),
                                             ("memory", Schema.integer(minimum: 1)), ("storage", Schema.integer(minimum: 1))])
    static let updateSchema = Schema.object([
        ("name", Schema.string), ("note", Schema.nullableString), ("quota_threshold", Schema.integer(minimum: 0, maximum: 100)),
        ("jid", Schema.nullableString), ("jid_secret", Schema.nullableString), ("jid_destinations", Schema.nullableString),
        ("nofollow", Schema.boolean), ("pushover_user", Schema.nullableString), ("pushover_token", Schema.nullableString),
        ("pushover_sound", Schema.nullableString), ("alarm_freq", Schema.integer(minimum: 60)), ("pushbullet_token", Schema.nullableString),
        ("slack_webhook", Schema.nullableString), ("alarm_webhook", Schema.nullableString), ("custom_distros_storage", Schema.boolean),
        ("ssh_keys", Schema.array(Schema.string)), ("distro", Schema.integer), ("custom_distro", Schema.nullableInteger), ("memory", Schema.integer(minimum: 1)),
        ("storage", Schema.integer(minimum: 1)), ("tags", Schema.array(Schema.string)), ("link", Schema.integer),
        ("unlink", Schema.integer), ("reboot", Schema.anyValue),
    ], required: [])

    static let summaryColumns = """
        k.id, k.name, k.memory, k.storage, k.uuid, k.distro_id, d.name, k.custom_distro_id, cd.name, s.name, s.address,
        (SELECT json_group_array(t.name) FROM container_tags ct JOIN tags t ON t.id = ct.tag_id WHERE ct.container_id = k.id)
        """
    static let summaryJoins = """
        FROM containers k JOIN servers s ON s.id = k.server_id LEFT JOIN distros d ON d.id = k.distro_id
        LEFT JOIN custom_distros cd ON cd.id = k.custom_distro_id
        """

    static func summary(_ row: [DqliteValue]) -> [(String, JSONValue)] {
        let id = row[0].int ?? 0
        let name = row[1].string ?? ""
        return [
            ("uid", .int(id + AdminStore.baseUID)), ("name", .string(name)), ("hostname", .string(CustomerSQL.hostname(name))),
            ("ip", .string(AdminStore.containerIP(id: id))), ("memory", row[2].json), ("storage", row[3].json), ("uuid", row[4].json),
            ("distro", row[5].json), ("distro_name", row[6].json), ("custom_distro", row[7].json), ("custom_distro_name", row[8].json),
            ("server", row[9].json), ("server_address", row[10].json), ("tags", row[11].jsonArray),
        ]
    }

    static func list(_ call: APICall) async throws(APIError) -> Response {
        let me = try call.me
        let filter = CustomerSQL.tagFilter(call)
        let rows = try await call.services.query("""
            SELECT \(summaryColumns) \(summaryJoins)
            WHERE k.customer_id = ?1 AND (?2 IS NULL OR k.id IN (
              SELECT ct.container_id FROM container_tags ct JOIN tags t ON t.id = ct.tag_id
              WHERE t.customer_id = ?1 AND t.name IN (SELECT value FROM json_each(?2))))
            ORDER BY k.id
            """, [.integer(me.id), filter])
        return APIResponse.json(.array(rows.rows.map { .object(summary($0)) }))
    }

    static func detail(_ call: APICall, id: Int64) async throws(APIError) -> JSONValue {
        let me = try call.me
        let rows = try await call.services.query("""
            SELECT \(summaryColumns), k.jid, k.jid_destinations, k.pushover_user, k.pushover_token, k.pushover_sound,
                   k.pushbullet_token, k.slack_webhook, k.alarm_freq, k.quota_threshold, k.nofollow, k.note,
                   (SELECT json_group_array(to_id + 30000) FROM container_links WHERE container_id = k.id),
                   k.custom_distros_storage, k.secret_uuid, k.ssh_keys_raw,
                   (SELECT json_group_array(l.address) FROM legion_nodes n JOIN legions l ON l.id = n.legion_id WHERE n.server_id = k.server_id),
                   k.last_reboot_ms, k.alarm_webhook
            \(summaryJoins) WHERE k.id = ? AND k.customer_id = ?
            """, [.integer(id), .integer(me.id)])
        guard let row = rows.rows.first else { throw .forbidden("container \(id + 30000) is not one of yours") }
        let keys = (row[26].string ?? "").replacingOccurrences(of: "\r", with: "").split(separator: "\n").map { JSONValue.string(String($0)) }
        return .object(summary(row) + [
            ("jid", row[12].json), ("jid_destinations", row[13].json), ("pushover_user", row[14].json), ("pushover_token", row[15].json),
            ("pushover_sound", row[16].json), ("pushbullet_token", row[17].json), ("slack_webhook", row[18].json),
            ("alarm_freq", row[19].json), ("quota_threshold", row[20].json), ("nofollow", row[21].jsonBool), ("note", row[22].json),
            ("linked_to", row[23].jsonArray), ("custom_distros_storage", row[24].jsonBool), ("secret_uuid", row[25].json),
            ("ssh_keys", .array(keys)), ("legion_address", row[27].jsonArray), ("last_reboot", row[28].millisAsSeconds),
            ("alarm_webhook", row[29].json),
        ])
    }

    static func create(_ call: APICall) async throws(APIError) -> Response {
        let me = try call.me
        let body = try call.json(allowed: ["server", "name", "memory", "storage"])
        let server = try body.requiredString("server")
        let name = try body.requiredString("name")
        guard let memory = try body.int("memory", range: 1...(1 << 30)), let storage = try body.int("storage", range: 1...(1 << 30)) else {
            throw .forbidden("server, name, memory and storage are required")
        }
        if name.isEmpty { throw .forbidden("name must not be empty") }
        let owned = try await call.services.query("SELECT id, memory - (SELECT coalesce(sum(memory), 0) FROM containers WHERE server_id = servers.id), storage - (SELECT coalesce(sum(storage), 0) FROM containers WHERE server_id = servers.id) FROM servers WHERE address = ? AND owner_id = ?",
                                                  [.text(server), .integer(me.id)])
        guard let row = owned.rows.first, let serverID = row[0].int else { throw .forbidden("server \(server) is not one of yours") }
        if memory > (row[1].int ?? 0) { throw .conflict("not enough memory") }
        if storage > (row[2].int ?? 0) { throw .conflict("not enough storage") }
        let receipt = try await call.services.write(call, [
            .init("""
                INSERT INTO containers(name, server_id, customer_id, memory, storage, uuid, last_reboot_ms, ctime_ms, mtime_ms)
                SELECT ?, s.id, ?, ?, ?, ?, \(CustomerSQL.now), \(CustomerSQL.now), \(CustomerSQL.now) FROM servers s
                WHERE s.id = ? AND s.owner_id = ?
                  AND (SELECT coalesce(sum(memory), 0) FROM containers WHERE server_id = s.id) + ? <= s.memory
                  AND (SELECT coalesce(sum(storage), 0) FROM containers WHERE server_id = s.id) + ? <= s.storage
                """, [.text(name), .integer(me.id), .integer(memory), .integer(storage), .text(UUID().uuidString.lowercased()),
                      .integer(serverID), .integer(me.id), .integer(memory), .integer(storage)],
                  mustChange: "not enough memory or storage on server \(server) (another container took it meanwhile)"),
        ])
        let id = receipt.insertIDs.first ?? 0
        return APIResponse.json(.object([("message", .string("Created")), ("uid", .int(id + AdminStore.baseUID))]), status: .created)
    }

    static func update(_ call: APICall) async throws(APIError) -> Response {
        let me = try call.me
        let id = try call.containerID()
        let body = try call.json(allowed: updatable)
        let owner = try await call.services.query("""
            SELECT k.server_id, s.owner_id = ?2 FROM containers k JOIN servers s ON s.id = k.server_id WHERE k.id = ?1 AND k.customer_id = ?2
            """, [.integer(id), .integer(me.id)])
        guard let container = owner.rows.first, let serverID = container[0].int else {
            throw .forbidden("container \(id + 30000) is not one of yours")
        }
        let ownsServer = (container[1].int ?? 0) != 0
        var sets: [(String, DqliteValue)] = []
        if let name = try body.string("name") {
            if name.isEmpty { throw .badRequest("name must not be empty") }
            sets.append(("name", .text(name)))
        }
        for key in ["note"] {
            if let value = try body.nullableString(key, max: 65536) { sets.append((key, .optional(value))) }
        }
        for key in ["jid", "jid_secret", "jid_destinations", "pushover_user", "pushover_token", "pushover_sound", "pushbullet_token", "slack_webhook"] {
            if let value = try body.nullableString(key) { sets.append((key, .optional(value))) }
        }
        for key in ["slack_webhook", "alarm_webhook"] {
            if let value = try body.nullableString(key) {
                if let url = value, !url.isEmpty, !(url.hasPrefix("https://") || url.hasPrefix("http://")) || url.count > 2048 || url.contains(where: { $0.isWhitespace }) {
                    throw .badRequest("\(key) must be an http:// or https:// URL (at most 2048 characters, no spaces), or null")
                }
                if key == "alarm_webhook" { sets.append((key, .optional(value))) }
            }
        }
        if let value = try body.int("quota_threshold", range: 0...100) { sets.append(("quota_threshold", .integer(value))) }
        if let value = try body.int("alarm_freq", range: 60...(1 << 31)) { sets.append(("alarm_freq", .integer(value))) }
        if let value = try body.bool("nofollow") { sets.append(("nofollow", .integer(value ? 1 : 0))) }
        if let value = try body.bool("custom_distros_storage") { sets.append(("custom_distros_storage", .integer(value ? 1 : 0))) }
        if let keys = try body.stringList("ssh_keys") {
            if keys.contains(where: { $0.contains("\n") }) { throw .badRequest("each ssh key must be a single line") }
            sets.append(("ssh_keys_raw", .text(keys.joined(separator: "\n"))))
        }
        if let distro = try body.int("distro", range: 0...Int64.max) {
            let exists = try await call.services.query("SELECT 1 FROM distros WHERE id = ?", [.integer(distro)])
            if exists.rows.isEmpty { throw .forbidden("no distro \(distro); GET /api/distros lists them") }
            sets.append(("distro_id", .integer(distro)))
        }
        if body.has("custom_distro") {
            if let customDistro = try body.int("custom_distro", range: 0...Int64.max) {
                // Stored in another container of the same customer on the same server.
                let usable = try await call.services.query("""
                    SELECT 1 FROM custom_distros cd JOIN containers k ON k.id = cd.container_id
                    WHERE cd.id = ? AND k.customer_id = ? AND k.server_id = ? AND k.id != ?
                    """, [.integer(customDistro), .integer(me.id), .integer(serverID), .integer(id)])
                if usable.rows.isEmpty {
                    throw .forbidden("custom distro \(customDistro) must be stored in another of your containers on the same server")
                }
                sets.append(("custom_distro_id", .integer(customDistro)))
            } else {
                sets.append(("custom_distro_id", .null))
            }
        }
        let memory = try body.int("memory", range: 1...(1 << 30))
        let storage = try body.int("storage", range: 1...(1 << 30))
        if (memory != nil || storage != nil) && !ownsServer {
            throw .forbidden("memory and storage can be changed only on a server you own")
        }
        var statements: [StoreClient.Statement] = []
        if !sets.isEmpty {
            statements.append(.init("UPDATE containers SET \(sets.map { "\($0.0) = ?" }.joined(separator: ", ")), mtime_ms = \(CustomerSQL.now) WHERE id = ?",
                                    sets.map(\.1) + [.integer(id)], mustChange: "container \(id + 30000) is gone"))
        }
        if memory != nil || storage != nil {
            let mem: DqliteValue = memory.map { .integer($0) } ?? .null
            let disk: DqliteValue = storage.map { .integer($0) } ?? .null
            statements.append(.init("""
                UPDATE containers SET memory = coalesce(?1, memory), storage = coalesce(?2, storage), mtime_ms = \(CustomerSQL.now)
                WHERE id = ?3
                  AND (SELECT coalesce(sum(memory), 0) FROM containers k WHERE k.server_id = containers.server_id AND k.id != ?3)
                      + coalesce(?1, memory) <= (SELECT memory FROM servers WHERE id = containers.server_id)
                  AND (SELECT coalesce(sum(storage), 0) FROM containers k WHERE k.server_id = containers.server_id AND k.id != ?3)
                      + coalesce(?2, storage) <= (SELECT storage FROM servers WHERE id = containers.server_id)
                """, [mem, disk, .integer(id)], mustChange: "not enough memory or storage on the server"))
        }
        if let tags = try body.stringList("tags") {
            statements.append(.init("DELETE FROM container_tags WHERE container_id = ?", [.integer(id)]))
            statements.append(.init("""
                INSERT OR IGNORE INTO container_tags(container_id, tag_id)
                SELECT ?, id FROM tags WHERE customer_id = ? AND name IN (SELECT value FROM json_each(?))
                """, [.integer(id), .integer(me.id), CustomerSQL.namesJSON(tags)]))
        }
        if let link = try body.int("link") {
            let target = link - AdminStore.baseUID
            if target == id { throw .conflict("a container cannot link to itself") }
            statements.append(.init("INSERT INTO container_links(container_id, to_id) SELECT ?, id FROM containers WHERE id = ?",
                                    [.integer(id), .integer(target)], mustChange: "no container \(link)"))
            statements.append(.init("UPDATE containers SET last_reboot_ms = max(last_reboot_ms + 1, \(CustomerSQL.now)) WHERE id = ?", [.integer(id)]))
        }
        if let unlink = try body.int("unlink") {
            statements.append(.init("DELETE FROM container_links WHERE container_id = ? AND to_id = ?", [.integer(id), .integer(unlink - AdminStore.baseUID)],
                                    mustChange: "container \(id + 30000) has no link to \(unlink)"))
            statements.append(.init("UPDATE containers SET last_reboot_ms = max(last_reboot_ms + 1, \(CustomerSQL.now)) WHERE id = ?", [.integer(id)]))
        }
        if body.has("reboot") {
            statements.append(.init("UPDATE containers SET last_reboot_ms = max(last_reboot_ms + 1, \(CustomerSQL.now)) WHERE id = ?", [.integer(id)]))
        }
        if !statements.isEmpty {
            try await call.services.write(call, statements, conflict: body.has("link") ? "the link already exists" : nil)
        }
        return APIResponse.json(try await detail(call, id: id))
    }

    static func regenerateSecret(_ call: APICall) async throws(APIError) -> Response {
        let me = try call.me
        let id = try call.containerID()
        try await CustomerSQL.requireContainer(call, id: id)
        let secret = UUID().uuidString.lowercased()
        try await call.services.write(call, [
            .init("UPDATE containers SET secret_uuid = ? WHERE id = ? AND customer_id = ?", [.text(secret), .integer(id), .integer(me.id)],
                  mustChange: "container \(id + 30000) is not one of yours"),
        ])
        return APIResponse.json(.object([("message", .string("Ok")), ("secret_uuid", .string(secret))]))
    }
}
