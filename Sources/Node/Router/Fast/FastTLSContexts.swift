#if os(Linux)
import CFastTLS
import Foundation
import Logging
import Synchronization

/// The fast path's TLS server contexts (OpenSSL): the default one (the default certificate), and one per
/// server name that has its own certificate (a subscription's `sni_crt`, the certificate directory, a
/// wildcard parent) or client-certificate authentication (`sni_ca`), picked by SNI during the handshake.
/// Built from the same `CertificateStore` the general path uses, so both present the same certificates.
final class FastTLSContexts: @unchecked Sendable {
    let certificates: CertificateStore
    let logger: Logger
    /// The default context; every connection starts with it and SNI may switch it.
    let defaultContext: OpaquePointer

    /// An OpenSSL context, shared between loop threads (OpenSSL contexts are thread-safe once built).
    private struct Ref: @unchecked Sendable { var pointer: OpaquePointer }

    private struct Entry {
        /// nil: the name has nothing of its own (the default context serves it).
        var context: Ref?
        var checkedNs: UInt64
    }

    private struct Cache {
        var generation = -1
        var entries: [String: Entry] = [:]

        mutating func dropAll() {
            for entry in entries.values { if let ctx = entry.context { ftls_ctx_free(ctx.pointer) } }
            entries.removeAll()
        }
    }

    private let cache = Mutex(Cache())
    /// A name without its own certificate is looked up again after this long (a file dropped into the
    /// certificate directory is picked up without a restart).
    static let negativeTTLNs: UInt64 = 10_000_000_000

    init(certificates: CertificateStore, logger: Logger) throws {
        self.certificates = certificates
        self.logger = logger
        defaultContext = try FastTLSContexts.make(pair: certificates.defaultPair, auth: nil)
        ftls_ctx_set_sni(defaultContext, { arg, name in
            guard let arg, let name else { return nil }
            return Unmanaged<FastTLSContexts>.fromOpaque(arg).takeUnretainedValue().context(serverName: String(cString: name))
        }, Unmanaged.passUnretained(self).toOpaque())
    }

    deinit {
        ftls_ctx_free(defaultContext)
        cache.withLock { c in
            c.dropAll()
        }
    }

    /// A new server session for an accepted socket, or nil when OpenSSL is out of memory.
    func session(fd: Int32) -> OpaquePointer? { ftls_conn_new(defaultContext, fd) }

    /// The context for a ClientHello's server name, with a reference for the caller (nil: the default one).
    /// Runs on a loop thread mid-handshake. A context dropped from the cache lives on in the sessions using it
    /// (OpenSSL counts references).
    func context(serverName: String) -> OpaquePointer? {
        let name = serverName.lowercased()
        let generation = certificates.generation
        let now = SystemClock.monotonicNanos()
        let cached = cache.withLock { c -> Entry? in
            if c.generation != generation {
                c.generation = generation
                c.dropAll()
            }
            guard let entry = c.entries[name] else { return nil }
            if let ctx = entry.context { ftls_ctx_retain(ctx.pointer) }
            return entry
        }
        if let cached, cached.context != nil || now - cached.checkedNs < FastTLSContexts.negativeTTLNs { return cached.context?.pointer }
        let pair = certificates.pair(for: name)
        let auth = certificates.clientAuth(for: name)
        var built: Ref?
        if pair != nil || auth != nil {
            do {
                built = Ref(pointer: try FastTLSContexts.make(pair: pair ?? certificates.defaultPair, auth: auth))
            } catch {
                logger.warning("cannot build the TLS context of a server name; the default certificate is served",
                               metadata: ["name": "\(name)", "error": "\(error)"])
            }
        }
        let chosen = cache.withLock { c -> Ref? in
            if let raced = c.entries[name]?.context {  // another loop built it meanwhile
                if let built { ftls_ctx_free(built.pointer) }
                ftls_ctx_retain(raced.pointer)
                return raced
            }
            if c.entries.count >= 10_000 { c.dropAll() }
            c.entries[name] = Entry(context: built, checkedNs: now)
            if let built { ftls_ctx_retain(built.pointer) }
            return built
        }
        return chosen?.pointer
    }

    static func make(pair: CertificateStore.Pair, auth: CertificateStore.ClientAuth?) throws -> OpaquePointer {
        var error = [CChar](repeating: 0, count: 512)
        let ca = auth?.caPEM ?? []
        let made = pair.chainPEM.withUnsafeBytes { chain in
            pair.keyPEM.withUnsafeBytes { key in
                ca.withUnsafeBytes { caBytes in
                    ftls_ctx_new(chain.baseAddress?.assumingMemoryBound(to: CChar.self), chain.count,
                                 key.baseAddress?.assumingMemoryBound(to: CChar.self), key.count,
                                 caBytes.baseAddress?.assumingMemoryBound(to: CChar.self), caBytes.count,
                                 auth?.required == true ? 1 : 0, &error, error.count)
                }
            }
        }
        guard let made else {
            throw FastRouterError.tls(String(decoding: error.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
        }
        return made
    }
}
#endif
