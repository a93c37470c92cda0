import CFastTLS
import Foundation
import Logging
import NIOCore
import NIOSSL
import Subscriptions
import Synchronization

/// Certificates the HTTPS router presents, chosen per TLS ClientHello by SNI server name:
/// pairs carried by subscriptions (`sni_key` / `sni_crt`, uwsgi.it's `ssl-domain`), pairs from a
/// directory (`<name>.crt` + `<name>.key`), wildcard parents (`.example.com`, as dotsplit), and
/// a default pair for clients without SNI.
public final class CertificateStore: Sendable {
    public struct Pair: Sendable {
        public var chain: [NIOSSLCertificate]
        public var key: NIOSSLPrivateKey
        /// The PEM text they were read from (the fast path's OpenSSL contexts load it).
        public var chainPEM: [UInt8]
        public var keyPEM: [UInt8]
    }

    /// Bumped whenever a certificate or a client CA is learned: caches of contexts built from this store
    /// (the fast path's) start again.
    private let changes = Atomic<Int>(0)
    public var generation: Int { changes.load(ordering: .acquiring) }

    let directory: String?
    let logger: Logger
    public let defaultPair: Pair
    private let pairs = Mutex<[String: Pair]>([:])

    /// Client-certificate authentication for a name (uwsgi.it's `ssl-ca-domain`): the CA that signs client
    /// certificates, and whether a certificate is required (`!` before the CA) or only checked when presented.
    public struct ClientAuth: Sendable, Equatable {
        public var caPEM: [UInt8]
        public var required: Bool
    }
    private let clientAuth = Mutex<[String: ClientAuth]>([:])
    private let clientAuthContexts = Mutex<[String: NIOSSLContext]>([:])

    public init(defaultCertificate: String, defaultKey: String, directory: String?, logger: Logger) throws {
        defaultPair = try CertificateStore.load(certificate: defaultCertificate, key: defaultKey)
        self.directory = directory
        self.logger = logger
    }

    /// Loads a pair from PEM text (inline, as `-----BEGIN …`) or from file paths.
    public static func load(certificate: String, key: String) throws -> Pair {
        func pem(_ value: String) throws -> [UInt8] {
            if value.hasPrefix("-----BEGIN ") { return Array(value.utf8) }
            guard let data = FileManager.default.contents(atPath: value) else {
                throw FailoverIPError("cannot read \(value): check the path and permissions")
            }
            return Array(data)
        }
        let chainPEM = try pem(certificate)
        let keyPEM = try pem(key)
        let chain: [NIOSSLCertificate]
        do { chain = try NIOSSLCertificate.fromPEMBytes(chainPEM) } catch {
            throw FailoverIPError("\(certificate.prefix(80)) holds no readable PEM certificate (\(error)); it must contain -----BEGIN CERTIFICATE----- blocks")
        }
        guard !chain.isEmpty else { throw FailoverIPError("no certificate found in \(certificate.prefix(80))") }
        let privateKey: NIOSSLPrivateKey
        do { privateKey = try NIOSSLPrivateKey(bytes: keyPEM, format: .pem) } catch {
            throw FailoverIPError("\(key.prefix(80)) holds no readable unencrypted PEM private key (\(error))")
        }
        return Pair(chain: chain, key: privateKey, chainPEM: chainPEM, keyPEM: keyPEM)
    }

    /// A subscription carrying `sni_key` + `sni_crt` (and optionally `sni_ca`) for its key (port stripped, as uWSGI).
    public func learn(from node: SubscriptionTable.Node) {
        guard let keyValue = node.sniKey, let crtValue = node.sniCrt else { return }
        let name = String(node.keyString.split(separator: ":", maxSplits: 1).first ?? "").lowercased()
        if let caValue = node.sniCA, !caValue.isEmpty {
            learnClientAuth(name: name, value: String(decoding: caValue, as: UTF8.self))
        }
        guard !name.isEmpty, pairs.withLock({ $0[name] == nil }) else { return }
        do {
            let pair = try CertificateStore.load(certificate: String(decoding: crtValue, as: UTF8.self),
                                                 key: String(decoding: keyValue, as: UTF8.self))
            pairs.withLock { $0[name] = pair }
            changes.add(1, ordering: .releasing)
            logger.info("SNI certificate added from a subscription", metadata: ["name": "\(name)"])
        } catch {
            logger.warning("could not load the SNI certificate of a subscription", metadata: ["name": "\(name)", "error": "\(error)"])
        }
    }

    public func add(name: String, pair: Pair) {
        pairs.withLock { $0[name] = pair }
        changes.add(1, ordering: .releasing)
    }

    /// `sni_ca`: a CA file path or inline PEM; a leading `!` makes the client certificate mandatory.
    func learnClientAuth(name: String, value: String) {
        let required = value.hasPrefix("!")
        let source = required ? String(value.dropFirst()) : value
        let pem: [UInt8]
        if source.hasPrefix("-----BEGIN ") {
            pem = Array(source.utf8)
        } else if let data = FileManager.default.contents(atPath: source) {
            pem = Array(data)
        } else {
            logger.warning("cannot read the client CA of a subscription; client certificates are not checked for it",
                           metadata: ["name": "\(name)", "ca": "\(source)"])
            return
        }
        guard (try? NIOSSLCertificate.fromPEMBytes(pem))?.isEmpty == false else {
            logger.warning("the client CA of a subscription holds no PEM certificate", metadata: ["name": "\(name)"])
            return
        }
        let auth = ClientAuth(caPEM: pem, required: required)
        let changed = clientAuth.withLock { table -> Bool in
            defer { table[name] = auth }
            return table[name] != auth
        }
        if changed {
            clientAuthContexts.withLock { $0[name] = nil }
            changes.add(1, ordering: .releasing)
            logger.info("client-certificate authentication enabled", metadata: ["name": "\(name)", "required": "\(required)"])
        }
    }

    public func addClientAuth(name: String, caPEM: [UInt8], required: Bool) {
        clientAuth.withLock { $0[name.lowercased()] = ClientAuth(caPEM: caPEM, required: required) }
        clientAuthContexts.withLock { $0[name.lowercased()] = nil }
        changes.add(1, ordering: .releasing)
    }

    /// The client-certificate authentication of a server name, if it has one.
    public func clientAuth(for serverName: String) -> ClientAuth? {
        clientAuth.withLock { $0[serverName.lowercased()] }
    }

    /// A TLS context for a server name with client-certificate authentication (its own certificate, its CA,
    /// verification required or optional), or nil when the name has none. Built once per name.
    public func clientAuthContext(for serverName: String) -> NIOSSLContext? {
        let name = serverName.lowercased()
        guard let auth = clientAuth.withLock({ $0[name] }) else { return nil }
        if let cached = clientAuthContexts.withLock({ $0[name] }) { return cached }
        let pair = self.pair(for: name) ?? defaultPair
        do {
            var tls = TLSConfiguration.makeServerConfiguration(certificateChain: pair.chain.map { .certificate($0) },
                                                               privateKey: .privateKey(pair.key))
            tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMBytes(auth.caPEM))
            tls.certificateVerification = auth.required ? .noHostnameVerification : .optionalVerification
            tls.sendCANameList = true
            let context = try NIOSSLContext(configuration: tls)
            clientAuthContexts.withLock { $0[name] = context }
            return context
        } catch {
            logger.warning("cannot build the client-certificate TLS context", metadata: ["name": "\(name)", "error": "\(error)"])
            return nil
        }
    }

    /// A certificate subject as OpenSSL's one-line form (`/C=IT/O=Example/CN=alice`), uWSGI's HTTPS_DN: the same
    /// function the fast path's TLS uses on its sessions (every attribute by its short name, bytes outside printable
    /// ASCII as `\xHH`), so both paths hand a backend the same DN for the same certificate.
    public static func distinguishedName(_ certificate: NIOSSLCertificate) -> String {
        guard let der = try? certificate.toDERBytes() else { return "" }
        var buffer = [CChar](repeating: 0, count: 1024)
        let n = der.withUnsafeBufferPointer { ftls_der_subject($0.baseAddress, $0.count, &buffer, buffer.count) }
        return String(decoding: buffer[..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// The pair for a server name: exact, then the directory, then wildcard parents.
    public func pair(for serverName: String) -> Pair? {
        let name = serverName.lowercased()
        if let p = pairs.withLock({ $0[name] }) { return p }
        if let dir = directory, !name.contains("/"), !name.hasPrefix("."),
           FileManager.default.fileExists(atPath: "\(dir)/\(name).crt"),
           let p = try? CertificateStore.load(certificate: "\(dir)/\(name).crt", key: "\(dir)/\(name).key") {
            pairs.withLock { $0[name] = p }
            return p
        }
        var candidate = Substring(name)
        for _ in 0..<4 {
            guard let dot = candidate.dropFirst().firstIndex(of: ".") else { break }
            candidate = candidate[dot...]
            if let p = pairs.withLock({ $0[String(candidate)] }) { return p }
        }
        return nil
    }

    /// The server TLS configuration: the default pair, and a per-ClientHello SNI callback.
    public func serverConfiguration() -> TLSConfiguration {
        var tls = TLSConfiguration.makeServerConfiguration(certificateChain: defaultPair.chain.map { .certificate($0) },
                                                           privateKey: .privateKey(defaultPair.key))
        tls.sslContextCallback = { [self] values, promise in
            guard let name = values.serverHostname, let pair = self.pair(for: name) else {
                promise.succeed(.noChanges)
                return
            }
            var override = NIOSSLContextConfigurationOverride()
            override.certificateChain = pair.chain.map { .certificate($0) }
            override.privateKey = .privateKey(pair.key)
            promise.succeed(override)
        }
        return tls
    }
}
