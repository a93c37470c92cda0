/// The legion secret as uWSGI writes it: `CIPHER:SECRET[ IV]` (spec §2.1, §2.4).
///
/// In compat mode the bytes are used exactly as uWSGI does (key NUL-padded or truncated to the
/// cipher's key length, IV padded with ASCII '0' or truncated to 16 bytes). In native mode the same
/// string is the input key material of HKDF-SHA256, so operators configure one secret either way.
public struct LegionSecret: Sendable, Equatable, CustomStringConvertible {
    public enum Cipher: String, Sendable, CaseIterable {
        case aes128cbc = "aes-128-cbc"
        case aes192cbc = "aes-192-cbc"
        case aes256cbc = "aes-256-cbc"

        public var keyLength: Int {
            switch self {
            case .aes128cbc: return 16
            case .aes192cbc: return 24
            case .aes256cbc: return 32
            }
        }
    }

    public static let ivLength = 16

    public let cipher: Cipher
    public let secret: [UInt8]
    public let ivToken: [UInt8]

    /// The AES key exactly as uWSGI derives it: the secret, NUL-padded or truncated.
    public var compatKey: [UInt8] {
        var key = Array(secret.prefix(cipher.keyLength))
        key.append(contentsOf: repeatElement(0, count: cipher.keyLength - key.count))
        return key
    }

    /// The CBC IV exactly as uWSGI derives it: the IV token, padded with ASCII '0' or truncated.
    public var compatIV: [UInt8] {
        var iv = Array(ivToken.prefix(LegionSecret.ivLength))
        iv.append(contentsOf: repeatElement(0x30, count: LegionSecret.ivLength - iv.count))
        return iv
    }

    public init(cipher: Cipher, secret: [UInt8], ivToken: [UInt8] = []) {
        self.cipher = cipher
        self.secret = secret
        self.ivToken = ivToken
    }

    /// Parses `CIPHER:SECRET[ IV]`. The cipher is everything before the first `:`, the secret runs
    /// to the next space and the IV is the rest, as in uWSGI's `uwsgi_legion_register`.
    public init(parsing text: String) throws(LegionConfigError) {
        guard let colon = text.firstIndex(of: ":") else {
            throw .invalid(key: "legion.secret", problem: "expected CIPHER:SECRET[ IV], e.g. \"aes-128-cbc:mysecret\"; no ':' found")
        }
        let cipherName = String(text[..<colon])
        guard let cipher = Cipher(rawValue: cipherName) else {
            let known = Cipher.allCases.map(\.rawValue).joined(separator: ", ")
            throw .invalid(key: "legion.secret", problem: "unsupported cipher '\(cipherName)'; use one of \(known) (bf-cbc and stream/GCM modes do not interoperate with uWSGI 2.0)")
        }
        let rest = text[text.index(after: colon)...]
        let secretPart: Substring
        let ivPart: Substring
        if let space = rest.firstIndex(of: " ") {
            secretPart = rest[..<space]
            ivPart = rest[rest.index(after: space)...]
        } else {
            secretPart = rest
            ivPart = ""
        }
        guard !secretPart.isEmpty else {
            throw .invalid(key: "legion.secret", problem: "the secret after '\(cipherName):' is empty")
        }
        self.init(cipher: cipher, secret: Array(secretPart.utf8), ivToken: Array(ivPart.utf8))
    }

    /// Never prints the secret itself.
    public var description: String { "\(cipher.rawValue):<\(secret.count)-byte secret>" }
}
