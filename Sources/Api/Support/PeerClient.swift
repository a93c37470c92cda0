import Crypto
import Foundation
import Hummingbird
import Logging
import Node
import Store
import Synchronization

/// Node-to-node reads for the API and the dashboard: "your metric samples of X", "your status, audit tail and
/// router table". `POST /.legion/peer` with a JSON body `{"op", "at_ms", …}` signed with an HMAC under a key derived
/// from the legion secret (another label than the store-write hop's); a request older or newer than 60 s is refused,
/// so a captured request cannot be replayed later. Peers are found in the store's `node_endpoints` (every node
/// records its API address there at start).
public final class PeerClient: Sendable {
    public static let path = "/.legion/peer"

    public struct Peer: Sendable, Equatable {
        public var node: String
        public var url: String
    }

    let signer: HopSigner
    public let nodeName: String
    let ownURL: String
    let logger: Logger
    private let client = InternalHTTPClient()
    private let cache = Mutex<(peers: [Peer], refreshedMs: UInt64)>(([], 0))

    public init(secret: [UInt8], nodeName: String, ownURL: String, logger: Logger) {
        signer = HopSigner(label: "legion peer read", secret: secret)
        self.nodeName = nodeName
        self.ownURL = ownURL
        self.logger = logger
    }

    func signature(_ body: [UInt8]) -> String { signer.signature(body) }

    func verify(_ body: [UInt8], signature: String) -> Bool { signer.verify(body, signature: signature) }

    /// Every node's API (this one included), from the store; the last list known when the store cannot be read.
    public func peers(_ services: APIServices) async -> [Peer] {
        let now = SystemClock.wallMillis()
        let (known, refreshed) = cache.withLock { ($0.peers, $0.refreshedMs) }
        if !known.isEmpty, now - refreshed < 5000 { return known }
        guard let rows = try? await services.readers.query("SELECT node, api_url FROM node_endpoints ORDER BY node") else {
            return known.isEmpty ? [Peer(node: nodeName, url: ownURL)] : known
        }
        var peers: [Peer] = []
        for row in rows.rows {
            if let node = row[0].string, let url = row[1].string, !peers.contains(where: { $0.node == node }) { peers.append(Peer(node: node, url: url)) }
        }
        if !peers.contains(where: { $0.node == nodeName }) { peers.append(Peer(node: nodeName, url: ownURL)) }
        cache.withLock { $0 = (peers, now) }
        return peers
    }

    /// Calls `op` on `peer`; the answer's JSON, or a description of what went wrong.
    public func call(_ peer: Peer, op: String, arguments: [(String, JSONValue)], timeoutMs: Int64 = 2000) async -> Result<JSONInput, PeerFailure> {
        guard let url = URL(string: peer.url), let host = url.host, let port = url.port else {
            return .failure(PeerFailure(description: "bad API address \(peer.url) for \(peer.node)"))
        }
        let body = Array(JSONValue.object([("op", .string(op)), ("at_ms", .uint(SystemClock.wallMillis()))] + arguments).serialized.utf8)
        do {
            let (status, answer) = try await client.post(host: host, port: port, path: Self.path,
                                                         headers: [("Content-Type", "application/json"), ("X-Legion-Signature", signature(body))],
                                                         body: body, timeout: .milliseconds(timeoutMs))
            guard status == 200 else {
                return .failure(PeerFailure(description: "\(peer.node) answered HTTP \(status): \(String(decoding: answer.prefix(200), as: UTF8.self))"))
            }
            return .success(try JSONDecoder().decode(JSONInput.self, from: Data(answer)))
        } catch {
            return .failure(PeerFailure(description: "\(peer.node) unreachable: \(error)"))
        }
    }

    public struct PeerFailure: Error, CustomStringConvertible {
        public var description: String
    }

    /// Checks a peer request: signature and freshness. Returns the parsed body or the reason it was refused.
    func accept(_ body: [UInt8], signature: String?) -> Result<[String: JSONInput], PeerFailure> {
        guard let signature, verify(body, signature: signature) else { return .failure(PeerFailure(description: "bad or missing signature")) }
        guard case .object(let fields)? = try? JSONDecoder().decode(JSONInput.self, from: Data(body)),
              case .int(let at)? = fields["at_ms"] else { return .failure(PeerFailure(description: "malformed peer request")) }
        let skew = abs(Int64(SystemClock.wallMillis()) - at)
        guard skew <= 60_000 else { return .failure(PeerFailure(description: "request \(skew) ms away from this node's clock (limit 60 s)")) }
        return .success(fields)
    }
}

extension JSONInput {
    subscript(key: String) -> JSONInput? {
        if case .object(let fields) = self { return fields[key] }
        return nil
    }

    var stringValue: String? {
        if case .string(let s) = self { return s }
        return nil
    }

    var intValue: Int64? {
        if case .int(let i) = self { return i }
        return nil
    }

    var boolValue: Bool? {
        if case .bool(let b) = self { return b }
        return nil
    }

    var arrayValue: [JSONInput] {
        if case .array(let items) = self { return items }
        return []
    }
}
