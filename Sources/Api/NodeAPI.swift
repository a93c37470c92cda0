import Hummingbird
import Logging
import Node

/// The node's HTTP API (status only for now): `GET /status`, `GET /.legion/lord`, `GET /metrics`,
/// `GET /healthz`. Runs as a `Service` next to the Legion service.
public enum NodeAPI {
    public static func router(state: NodeState) -> Router<BasicRequestContext> {
        let router = Router()
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
            var response = Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4"],
                                    body: .init(byteBuffer: ByteBuffer(string: lines.joined(separator: "\n") + "\n")))
            response.headers[.cacheControl] = "no-store"
            return response
        }
        return router
    }

    public static func application(state: NodeState, host: String, port: Int, logger: Logger) -> some ApplicationProtocol {
        Application(router: router(state: state),
                    configuration: .init(address: .hostname(host, port: port), serverName: "legion"),
                    logger: logger)
    }

    static func json(_ body: String, status: HTTPResponse.Status = .ok) -> Response {
        Response(status: status, headers: [.contentType: "application/json", .cacheControl: "no-store"],
                 body: .init(byteBuffer: ByteBuffer(string: body + "\n")))
    }
}
