import Foundation
import Hummingbird
import Node
import Store

/// The admin API (`/admin/…`): the operations of `legion admin`, each calling the same `AdminStore` method the
/// CLI calls (one implementation), authenticated with operator tokens. Writes honour `X-Request-Id`.
public enum AdminRoutes {
    static let rows = Schema.array(.object([("type", .string("object"))]))
    static let done = APIRoute.Outcome(status: 200, description: "done", schema: Schema.object([("message", Schema.string)], additional: true))
    static let made = APIRoute.Outcome(status: 201, description: "created", schema: Schema.object([("message", Schema.string)], additional: true))
    static let refused = APIRoute.Outcome.conflict("refused by the store (exists, missing reference, capacity…); the reason says which")

    static func list(_ path: String, _ summary: String, query: [APIRoute.QueryParameter] = [],
                     _ body: @escaping @Sendable (APICall) async throws(APIError) -> DqliteRows) -> APIRoute {
        APIRoute(method: .get, path: path, summary: summary, tag: "admin", auth: .operator, query: query, body: .none,
                 outcomes: [.ok(rows)], handler: { call throws(APIError) in APIResponse.json(try await body(call).json) })
    }

    static func write(_ method: HTTPRequest.Method, _ path: String, _ summary: String, body schema: JSONValue? = nil, created: Bool = false,
                      _ body: @escaping @Sendable (APICall) async throws(APIError) -> JSONValue) -> APIRoute {
        APIRoute(method: method, path: path, summary: summary, tag: "admin", auth: .operator, query: [],
                 body: schema.map { .json($0) } ?? .none, outcomes: [created ? made : done, refused],
                 handler: { call throws(APIError) in
                     let result = try await body(call)
                     return APIResponse.json(result, status: created ? .created : .ok)
                 })
    }

    /// `DELETE /admin/<things>/{name}`: one `AdminStore` delete by name.
    static func deleteNamed(_ path: String, _ what: String, _ summary: String,
                            _ operation: @escaping @Sendable (AdminStore, String, String) async throws(StoreError) -> StoreClient.WriteReceipt) -> APIRoute {
        write(.delete, path, summary) { call throws(APIError) in
            let name = call.parameters["name"] ?? ""
            let receipt = try await call.services.admin { admin throws(StoreError) in try await operation(admin, name, call.requestID) }
            return message("\(what) \(name) deleted", receipt)
        }
    }

    static func message(_ text: String, _ receipt: StoreClient.WriteReceipt, _ extra: [(String, JSONValue)] = []) -> JSONValue {
        .object([("message", .string(text)), ("replayed", .bool(receipt.replayed))] + extra)
    }

    public static var routes: [APIRoute] {
        let s = Schema.self
        return [
            // customers
            list("/admin/customers", "Customers") { call throws(APIError) in try await call.services.admin { admin throws(StoreError) in try await admin.customers() } },
            write(.post, "/admin/customers", "Add a customer (an API login with an RSA key pair)",
                  body: s.object([("username", s.string), ("password", s.string), ("email", s.nullableString), ("company", s.nullableString),
                                  ("vat", s.nullableString)], required: ["username", "password"]), created: true) { call throws(APIError) in
                let b = try call.json(allowed: ["username", "password", "email", "company", "vat"])
                let username = try b.requiredString("username", max: 150), password = try b.requiredString("password", max: 1024)
                let email = try b.nullableString("email") ?? nil, company = try b.nullableString("company") ?? nil, vat = try b.nullableString("vat") ?? nil
                let receipt = try await call.services.admin { admin throws(StoreError) in
                    try await admin.addCustomer(username: username, password: password, email: email, company: company, vat: vat, requestID: call.requestID)
                }
                return message("customer \(username) added", receipt, [("id", .int(receipt.insertIDs.first ?? 0))])
            },
            deleteNamed("/admin/customers/{name}", "customer", "Delete a customer (refused while they have containers)") { admin, name, id throws(StoreError) in try await admin.deleteCustomer(username: name, requestID: id) },
            // servers
            list("/admin/servers", "Servers with used memory and storage") { call throws(APIError) in try await call.services.admin { admin throws(StoreError) in try await admin.servers() } },
            write(.post, "/admin/servers", "Add a server (a node that hosts containers)",
                  body: s.object([("name", s.string), ("address", s.string), ("memory", s.integer(minimum: 0)), ("storage", s.integer(minimum: 0)),
                                  ("hd", s.string), ("datacenter", s.nullableString), ("owner", s.nullableString)],
                                 required: ["name", "address", "memory", "storage"]), created: true) { call throws(APIError) in
                let b = try call.json(allowed: ["name", "address", "memory", "storage", "hd", "datacenter", "owner"])
                let name = try b.requiredString("name"), address = try b.requiredString("address")
                guard let memory = try b.int("memory", range: 0...(1 << 40)), let storage = try b.int("storage", range: 0...(1 << 40)) else {
                    throw .badRequest("memory and storage (MB) are required")
                }
                let hd = try b.string("hd") ?? "", datacenter = try b.nullableString("datacenter") ?? nil, owner = try b.nullableString("owner") ?? nil
                let receipt = try await call.services.admin { admin throws(StoreError) in
                    try await admin.addServer(name: name, address: address, memory: Int(memory), storage: Int(storage), hd: hd, datacenter: datacenter,
                                              owner: owner, requestID: call.requestID)
                }
                return message("server \(name) added", receipt)
            },
            deleteNamed("/admin/servers/{name}", "server", "Delete a server (refused while it hosts containers)") { admin, name, id throws(StoreError) in try await admin.deleteServer(name: name, requestID: id) },
            // legions
            list("/admin/legions", "Legions and their servers") { call throws(APIError) in try await call.services.admin { admin throws(StoreError) in try await admin.legions() } },
            write(.post, "/admin/legions", "Add a legion (a failover IP shared by servers)",
                  body: s.object([("name", s.string), ("address", s.string), ("nodes", s.array(s.string)), ("key", s.string)],
                                 required: ["name", "address", "nodes"]), created: true) { call throws(APIError) in
                let b = try call.json(allowed: ["name", "address", "nodes", "key"])
                let name = try b.requiredString("name"), address = try b.requiredString("address")
                let nodes = try b.stringList("nodes") ?? [], key = try b.string("key") ?? ""
                let receipt = try await call.services.admin { admin throws(StoreError) in
                    try await admin.addLegion(name: name, address: address, servers: nodes, key: key, requestID: call.requestID)
                }
                return message("legion \(name) added", receipt)
            },
            deleteNamed("/admin/legions/{name}", "legion", "Delete a legion") { admin, name, id throws(StoreError) in try await admin.deleteLegion(name: name, requestID: id) },
            // distros
            list("/admin/distros", "Shared distros") { call throws(APIError) in try await call.services.admin { admin throws(StoreError) in try await admin.distros() } },
            write(.post, "/admin/distros", "Add a distro (a directory under /distros)",
                  body: s.object([("name", s.string), ("path", s.string)]), created: true) { call throws(APIError) in
                let b = try call.json(allowed: ["name", "path"])
                let name = try b.requiredString("name"), path = try b.requiredString("path")
                let receipt = try await call.services.admin { admin throws(StoreError) in try await admin.addDistro(name: name, path: path, requestID: call.requestID) }
                return message("distro \(name) added", receipt)
            },
            deleteNamed("/admin/distros/{name}", "distro", "Delete a distro") { admin, name, id throws(StoreError) in try await admin.deleteDistro(name: name, requestID: id) },
            // containers
            list("/admin/containers", "Containers (optionally of one server)",
                 query: [.init(name: "server", schema: s.string, description: "only this server's")]) { call throws(APIError) in
                let server = call.query["server"]
                return try await call.services.admin { admin throws(StoreError) in try await admin.containers(server: server) }
            },
            write(.post, "/admin/containers", "Add a container on a server, or on the least-loaded server of a legion",
                  body: s.object([("name", s.string), ("customer", s.string), ("server", s.string), ("legion", s.string),
                                  ("memory", s.integer(minimum: 0)), ("storage", s.integer(minimum: 0)), ("distro", s.nullableString),
                                  ("ssh_keys", s.array(s.string))], required: ["name", "customer", "memory", "storage"]),
                  created: true) { call throws(APIError) in
                let b = try call.json(allowed: ["name", "customer", "server", "legion", "memory", "storage", "distro", "ssh_keys"])
                let name = try b.requiredString("name"), customer = try b.requiredString("customer")
                guard let memory = try b.int("memory", range: 0...(1 << 40)), let storage = try b.int("storage", range: 0...(1 << 40)) else {
                    throw .badRequest("memory and storage (MB) are required")
                }
                let distro = try b.nullableString("distro") ?? nil
                let keys = try b.stringList("ssh_keys").map { $0.joined(separator: "\n") }
                let server: String
                if let given = try b.string("server") {
                    server = given
                } else if let legion = try b.string("legion") {
                    let placed = try await call.services.admin { admin throws(StoreError) in try await admin.placement(legion: legion, memory: Int(memory), storage: Int(storage)) }
                    guard let placed else { throw .conflict("no server of legion \(legion) has \(memory) MB memory and \(storage) MB storage free") }
                    server = placed
                } else {
                    throw .badRequest("give server (a server name) or legion (placed on its least-loaded server)")
                }
                let receipt = try await call.services.admin { admin throws(StoreError) in
                    try await admin.addContainer(name: name, customer: customer, server: server, memory: Int(memory), storage: Int(storage),
                                                 distro: distro, sshKeys: keys, requestID: call.requestID)
                }
                let id = receipt.insertIDs.first ?? 0
                return message("container \(id + AdminStore.baseUID) added on \(server)", receipt,
                               [("uid", .int(id + AdminStore.baseUID)), ("server", .string(server)), ("ip", .string(AdminStore.containerIP(id: id)))])
            },
            write(.delete, "/admin/containers/{uid}", "Delete a container") { call throws(APIError) in
                let uid = try call.number("uid")
                let receipt = try await call.services.admin { admin throws(StoreError) in try await admin.deleteContainer(uid: uid, requestID: call.requestID) }
                return message("container \(uid) deleted", receipt)
            },
            write(.post, "/admin/containers/{uid}/reboot", "Restart a container wherever it runs") { call throws(APIError) in
                let uid = try call.number("uid")
                let receipt = try await call.services.admin { admin throws(StoreError) in try await admin.rebootContainer(uid: uid, requestID: call.requestID) }
                return message("container \(uid) rebooted", receipt)
            },
            write(.post, "/admin/containers/{uid}/resize", "Change a container's memory and/or storage (MB)",
                  body: s.object([("memory", s.integer(minimum: 0)), ("storage", s.integer(minimum: 0))], required: [])) { call throws(APIError) in
                let uid = try call.number("uid")
                let b = try call.json(allowed: ["memory", "storage"])
                let memory = try b.int("memory", range: 0...(1 << 40)).map(Int.init), storage = try b.int("storage", range: 0...(1 << 40)).map(Int.init)
                let receipt = try await call.services.admin { admin throws(StoreError) in try await admin.resizeContainer(uid: uid, memory: memory, storage: storage, requestID: call.requestID) }
                return message("container \(uid) resized", receipt)
            },
            write(.post, "/admin/containers/{uid}/ssh_keys", "Replace a container's authorized ssh keys",
                  body: s.object([("keys", s.array(s.string))])) { call throws(APIError) in
                let uid = try call.number("uid")
                let b = try call.json(allowed: ["keys"])
                let keys = (try b.stringList("keys") ?? []).joined(separator: "\n")
                let receipt = try await call.services.admin { admin throws(StoreError) in try await admin.setContainerSSHKeys(uid: uid, keys: keys, requestID: call.requestID) }
                return message("container \(uid) ssh keys set", receipt)
            },
            // domains
            list("/admin/domains", "Domains (optionally of one customer)",
                 query: [.init(name: "customer", schema: s.string, description: "only this customer's")]) { call throws(APIError) in
                let customer = call.query["customer"]
                return try await call.services.admin { admin throws(StoreError) in try await admin.domains(customer: customer) }
            },
            write(.post, "/admin/domains", "Add a domain for a customer (no DNS check: operators vouch)",
                  body: s.object([("name", s.string), ("customer", s.string)]), created: true) { call throws(APIError) in
                let b = try call.json(allowed: ["name", "customer"])
                let name = try b.requiredString("name"), customer = try b.requiredString("customer")
                let receipt = try await call.services.admin { admin throws(StoreError) in try await admin.addDomain(name: name, customer: customer, requestID: call.requestID) }
                return message("domain \(name) added", receipt)
            },
            deleteNamed("/admin/domains/{name}", "domain", "Delete a domain") { admin, name, id throws(StoreError) in try await admin.deleteDomain(name: name, requestID: id) },
            // news
            list("/admin/news", "News, newest first") { call throws(APIError) in try await call.services.admin { admin throws(StoreError) in try await admin.news() } },
            write(.post, "/admin/news", "Publish a news item", body: s.object([("content", s.string), ("public", s.boolean)], required: ["content"]),
                  created: true) { call throws(APIError) in
                let b = try call.json(allowed: ["content", "public"])
                let content = try b.requiredString("content", max: 65536), isPublic = try b.bool("public") ?? false
                let receipt = try await call.services.admin { admin throws(StoreError) in try await admin.addNews(content: content, isPublic: isPublic, requestID: call.requestID) }
                return message("news added", receipt, [("id", .int(receipt.insertIDs.first ?? 0))])
            },
            write(.delete, "/admin/news/{id}", "Delete a news item") { call throws(APIError) in
                let id = try call.number("id")
                let receipt = try await call.services.admin { admin throws(StoreError) in try await admin.deleteNews(id: id, requestID: call.requestID) }
                return message("news \(id) deleted", receipt)
            },
        ]
    }
}
