import Hummingbird
import Logging
import Node

/// The node's HTTP API: `GET /status`, `GET /.legion/lord`, `GET /metrics`, `GET /healthz`, and — when the
/// node has a store — the customer API under `/api/` (`CustomerAPI`) with its OpenAPI document at
/// `/api/openapi.json`. Runs as a `Service` next to the Legion service.
public enum NodeAPI {
    /// `subscriptions`: the HTTP router's table, for its per-domain counters in `/metrics`.
    /// `services`: store access for the customer API (nil: status routes only).
    public static func router(state: NodeState, subscriptions: SubscriptionStore? = nil, services: APIServices? = nil) -> Router<APIRequestContext> {
        let router = Router(context: APIRequestContext.self)
        if let services {
            let routes = allRoutes
            APIDispatcher.register(routes, on: router, services: services)
            let document = ByteBuffer(string: OpenAPIDocument.build(routes).serialized + "\n")
            router.post(RouterPath(StoreWriteForwarder.path)) { request, _ in await services.acceptForwarded(request) }
            router.post(RouterPath(PeerClient.path)) { request, _ in await PeerEndpoint.handle(request, services: services) }
            DashboardRoutes.register(on: router, services: services)
            router.get("/api/openapi.json") { _, _ in
                Response(status: .ok, headers: [.contentType: "application/json", .accessControlAllowOrigin: "*"], body: .init(byteBuffer: document))
            }
        }
        router.get("/healthz") { _, _ in "ok\n" }
        router.get("/status") { _, _ in
            json(state.statusJSON().serialized)
        }
        router.get("/.legion/lord") { _, _ in
            let snapshot = state.snapshot
            let known = snapshot.legion?.lord != nil
            return json(state.lordJSON(), status: known ? .ok : .serviceUnavailable)
        }
        router.get("/metrics") { _, _ in
            let s = state.snapshot
            let writer = services?.writer
            let busy = await writer?.busyRetries() ?? 0
            var lines: [String] = []
            func metric(_ name: String, _ help: String, _ type: String, _ values: [(String, String)]) {
                lines.append("# HELP \(name) \(help)")
                lines.append("# TYPE \(name) \(type)")
                for (labels, value) in values { lines.append("\(name)\(labels) \(value)") }
            }
            metric("legion_is_lord", "1 while this node is Lord", "gauge", [("", (s.legion?.isLord ?? false) ? "1" : "0")])
            metric("legion_members", "live members seen (excluding self)", "gauge", [("", String(s.legion?.members.count ?? 0))])
            metric("legion_lord_changes_total", "times this node became Lord", "counter", [("", String(s.lordChanges))])
            metric("legion_packets_received_total", "Legion datagrams received", "counter", [("", String(s.packetsIn))])
            metric("legion_packets_sent_total", "Legion datagrams sent", "counter", [("", String(s.packetsOut))])
            metric("legion_packets_dropped_total", "Legion datagrams dropped, by reason", "counter",
                   s.drops.sorted { $0.key < $1.key }.map { ("{reason=\"\($0.key)\"}", String($0.value)) })
            metric("legion_clock_skew_max_ms", "largest clock skew seen with a member", "gauge", [("", String(s.maxClockSkewMs))])
            metric("legion_lease_remaining_ms", "lease left (Lord, native mode)", "gauge", [("", String(s.legion?.leaseRemainingMs ?? 0))])
            if let subscriptions {
                let (nodes, stats) = subscriptions.snapshot
                var backends: [String: Int] = [:]
                for node in nodes { backends[node.keyString, default: 0] += 1 }
                metric("legion_router_backends", "subscribed backends per domain", "gauge",
                       backends.sorted { $0.key < $1.key }.map { ("{domain=\"\(label($0.key))\"}", String($0.value)) })
                metric("legion_router_requests_total", "requests finished per domain (\"-\": routed to no domain, e.g. 404)", "counter",
                       stats.hits.sorted { $0.key < $1.key }.map { ("{domain=\"\(label($0.key))\"}", String($0.value)) })
                metric("legion_router_response_bytes_total", "response bytes sent per domain", "counter",
                       stats.bytes.sorted { $0.key < $1.key }.map { ("{domain=\"\(label($0.key))\"}", String($0.value)) })
                metric("legion_router_handoffs_total", "connections the fast path handed to the general router", "counter",
                       [("", String(stats.handOffs))])
                metric("legion_subscriptions_accepted_total", "subscription packets applied", "counter", [("", String(stats.accepted))])
                metric("legion_subscriptions_rejected_total", "subscription packets refused, by reason", "counter",
                       stats.rejected.sorted { $0.key < $1.key }.map { ("{reason=\"\(label($0.key))\"}", String($0.value)) })
            }
            if let writer {
                let counters = writer.counters
                metric("legion_api_writes_total", "API writes committed through group commit", "counter", [("", String(counters.writes))])
                metric("legion_api_write_batches_total", "store transactions those writes took", "counter", [("", String(counters.batches))])
                metric("legion_api_write_batch_max", "largest batch so far", "gauge", [("", String(counters.largestBatch))])
                metric("legion_api_write_busy_retries_total", "batches retried because another node's writer held the store lock", "counter",
                       [("", String(busy))])
            }
            var response = Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4"],
                                    body: .init(byteBuffer: ByteBuffer(string: lines.joined(separator: "\n") + "\n")))
            response.headers[.cacheControl] = "no-store"
            return response
        }
        return router
    }

    public static func application(state: NodeState, subscriptions: SubscriptionStore? = nil, services: APIServices? = nil,
                                   host: String, port: Int, logger: Logger) -> some ApplicationProtocol {
        Application(router: router(state: state, subscriptions: subscriptions, services: services),
                    configuration: .init(address: .hostname(host, port: port), serverName: "legion"),
                    logger: logger)
    }

    /// Every route of the customer and admin APIs (the router and `/api/openapi.json` are built from it).
    public static var allRoutes: [APIRoute] { CustomerAPI.routes + AdminRoutes.routes + DashboardRoutes.routes }

    /// A Prometheus label value: backslash, double quote and newline escaped.
    static func label(_ value: String) -> String {
        var out = ""
        for ch in value {
            switch ch {
            case "\\": out += "\\\\"
            case "\"": out += "\\\""
            case "\n": out += "\\n"
            default: out.append(ch)
            }
        }
        return out
    }

    static func json(_ body: String, status: HTTPResponse.Status = .ok) -> Response {
        Response(status: status, headers: [.contentType: "application/json", .cacheControl: "no-store"],
                 body: .init(byteBuffer: ByteBuffer(string: body + "\n")))
    }
}
