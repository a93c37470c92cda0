import Crypto
import Foundation
import Synchronization
import _CryptoExtras

/// The digest a router checks subscription signatures with (uWSGI: `--subscriptions-sign-check DIGEST:DIR`).
public enum SubscriptionDigest: String, Sendable, CaseIterable {
    case sha1 = "SHA1"
    case sha256 = "SHA256"
}

/// Verifies RSA PKCS#1 v1.5 signatures of subscriptions against public keys found in a
/// uWSGI-style key directory (`<dir>/<key>.pem`, key bytes outside `[0-9A-Za-z._-]` replaced by
/// `_`) or registered directly (e.g. the owning customer's key from the store).
public final class SubscriptionVerifier: Sendable {
    public let digest: SubscriptionDigest
    public let keyDirectory: String?
    private let registered = Mutex<[String: String]>([:])
    /// Domain → the owning customer's public key, from the replicated store (replaced on every change).
    private let storeKeys = Mutex<[String: String]>([:])

    public init(digest: SubscriptionDigest, keyDirectory: String?) {
        self.digest = digest
        self.keyDirectory = keyDirectory
    }

    /// Adds or replaces the PEM public key for a subscription key.
    public func register(key: String, publicKeyPEM: String) {
        registered.withLock { $0[key] = publicKeyPEM }
    }

    /// uWSGI's file-name sanitising for key files.
    public static func fileName(forKey key: [UInt8]) -> String {
        let safe = key.map { b -> UInt8 in
            switch b {
            case 0x30...0x39, 0x41...0x5a, 0x61...0x7a, 0x2e, 0x5f, 0x2d: return b
            default: return 0x5f
            }
        }
        return String(decoding: safe, as: UTF8.self) + ".pem"
    }

    /// Replaces the store-provided keys (domain name → owner's PEM public key).
    public func replaceStoreKeys(_ keys: [String: String]) {
        storeKeys.withLock { $0 = keys }
    }

    /// Registered keys first, then the key directory (an operator's override), then the owning customer's key
    /// from the store (the subscription key without its port, case-insensitively).
    func publicKeyPEM(for key: [UInt8]) -> String? {
        let name = String(decoding: key, as: UTF8.self)
        if let pem = registered.withLock({ $0[name] }) { return pem }
        if let dir = keyDirectory {
            let path = (dir as NSString).appendingPathComponent(SubscriptionVerifier.fileName(forKey: key))
            if let pem = try? String(contentsOfFile: path, encoding: .utf8) { return pem }
        }
        var domain = name.lowercased()
        if let colon = domain.lastIndex(of: ":"), domain[domain.index(after: colon)...].allSatisfy(\.isNumber) {
            domain = String(domain[..<colon])
        }
        return storeKeys.withLock { $0[domain] }
    }

    public func verify(_ packet: SubscriptionPacket) -> SubscriptionTable.Verification {
        guard let signature = packet.signature else { return .unsigned }
        guard let pem = publicKeyPEM(for: packet.key) else { return .noKey }
        return SubscriptionVerifier.verify(region: packet.signedRegion, signature: signature, publicKeyPEM: pem, digest: digest) ? .valid : .invalid
    }

    public static func verify(region: [UInt8], signature: [UInt8], publicKeyPEM: String, digest: SubscriptionDigest) -> Bool {
        guard let key = try? _RSA.Signing.PublicKey(pemRepresentation: publicKeyPEM) else { return false }
        let sig = _RSA.Signing.RSASignature(rawRepresentation: signature)
        switch digest {
        case .sha1: return key.isValidSignature(sig, for: Insecure.SHA1.hash(data: region), padding: .insecurePKCS1v1_5)
        case .sha256: return key.isValidSignature(sig, for: SHA256.hash(data: region), padding: .insecurePKCS1v1_5)
        }
    }
}

/// Signs subscriptions as uWSGI's `--subscribe2 …,sign=DIGEST:KEYFILE` does.
public struct SubscriptionSigner: Sendable {
    public let digest: SubscriptionDigest
    private let pem: String

    public init(privateKeyPEM: String, digest: SubscriptionDigest) throws {
        _ = try _RSA.Signing.PrivateKey(pemRepresentation: privateKeyPEM)
        pem = privateKeyPEM
        self.digest = digest
    }

    public func sign(_ region: [UInt8]) throws -> [UInt8] {
        let key = try _RSA.Signing.PrivateKey(pemRepresentation: pem)
        let signature: _RSA.Signing.RSASignature
        switch digest {
        case .sha1: signature = try key.signature(for: Insecure.SHA1.hash(data: region), padding: .insecurePKCS1v1_5)
        case .sha256: signature = try key.signature(for: SHA256.hash(data: region), padding: .insecurePKCS1v1_5)
        }
        return Array(signature.rawRepresentation)
    }
}
