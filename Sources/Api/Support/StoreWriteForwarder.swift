import Crypto
import Foundation
import Logging
import Node
import Store
import Synchronization

/// Sends API writes to the group-commit writer on the store leader's node, so the whole cluster's concurrent writes
/// share one writer (big batches, no cross-node lock contention) instead of one writer per node colliding on the
/// store's single write lock.
///
/// The leader's node is found from the node's store status (the leader's store address) and the `node_endpoints`
/// table every node fills at start. The hop is `POST /.legion/store/write`, signed with an HMAC of the body under a
/// key derived from the legion secret. Any failure of the hop (leader moved, node down, timeout) falls back to the
/// local writer: request ids make a write applied at most once whichever way it went.
public final class StoreWriteForwarder: Sendable {
    public static let path = "/.legion/store/write"
    public static let signatureHeader = "X-Legion-Signature"

    let signer: HopSigner
    let state: NodeState
    let ownStoreAddress: String
    let ownURL: String
    let nodeName: String
    let logger: Logger
    private let endpoints = Mutex<(map: [String: String], refreshedMs: UInt64)>(([:], 0))
    private let client = InternalHTTPClient()

    public init(secret: [UInt8], state: NodeState, nodeName: String, ownStoreAddress: String, ownURL: String, logger: Logger) {
        signer = HopSigner(label: "legion store write", secret: secret)
        self.state = state
        self.nodeName = nodeName
        self.ownStoreAddress = ownStoreAddress
        self.ownURL = ownURL
        self.logger = logger
    }

    public func signature(_ body: [UInt8]) -> String { signer.signature(body) }

    public func verify(_ body: [UInt8], signature: String) -> Bool { signer.verify(body, signature: signature) }

    /// Records where this node's API answers (retried until the store accepts it).
    func register(_ services: APIServices) async {
        while !Task.isCancelled {
            do {
                _ = try await services.writer.write(requestID: "endpoint-\(nodeName)-\(UUID().uuidString)", [
                    .init("""
                        INSERT INTO node_endpoints(store_address, node, api_url, mtime_ms) VALUES(?, ?, ?, \(StoreSchema.nowMs))
                        ON CONFLICT(store_address) DO UPDATE SET node = excluded.node, api_url = excluded.api_url, mtime_ms = excluded.mtime_ms
                        """, [.text(ownStoreAddress), .text(nodeName), .text(ownURL)]),
                ])
                return
            } catch {
                try? await Task.sleep(for: .seconds(1))
            }
        }
    }

    /// The leader node's API, when it is another node and known.
    func leaderURL(_ services: APIServices) async -> String? {
        guard let store = state.snapshot.store, !store.isLeader, let leader = store.leader, leader != ownStoreAddress else { return nil }
        let now = SystemClock.wallMillis()
        let (known, refreshed) = endpoints.withLock { ($0.map[leader], $0.refreshedMs) }
        if let known, now - refreshed < 10_000 { return known }
        guard now - refreshed > 1000 else { return known }
        endpoints.withLock { $0.refreshedMs = now }
        guard let rows = try? await services.readers.query("SELECT store_address, api_url FROM node_endpoints") else { return known }
        var map: [String: String] = [:]
        for row in rows.rows { if let address = row[0].string, let url = row[1].string { map[address] = url } }
        endpoints.withLock { $0.map = map }
        return map[leader]
    }

    /// The outcome from the leader's node, or nil when the hop did not work (write locally then).
    func forward(_ write: ForwardedWrite, services: APIServices) async -> Result<StoreClient.WriteReceipt, StoreError>? {
        guard let base = await leaderURL(services), let url = URL(string: base), let host = url.host, let port = url.port,
              let body = try? JSONEncoder().encode(write) else { return nil }
        let bytes = Array(body)
        do {
            let (status, answer) = try await client.post(host: host, port: port, path: Self.path,
                                                         headers: [("Content-Type", "application/json"), (Self.signatureHeader, signature(bytes))],
                                                         body: bytes)
            guard status == 200 else { return nil }
            return try JSONDecoder().decode(ForwardedOutcome.self, from: Data(answer)).result
        } catch {
            logger.debug("write forwarding failed; writing locally", metadata: ["leader": "\(base)", "error": "\(error)"])
            return nil
        }
    }
}

/// A write as it travels to the leader's node.
struct ForwardedWrite: Codable, Sendable {
    struct Statement: Codable, Sendable {
        var sql: String
        var params: [Value]
        var mustChange: String?
    }

    enum Value: Codable, Sendable {
        case integer(Int64), float(Double), text(String), blob([UInt8]), null, boolean(Bool)

        init(_ value: DqliteValue) {
            switch value {
            case .integer(let v): self = .integer(v)
            case .float(let v): self = .float(v)
            case .text(let v): self = .text(v)
            case .blob(let v): self = .blob(v)
            case .null: self = .null
            case .boolean(let v): self = .boolean(v)
            }
        }

        var value: DqliteValue {
            switch self {
            case .integer(let v): .integer(v)
            case .float(let v): .float(v)
            case .text(let v): .text(v)
            case .blob(let v): .blob(v)
            case .null: .null
            case .boolean(let v): .boolean(v)
            }
        }
    }

    var requestID: String
    var statements: [Statement]

    init(requestID: String, statements: [StoreClient.Statement]) {
        self.requestID = requestID
        self.statements = statements.map { Statement(sql: $0.sql, params: $0.parameters.map(Value.init), mustChange: $0.mustChange) }
    }

    var storeStatements: [StoreClient.Statement] {
        statements.map { StoreClient.Statement($0.sql, $0.params.map(\.value), mustChange: $0.mustChange) }
    }
}

/// The leader node's answer: the receipt or the store's error, as it would have been locally.
struct ForwardedOutcome: Codable, Sendable {
    var insertIDs: [Int64]?
    var rowsAffected: [Int64]?
    var replayed: Bool?
    var requestID: String
    var error: String?
    var kind: String?

    init(_ result: Result<StoreClient.WriteReceipt, StoreError>, requestID: String) {
        self.requestID = requestID
        switch result {
        case .success(let receipt):
            insertIDs = receipt.insertIDs
            rowsAffected = receipt.rowsAffected
            replayed = receipt.replayed
        case .failure(let error):
            switch error {
            case .noQuorum(let why): (kind, self.error) = ("noQuorum", why)
            case .unconfirmed(_, let why): (kind, self.error) = ("unconfirmed", why)
            case .rejected(let why): (kind, self.error) = ("rejected", why)
            case .invalidInput(let why): (kind, self.error) = ("invalidInput", why)
            case .configuration(let why): (kind, self.error) = ("configuration", why)
            case .schemaTooNew: (kind, self.error) = ("configuration", error.description)
            }
        }
    }

    var result: Result<StoreClient.WriteReceipt, StoreError> {
        guard let kind, let error else {
            return .success(.init(requestID: requestID, insertIDs: insertIDs ?? [], rowsAffected: rowsAffected ?? [], replayed: replayed ?? false,
                                  attempts: 1))
        }
        switch kind {
        case "noQuorum": return .failure(.noQuorum(error))
        case "unconfirmed": return .failure(.unconfirmed(requestID: requestID, detail: error))
        case "invalidInput": return .failure(.invalidInput(error))
        case "configuration": return .failure(.configuration(error))
        default: return .failure(.rejected(error))
        }
    }
}
