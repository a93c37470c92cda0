import Foundation
import Hummingbird
import Node

/// `POST /.legion/peer`: what another node's API asks this node (signed, fresh — `PeerClient.accept`).
/// Ops: `metrics` (`series`, `prefix`, `from`, `to` → `{"series": {name: [[unix, value], …]}}`) and `node`
/// (`LocalNode.report()`). Read-only: nothing a peer request does changes state.
enum PeerEndpoint {
    static func handle(_ request: Request, services: APIServices) async -> Response {
        var request = request
        guard let peers = services.peers, let local = services.local,
              let buffer = try? await request.collectBody(upTo: 65536) else {
            return APIError.forbidden("not a peer request this node can answer").response
        }
        let fields: [String: JSONInput]
        switch peers.accept(Array(buffer.readableBytesView), signature: request.headers.value(named: "x-legion-signature")) {
        case .success(let f): fields = f
        case .failure(let why): return APIError.forbidden(why.description).response
        }
        let answer: JSONValue
        switch fields["op"]?.stringValue {
        case "node":
            answer = local.report()
        case "metrics":
            guard let series = fields["series"]?.stringValue, let from = fields["from"]?.intValue, let to = fields["to"]?.intValue else {
                return APIError.badRequest("metrics needs series, from and to").response
            }
            do throws(APIError) {
                answer = .object([("series", encode(try MetricsReader.local(local, series: series, prefix: fields["prefix"]?.boolValue ?? false,
                                                                             from: from, to: to)))])
            } catch {
                return error.response
            }
        default:
            return APIError.badRequest("unknown peer op").response
        }
        return Response(status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(string: answer.serialized)))
    }

    static func encode(_ series: [String: [[Int64]]]) -> JSONValue {
        .object(series.keys.sorted().map { key in (key, .array((series[key] ?? []).map { .array($0.map { .int($0) }) })) })
    }
}

/// Metric samples wherever they live: this node's metric store, or the owning node's through `PeerClient`.
enum MetricsReader {
    static func local(_ local: LocalNode, series: String, prefix: Bool, from: Int64, to: Int64) throws(APIError) -> [String: [[Int64]]] {
        guard let db = local.metrics else { return [:] }
        do {
            return try db.samples(series: series, prefix: prefix, from: from, to: to)
        } catch {
            throw .unavailable("the metric store of \(local.name) cannot be read: \(error)")
        }
    }

    /// Samples of `series` held by `node`.
    static func on(node: String, _ services: APIServices, series: String, prefix: Bool, from: Int64, to: Int64) async throws(APIError) -> [String: [[Int64]]] {
        guard let local = services.local else { return [:] }
        if node == local.name { return try Self.local(local, series: series, prefix: prefix, from: from, to: to) }
        // A server that is no node of this cluster (uwsgi.it's servers could be anything) has no samples: an empty day.
        guard let peers = services.peers, let peer = await peers.peers(services).first(where: { $0.node == node }) else { return [:] }
        let answer = await peers.call(peer, op: "metrics", arguments: [("series", .string(series)), ("prefix", .bool(prefix)),
                                                                      ("from", .int(from)), ("to", .int(to))])
        switch answer {
        case .success(let json):
            var out: [String: [[Int64]]] = [:]
            if case .object(let fields)? = json["series"] {
                for (name, samples) in fields {
                    out[name] = samples.arrayValue.compactMap { pair in
                        let values = pair.arrayValue.compactMap(\.intValue)
                        return values.count == 2 ? values : nil
                    }
                }
            }
            return out
        case .failure(let why):
            throw .unavailable("the metrics of node \(node) cannot be read now (\(why)); try again")
        }
    }
}
