import Foundation
import HTTPTypes
import Hummingbird
import Node
import Store

/// The web dashboard, served by every node's API (and so through the API domain and the failover IP):
/// `/dashboard/` (the page, its script and style, embedded in the binary — no CDN), the operator (`/admin/dashboard`) and customer (`/api/dashboard/customer`)
/// snapshots as JSON, and the same as Server-Sent Events (`…/events`: a snapshot a second, read by the page with
/// `fetch`, since EventSource cannot send credentials in a header).
///
/// Operators log in with an operator token (Bearer), customers with their API credentials (Basic); a customer's
/// snapshot holds only rows of their own (every query filters by their id), and their graphs use the customer
/// metric routes, which check ownership.
public enum DashboardRoutes {
    static var routes: [APIRoute] {
        [
            APIRoute(method: .get, path: "/admin/dashboard", summary: "The operator view: members, Lord, VIP, store, failovers, domains, alarms",
                     tag: "dashboard", auth: .operator, query: [], body: .none, outcomes: [.ok(Schema.anyValue)], handler: { call throws(APIError) in
                         APIResponse.json(await operatorSnapshot(call.services))
                     }),
            APIRoute(method: .get, path: "/api/dashboard/customer", summary: "The customer view: your containers, domains and alarms",
                     tag: "dashboard", auth: .customer, query: [], body: .none, outcomes: [.ok(Schema.anyValue)], handler: { call throws(APIError) in
                         APIResponse.json(try await customerSnapshot(call.services, customer: try call.me))
                     }),
        ]
    }

    static func register(on router: Router<APIRequestContext>, services: APIServices) {
        for asset in DashboardAssets.all {
            // The page answers /dashboard and /dashboard/ (one route); it names its files by absolute path.
            let path = asset.name == "index.html" ? "/dashboard" : "/dashboard/\(asset.name)"
            let body = ByteBuffer(string: asset.text)
            router.get(RouterPath(path)) { _, _ in
                Response(status: .ok, headers: [.contentType: asset.contentType, .cacheControl: "no-cache",
                                                .init("X-Content-Type-Options")!: "nosniff",
                                                .init("Content-Security-Policy")!: "default-src 'self'; style-src 'self'; script-src 'self'; img-src 'self' data:"],
                         body: .init(byteBuffer: body))
            }
        }
        router.get("/api/dashboard/whoami") { request, context in
            do throws(APIError) {
                if let auth = request.headers[.authorization], auth.lowercased().hasPrefix("bearer ") {
                    let name = try await services.operators.authenticate(request.headers, client: context.client(request))
                    return APIResponse.json(.object([("role", .string("operator")), ("name", .string(name))]))
                }
                guard let credentials = CustomerAuthenticator.credentials(in: request.headers) else { throw .unauthorized }
                let me = try await services.authenticator.authenticate(credentials, client: context.client(request))
                return APIResponse.json(.object([("role", .string("customer")), ("username", .string(me.username))]))
            } catch {
                return error.response
            }
        }
        router.get("/admin/dashboard/events") { request, context in
            do throws(APIError) {
                _ = try await services.operators.authenticate(request.headers, client: context.client(request))
            } catch {
                return error.response
            }
            return events(intervalMs: 1000) { await operatorSnapshot(services) }
        }
        router.get("/api/dashboard/customer/events") { request, context in
            let me: CustomerIdentity
            do throws(APIError) {
                guard let credentials = CustomerAuthenticator.credentials(in: request.headers) else { throw .unauthorized }
                me = try await services.authenticator.authenticate(credentials, client: context.client(request))
            } catch {
                return error.response
            }
            return events(intervalMs: 2000) {
                do throws(APIError) {
                    return try await customerSnapshot(services, customer: me)
                } catch {
                    return .object([("error", .string("\(error)"))])
                }
            }
        }
    }

    /// An SSE stream: `event: snapshot` with one JSON line, every `intervalMs`, until the client goes away.
    static func events(intervalMs: Int, _ snapshot: @escaping @Sendable () async -> JSONValue) -> Response {
        let body = ResponseBody { writer in
            try await writer.write(ByteBuffer(string: ": legion dashboard events\nretry: 1000\n\n"))
            while !Task.isCancelled {
                let json = await snapshot()
                try await writer.write(ByteBuffer(string: "event: snapshot\ndata: \(json.serialized)\n\n"))
                try await Task.sleep(for: .milliseconds(intervalMs))
            }
            try await writer.finish(nil)
        }
        return Response(status: .ok, headers: [.contentType: "text/event-stream", .cacheControl: "no-store",
                                               .init("X-Accel-Buffering")!: "no"], body: body)
    }

    /// Every node's report (this node's directly), gathered in parallel with a short timeout each.
    static func reports(_ services: APIServices) async -> [DashboardView.NodeReport] {
        guard let local = services.local else { return [] }
        let own = DashboardView.NodeReport(node: local.name, report: try? JSONDecoder().decode(JSONInput.self, from: Data(local.report().serialized.utf8)))
        guard let peers = services.peers else { return [own] }
        let others = await peers.peers(services).filter { $0.node != local.name }
        return await withTaskGroup(of: DashboardView.NodeReport.self) { group in
            for peer in others {
                group.addTask {
                    switch await peers.call(peer, op: "node", arguments: [], timeoutMs: 700) {
                    case .success(let json): return .init(node: peer.node, report: json)
                    case .failure(let why): return .init(node: peer.node, report: nil, error: why.description)
                    }
                }
            }
            var out = [own]
            for await report in group { out.append(report) }
            return out
        }
    }

    static func alarmJSON(_ row: [DqliteValue]) -> JSONValue {
        .object([("id", row[0].json), ("container", row[1].json), ("level", row[2].json), ("msg", row[3].json), ("unix_ms", row[4].json),
                 ("color", row[5].json)])
    }

    static func operatorSnapshot(_ services: APIServices) async -> JSONValue {
        async let gathered = reports(services)
        let alarms = (try? await services.query("SELECT id, container_id + 30000, level, msg, unix_ms, color FROM alarms ORDER BY unix_ms DESC, id DESC LIMIT 50"))?
            .rows.map(alarmJSON) ?? []
        let legion = services.local?.state.snapshot.legionName ?? "legion"
        return DashboardView.operatorView(legion: legion, reports: await gathered, alarms: alarms, nowMs: SystemClock.wallMillis())
    }

    static func customerSnapshot(_ services: APIServices, customer: CustomerIdentity) async throws(APIError) -> JSONValue {
        async let gathered = reports(services)
        let containers = try await services.query("""
            SELECT k.id + 30000, k.name, s.name, k.memory, k.storage FROM containers k JOIN servers s ON s.id = k.server_id
            WHERE k.customer_id = ? ORDER BY k.id
            """, [.integer(customer.id)])
        let domains = try await services.query("SELECT id, name FROM domains WHERE customer_id = ? ORDER BY name", [.integer(customer.id)])
        let alarms = try await services.query("""
            SELECT a.id, a.container_id + 30000, a.level, a.msg, a.unix_ms, a.color FROM alarms a JOIN containers k ON k.id = a.container_id
            WHERE k.customer_id = ? ORDER BY a.unix_ms DESC, a.id DESC LIMIT 50
            """, [.integer(customer.id)])
        let reports = await gathered
        return .object([
            ("generated_ms", .uint(SystemClock.wallMillis())), ("username", .string(customer.username)),
            ("containers", .array(containers.rows.map { row in
                let uid = row[0].int ?? 0, server = row[2].string ?? ""
                return .object([("uid", row[0].json), ("name", row[1].json), ("server", row[2].json), ("memory", row[3].json), ("storage", row[4].json),
                                ("state", .string(DashboardView.containerState(uid: uid, server: server, reports: reports))),
                                ("storage_used", DashboardView.storageUsed(uid: uid, server: server, reports: reports))])
            })),
            ("domains", .array(domains.rows.map { .object([("id", $0[0].json), ("name", $0[1].json)]) })),
            ("alarms", .array(alarms.rows.map(alarmJSON))),
        ])
    }
}
