import Foundation
import HTTPTypes
import Node
import Store
import Synchronization

/// Operator tokens for the admin API: `Authorization: Bearer lgn_…`, checked against the SHA-256 kept in the
/// store (`legion admin token add NAME` makes one). Customer credentials never open the admin API. Failed
/// attempts share the login throttle's limits (per client).
public final class OperatorAuthenticator: Sendable {
    private let pool: StoreClientPool
    private let throttle = Mutex(LoginThrottle(windowMs: 60_000, maxFailuresPerClient: 20, maxFailuresPerUser: 1_000_000))

    public init(pool: StoreClientPool) { self.pool = pool }

    public func authenticate(_ headers: HTTPFields, client: String) async throws(APIError) -> String {
        let now = Int64(SystemClock.wallMillis())
        if let wait = throttle.withLock({ $0.retryAfter(client: client, user: "-operator-", nowMs: now) }) {
            throw .tooManyRequests(retryAfterSeconds: wait)
        }
        guard let value = headers[.authorization], value.count > 7, value.prefix(7).lowercased() == "bearer " else {
            throw .unauthorizedOperator
        }
        let token = String(value.dropFirst(7)).trimmingCharacters(in: .whitespaces)
        let name: String?
        do {
            name = try await pool.with { client throws(StoreError) in try await AdminStore(client: client).operatorName(token: token) }
        } catch {
            throw APIError.from(error)
        }
        guard let name else {
            throttle.withLock { $0.recordFailure(client: client, user: "-operator-", nowMs: now) }
            throw .unauthorizedOperator
        }
        return name
    }
}
