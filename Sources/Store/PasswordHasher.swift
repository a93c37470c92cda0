import Crypto
import _CryptoExtras
import Foundation

/// Customer password hashes: PBKDF2-HMAC-SHA256 in Django's format
/// (`pbkdf2_sha256$ITERATIONS$SALT$BASE64HASH`), so hashes carried over from uwsgi.it's Django database verify.
public enum PasswordHasher {
    public static let iterations = 600_000

    public static func hash(_ password: String, iterations: Int = iterations) throws(StoreError) -> String {
        try validate(password)
        let alphabet = Array("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
        var generator = SystemRandomNumberGenerator()
        let salt = String((0..<22).map { _ in alphabet[Int(generator.next(upperBound: UInt64(alphabet.count)))] })
        return "pbkdf2_sha256$\(iterations)$\(salt)$\(try derive(password, salt: salt, iterations: iterations))"
    }

    public static func verify(_ password: String, against encoded: String) -> Bool {
        let parts = encoded.split(separator: "$", omittingEmptySubsequences: false)
        guard parts.count == 4, parts[0] == "pbkdf2_sha256", let iterations = Int(parts[1]), iterations >= 210_000,
              let expected = Data(base64Encoded: String(parts[3])),
              let actual = try? derive(password, salt: String(parts[2]), iterations: iterations),
              let actualBytes = Data(base64Encoded: actual)
        else { return false }
        // Constant-time comparison.
        guard expected.count == actualBytes.count else { return false }
        var difference: UInt8 = 0
        for (a, b) in zip(expected, actualBytes) { difference |= a ^ b }
        return difference == 0
    }

    public static func validate(_ password: String) throws(StoreError) {
        if password.count < 8 { throw .invalidInput("the password must have at least 8 characters") }
        if password.utf8.count > 1024 { throw .invalidInput("the password is longer than 1024 bytes") }
    }

    static func derive(_ password: String, salt: String, iterations: Int) throws(StoreError) -> String {
        do {
            let key = try KDF.Insecure.PBKDF2.deriveKey(from: Array(password.utf8), salt: Array(salt.utf8), using: .sha256,
                                                        outputByteCount: 32, rounds: iterations)
            return key.withUnsafeBytes { Data($0).base64EncodedString() }
        } catch {
            throw .invalidInput("cannot hash the password: \(error)")
        }
    }
}

/// A customer's RSA key pair (uwsgi.it signs subscriptions with it): 2048-bit, PEM.
public enum CustomerKeyPair {
    public static func generate() throws(StoreError) -> (privatePEM: String, publicPEM: String) {
        do {
            let key = try _RSA.Signing.PrivateKey(keySize: .bits2048)
            return (key.pemRepresentation, key.publicKey.pemRepresentation)
        } catch {
            throw .configuration("cannot generate an RSA key pair: \(error)")
        }
    }
}
