import Crypto
import Foundation
import HTTPTypes
import NIOPosix
import Node
import Store
import Synchronization

/// The customer a request acts for.
public struct CustomerIdentity: Sendable, Equatable {
    public var id: Int64
    public var username: String
    public var uuid: String
}

/// Checks customer credentials (Basic auth or uwsgi.it's hex `X-uwsgi-it-username/-password` headers) against
/// the stored PBKDF2 hashes.
///
/// PBKDF2 costs ~0.5 s of CPU by design, so a verified credential is cached for `cacheTTL` under a keyed hash
/// of (username, password, stored hash) — the password itself is never kept, and the key is random per
/// process. Because the stored hash is part of the key, a password change (on any node) invalidates the entry
/// at once: the next request reads the new hash and misses. Failed logins are rate-limited (`LoginThrottle`).
public final class CustomerAuthenticator: Sendable {
    public struct Credentials: Sendable, Equatable {
        public var username: String
        public var password: String
    }

    private let pool: StoreClientPool
    /// Random per process; raw bytes (SymmetricKey is not Sendable).
    private let cacheKey: [UInt8] = (0..<32).map { _ in UInt8.random(in: 0...255) }
    private let cache = Mutex<[Data: Int64]>([:])
    private let throttle: Mutex<LoginThrottle>
    public let cacheTTLms: Int64
    /// Verified against for unknown usernames, so both cases cost the same time (a hash of a random password
    /// nobody kept; computing one at start would cost every node half a second of CPU).
    private let decoyHash = "pbkdf2_sha256$600000$legiondecoysalt0000001$FWIw/SYiGFEW5x6Zi3Awa5gSa1O4qSu0didmQzcZjRo="

    public init(pool: StoreClientPool, throttle: LoginThrottle = LoginThrottle(), cacheTTLms: Int64 = 300_000) {
        self.pool = pool
        self.throttle = Mutex(throttle)
        self.cacheTTLms = cacheTTLms
    }

    /// The credentials a request carries, if any. A malformed header is the same as none (401).
    public static func credentials(in headers: HTTPFields) -> Credentials? {
        if let value = headers[.authorization], value.count > 6, value.prefix(6).lowercased() == "basic " {
            guard let data = Data(base64Encoded: String(value.dropFirst(6)).trimmingCharacters(in: .whitespaces)),
                  let text = String(data: data, encoding: .utf8),
                  let colon = text.firstIndex(of: ":")  // split on the first ':' only: passwords may contain ':'
            else { return nil }
            return Credentials(username: String(text[..<colon]), password: String(text[text.index(after: colon)...]))
        }
        if let user = headers.value(named: "x-uwsgi-it-username"), let pass = headers.value(named: "x-uwsgi-it-password"),
           let username = hexDecode(user), let password = hexDecode(pass) {
            return Credentials(username: username, password: password)
        }
        return nil
    }

    static func hexDecode(_ text: String) -> String? {
        let bytes = Array(text.utf8)
        guard bytes.count % 2 == 0, bytes.count <= 4096 else { return nil }
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count / 2)
        func nibble(_ c: UInt8) -> UInt8? {
            switch c {
            case 0x30...0x39: c - 0x30
            case 0x61...0x66: c - 0x61 + 10
            case 0x41...0x46: c - 0x41 + 10
            default: nil
            }
        }
        var index = 0
        while index < bytes.count {
            guard let high = nibble(bytes[index]), let low = nibble(bytes[index + 1]) else { return nil }
            out.append(high << 4 | low)
            index += 2
        }
        return String(bytes: out, encoding: .utf8)
    }

    /// The customer these credentials belong to; 401 when wrong, 429 while throttled, 503 without a store.
    public func authenticate(_ credentials: Credentials, client: String) async throws(APIError) -> CustomerIdentity {
        let now = Int64(SystemClock.wallMillis())
        if let wait = throttle.withLock({ $0.retryAfter(client: client, user: credentials.username, nowMs: now) }) {
            throw .tooManyRequests(retryAfterSeconds: wait)
        }
        let rows: DqliteRows
        do {
            rows = try await pool.query("SELECT id, password_hash, uuid FROM customers WHERE username = ?", [.text(credentials.username)])
        } catch {
            throw APIError.from(error)
        }
        let record = rows.rows.first
        let storedHash = record?[1].string ?? decoyHash
        let digest = Data(HMAC<SHA256>.authenticationCode(
            for: Data((credentials.username + "\u{0}" + credentials.password + "\u{0}" + storedHash).utf8), using: SymmetricKey(data: cacheKey)))
        if let record, let id = record[0].int, let expires = cache.withLock({ $0[digest] }), expires > now {
            return CustomerIdentity(id: id, username: credentials.username, uuid: record[2].string ?? "")
        }
        let password = credentials.password
        let verified = (try? await NIOThreadPool.singleton.runIfActive { PasswordHasher.verify(password, against: storedHash) }) ?? false
        guard verified, let record, let id = record[0].int else {
            throttle.withLock { $0.recordFailure(client: client, user: credentials.username, nowMs: now) }
            throw .unauthorized
        }
        cache.withLock { cache in
            if cache.count > 10_000 { cache = cache.filter { $0.value > now } }
            cache[digest] = now + cacheTTLms
        }
        return CustomerIdentity(id: id, username: credentials.username, uuid: record[2].string ?? "")
    }
}
