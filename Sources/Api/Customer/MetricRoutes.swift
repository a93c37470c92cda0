import Foundation
import Hummingbird
import Node
import Store

/// `metrics/container.<m>/<uid>` and `metrics/domain.<m>/<id>`: one day of samples.
///
/// Samples live in each node's own metric store (`MetricsCollector`); any node answers: a container's samples are
/// read from the node it runs on (its server), a domain's from every node's router (one entry per node that served
/// it), through the signed peer endpoint. `?last=SECONDS` (at most 7 days) asks for the last seconds instead of a
/// day (the dashboard's graphs).
enum MetricRoutes {
    static let containerMetrics = ["io.read", "io.write", "net.rx", "net.tx", "cpu", "mem", "mem.rss", "mem.cache", "quota"]
    /// Domain metrics: hits and response bytes (`net.tx`) per domain, as each node's router counted them;
    /// `net.rx` (request bytes) is not counted by the router and answers an empty list.
    static let domainMetrics = ["net.rx", "net.tx", "hits"]

    static let dayParameters: [APIRoute.QueryParameter] = [
        .init(name: "year", schema: Schema.integer(minimum: 1970, maximum: 9999), description: "default: today (UTC)"),
        .init(name: "month", schema: Schema.integer(minimum: 1, maximum: 12), description: "default: today (UTC)"),
        .init(name: "day", schema: Schema.integer(minimum: 1, maximum: 31), description: "default: today (UTC)"),
        .init(name: "last", schema: Schema.integer(minimum: 1, maximum: 7 * 86400), description: "the last SECONDS instead of a day"),
    ]

    static var routes: [APIRoute] {
        containerMetrics.map { metric in
            APIRoute(method: .get, path: "/api/metrics/container.\(metric)/{uid}", summary: "One day of the container's \(metric) samples",
                     tag: "metrics", auth: .customer, query: dayParameters, body: .none,
                     outcomes: [.ok(Schema.array(Schema.ref("Sample"))), .forbidden("not your container")], handler: { call throws(APIError) in
                         try await container(call, metric: metric)
                     })
        } + domainMetrics.map { metric in
            APIRoute(method: .get, path: "/api/metrics/domain.\(metric)/{id}", summary: "One day of the domain's \(metric) samples, per node",
                     tag: "metrics", auth: .customer, query: dayParameters, body: .none,
                     outcomes: [.ok(Schema.array(Schema.ref("DomainSamples"))), .notFound("not your domain")], handler: { call throws(APIError) in
                         try await domain(call, metric: metric)
                     })
        }
    }

    /// `[from, to)` in unix seconds: `last` seconds up to now, or the UTC day asked (default today).
    static func range(_ call: APICall) throws(APIError) -> (Int64, Int64) {
        if let text = call.query["last"] {
            guard let last = Int64(text), (1...7 * 86400).contains(last) else { throw .badRequest("last must be 1...604800 seconds") }
            let now = Int64(Date().timeIntervalSince1970)
            return (now - last, now + 1)
        }
        let (year, month, day) = try CustomerSQL.day(call)
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = TimeZone(identifier: "UTC") ?? .current
        guard let date = calendar.date(from: DateComponents(year: year, month: month, day: day)),
              calendar.component(.day, from: date) == day else { throw .badRequest("\(year)-\(month)-\(day) is not a date") }
        let from = Int64(date.timeIntervalSince1970)
        return (from, from + 86400)
    }

    static func samplesJSON(_ samples: [[Int64]]) -> JSONValue {
        .array(samples.map { .array($0.map { .int($0) }) })
    }

    static func container(_ call: APICall, metric: String) async throws(APIError) -> Response {
        let me = try call.me
        let id = try call.containerID()
        let rows = try await call.services.query("SELECT s.name FROM containers k JOIN servers s ON s.id = k.server_id WHERE k.id = ? AND k.customer_id = ?",
                                                 [.integer(id), .integer(me.id)])
        guard let server = rows.rows.first?[0].string else { throw .forbidden("container \(id + 30000) is not one of yours") }
        let (from, to) = try range(call)
        let series = "container.\(metric)/\(id + 30000)"
        let samples = try await MetricsReader.on(node: server, call.services, series: series, prefix: false, from: from, to: to)
        return APIResponse.json(samplesJSON(samples[series] ?? []))
    }

    static func domain(_ call: APICall, metric: String) async throws(APIError) -> Response {
        let domain = try await DomainRoutes.one(call, id: try call.number("id"))
        guard case .object(let fields) = domain, case .string(let name)? = fields.first(where: { $0.0 == "name" })?.1 else {
            throw .notFound("domain not found")
        }
        let (from, to) = try range(call)
        guard metric != "net.rx", let peers = call.services.peers else { return APIResponse.json(.array([])) }
        let services = call.services
        let series = "domain.\(metric)/\(name.lowercased())"
        var entries: [JSONValue] = []
        let nodes = await peers.peers(services)
        let results = await withTaskGroup(of: (String, Result<[String: [[Int64]]], APIError>).self) { group in
            for peer in nodes {
                group.addTask {
                    do throws(APIError) {
                        return (peer.node, .success(try await MetricsReader.on(node: peer.node, services, series: series, prefix: false, from: from, to: to)))
                    } catch {
                        return (peer.node, .failure(error))
                    }
                }
            }
            var out: [(String, Result<[String: [[Int64]]], APIError>)] = []
            for await result in group { out.append(result) }
            return out.sorted { $0.0 < $1.0 }
        }
        for (node, result) in results {
            // A node that cannot answer now is left out (its samples are not lost; ask again).
            guard case .success(let samples) = result, let values = samples[series], !values.isEmpty else { continue }
            entries.append(.object([("container", .null), ("node", .string(node)), ("metrics", samplesJSON(values))]))
        }
        return APIResponse.json(.array(entries))
    }
}

/// `portmappings/<server address>`: port forwarding on a server the customer owns.
enum PortmapRoutes {
    static var routes: [APIRoute] {
        [
            APIRoute(method: .get, path: "/api/portmappings/{ip}", summary: "Port mappings of a server you own", tag: "portmappings",
                     auth: .customer, query: [], body: .none,
                     outcomes: [.ok(Schema.array(Schema.ref("Portmap"))), .forbidden("not your server")], handler: list),
            APIRoute(method: .post, path: "/api/portmappings/{ip}", summary: "Forward a public port to a container's port", tag: "portmappings",
                     auth: .customer, query: [],
                     body: .json(Schema.object([("proto", Schema.enumeration(["tcp", "udp"])), ("public_port", Schema.integer(minimum: 1024, maximum: 65535)),
                                                ("private_port", Schema.integer(minimum: 1024, maximum: 65535)), ("container", Schema.integer)])),
                     outcomes: [.created, .forbidden("not your server or container, or a port outside 1024-65535 (1999, 3022, 3026 reserved)"),
                                .conflict("the public or private port is already mapped")], handler: create),
            APIRoute(method: .delete, path: "/api/portmappings/{ip}", summary: "Remove a port mapping", tag: "portmappings", auth: .customer,
                     query: [], body: .json(Schema.object([("id", Schema.integer)])),
                     outcomes: [.okMessage, .forbidden("not your server or mapping")], handler: delete),
        ]
    }

    static func server(_ call: APICall) async throws(APIError) -> Int64 {
        let me = try call.me
        let address = call.parameters["ip"] ?? ""
        let rows = try await call.services.query("SELECT id FROM servers WHERE address = ? AND owner_id = ?", [.text(address), .integer(me.id)])
        guard let id = rows.scalar?.int else { throw .forbidden("server \(address.prefix(64)) is not one of yours") }
        return id
    }

    static func list(_ call: APICall) async throws(APIError) -> Response {
        let serverID = try await server(call)
        let rows = try await call.services.query("""
            SELECT p.id, p.proto, p.public_port, p.container_id, p.private_port FROM portmaps p JOIN containers k ON k.id = p.container_id
            WHERE k.server_id = ? ORDER BY p.id
            """, [.integer(serverID)])
        return APIResponse.json(.array(rows.rows.map { row in
            .object([("id", row[0].json), ("proto", row[1].json), ("public_port", row[2].json), ("container", .int((row[3].int ?? 0) + 30000)),
                     ("container_ip", .string(AdminStore.containerIP(id: row[3].int ?? 0))), ("private_port", row[4].json)])
        }))
    }

    static func create(_ call: APICall) async throws(APIError) -> Response {
        let me = try call.me
        let serverID = try await server(call)
        let body = try call.json(allowed: ["proto", "public_port", "private_port", "container"])
        let proto = try body.requiredString("proto")
        guard proto == "tcp" || proto == "udp" else { throw .forbidden("proto must be tcp or udp") }
        guard let publicPort = try body.int("public_port"), let privatePort = try body.int("private_port"), let uid = try body.int("container") else {
            throw .forbidden("proto, public_port, private_port and container are required")
        }
        guard (1024...65535).contains(publicPort), ![1999, 3022, 3026].contains(publicPort) else {
            throw .forbidden("public_port must be 1024-65535 and not 1999, 3022 or 3026")
        }
        guard (1024...65535).contains(privatePort) else { throw .forbidden("private_port must be 1024-65535") }
        let owned = try await call.services.query("SELECT 1 FROM containers WHERE id = ? AND customer_id = ? AND server_id = ?",
                                                  [.integer(uid - 30000), .integer(me.id), .integer(serverID)])
        if owned.rows.isEmpty { throw .forbidden("container \(uid) is not one of yours on this server") }
        // The public port is unique per server (uwsgi.it only checked per container: two containers could claim it).
        let receipt = try await call.services.write(call, [
            .init("""
                INSERT INTO portmaps(proto, public_port, container_id, private_port, ctime_ms, mtime_ms)
                SELECT ?1, ?2, ?3, ?4, \(CustomerSQL.now), \(CustomerSQL.now)
                WHERE NOT EXISTS (SELECT 1 FROM portmaps p JOIN containers k ON k.id = p.container_id
                                  WHERE k.server_id = ?5 AND p.proto = ?1 AND p.public_port = ?2)
                """, [.text(proto), .integer(publicPort), .integer(uid - 30000), .integer(privatePort), .integer(serverID)],
                  mustChange: "\(proto) port \(publicPort) is already mapped on this server"),
            .init("UPDATE servers SET portmappings_mtime_ms = \(CustomerSQL.now) WHERE id = ?", [.integer(serverID)]),
        ], conflict: "the private port is already mapped for this container")
        return APIResponse.json(.object([("message", .string("Created")), ("id", .int(receipt.insertIDs.first ?? 0))]), status: .created)
    }

    static func delete(_ call: APICall) async throws(APIError) -> Response {
        let serverID = try await server(call)
        let body = try call.json(allowed: ["id"])
        guard let id = try body.int("id") else { throw .forbidden("id is required") }
        let rows = try await call.services.query("SELECT 1 FROM portmaps p JOIN containers k ON k.id = p.container_id WHERE p.id = ? AND k.server_id = ?",
                                                 [.integer(id), .integer(serverID)])
        if rows.rows.isEmpty { throw .forbidden("port mapping \(id) is not on this server") }
        try await call.services.write(call, [.init("DELETE FROM portmaps WHERE id = ?", [.integer(id)])])
        return APIResponse.ok()
    }
}

/// Every customer route, in one table (the router and the OpenAPI document are both built from it).
public enum CustomerAPI {
    public static var routes: [APIRoute] {
        ProfileRoutes.routes + ContainerRoutes.routes + DomainRoutes.routes + LoopboxRoutes.routes + AlarmRoutes.routes
            + MetricRoutes.routes + PortmapRoutes.routes
    }
}
