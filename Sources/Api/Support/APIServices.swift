import Foundation
import Hummingbird
import Logging
import Node
import Store

/// What the API's handlers share: store access (a reader pool and the group-commit writer), the
/// authenticator, the domain ownership check and settings.
public struct APIServices: Sendable {
    public var readers: StoreClientPool
    public var writer: GroupCommitWriter
    public var authenticator: CustomerAuthenticator
    public var operators: OperatorAuthenticator
    public var ownership: DomainOwnershipCheck
    public var logger: Logger
    /// Largest request body accepted (uwsgi.it: 65536).
    public var maxBody: Int = 65536
    /// Sends writes to the store leader's node (nil: always write here).
    public var forwarder: StoreWriteForwarder?
    /// Reads from other nodes (their metric samples, status and audit logs), signed with the legion secret.
    public var peers: PeerClient?
    /// This node's own status, router table, metric store and audit log.
    public var local: LocalNode?

    public init(store: StoreClient.Options, resolver: String?, logger: Logger, readers: Int = 8) {
        self.readers = StoreClientPool(options: store, size: readers)
        self.writer = GroupCommitWriter(client: StoreClient(options: store))
        self.authenticator = CustomerAuthenticator(pool: self.readers)
        self.operators = OperatorAuthenticator(pool: self.readers)
        self.ownership = DomainOwnershipCheck.configured(resolver)
        self.logger = logger
    }

    /// A read; store failures become 503/409 (never a 500).
    public func query(_ sql: String, _ parameters: [DqliteValue] = []) async throws(APIError) -> DqliteRows {
        do {
            return try await readers.query(sql, parameters)
        } catch {
            throw APIError.from(error)
        }
    }

    /// An operator operation: the same `AdminStore` code `legion admin` runs, on a pooled client.
    public func admin<T: Sendable>(_ body: (AdminStore) async throws(StoreError) -> T) async throws(APIError) -> T {
        do {
            return try await readers.with { client throws(StoreError) in try await body(AdminStore(client: client)) }
        } catch {
            throw APIError.from(error)
        }
    }

    /// An idempotent write through group commit. `conflict` is the message for a constraint failure.
    @discardableResult
    public func write(_ call: APICall, _ statements: [StoreClient.Statement], conflict: String? = nil) async throws(APIError) -> StoreClient.WriteReceipt {
        do {
            if let forwarder, let outcome = await forwarder.forward(ForwardedWrite(requestID: call.requestID, statements: statements), services: self) {
                return try outcome.get()
            }
            return try await writer.write(requestID: call.requestID, statements)
        } catch {
            throw APIError.from(error, conflict: conflict)
        }
    }

    /// Records this node's API address for the forwarders of the other nodes.
    public func registerEndpoint() async {
        await forwarder?.register(self)
    }

    /// `POST /.legion/store/write`: a write another node sent to this node's writer (signed with the legion secret).
    func acceptForwarded(_ request: Request) async -> Response {
        var request = request
        guard let forwarder, let signature = request.headers.value(named: "x-legion-signature"),
              let buffer = try? await request.collectBody(upTo: 1 << 20) else {
            return APIError.forbidden("not a signed store write").response
        }
        let body = Array(buffer.readableBytesView)
        guard forwarder.verify(body, signature: signature), let write = try? JSONDecoder().decode(ForwardedWrite.self, from: Data(body)) else {
            return APIError.forbidden("bad signature or body").response
        }
        let result: Result<StoreClient.WriteReceipt, StoreError>
        do {
            result = .success(try await writer.write(requestID: write.requestID, write.storeStatements))
        } catch {
            result = .failure(error)
        }
        let data = (try? JSONEncoder().encode(ForwardedOutcome(result, requestID: write.requestID))) ?? Data()
        return Response(status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(bytes: data)))
    }
}
