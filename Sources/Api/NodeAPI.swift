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
            let text = await NodeMetricsExporter.shared.render(state: state, subscriptions: subscriptions, writer: services?.writer)
            return Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4", .cacheControl: "no-store"],
                            body: .init(byteBuffer: ByteBuffer(bytes: text)))
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

    static func json(_ body: String, status: HTTPResponse.Status = .ok) -> Response {
        Response(status: status, headers: [.contentType: "application/json", .cacheControl: "no-store"],
                 body: .init(byteBuffer: ByteBuffer(string: body + "\n")))
    }
}
