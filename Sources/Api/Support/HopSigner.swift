import Crypto

/// HMAC-SHA256 signatures of node-to-node HTTP hops (store writes forwarded to the leader's node, peer reads),
/// under a key derived from the legion secret and a label: one key per kind of hop, so a signed body of one kind
/// is never accepted as another. Verification compares in constant time.
struct HopSigner: Sendable {
    private let key: [UInt8]

    init(label: String, secret: [UInt8]) {
        key = Array(SHA256.hash(data: Array("\(label)\u{0}".utf8) + secret))
    }

    func signature(_ body: [UInt8]) -> String {
        HMAC<SHA256>.authenticationCode(for: body, using: SymmetricKey(data: key)).map { String(format: "%02x", $0) }.joined()
    }

    func verify(_ body: [UInt8], signature: String) -> Bool {
        let expected = Array(self.signature(body).utf8), given = Array(signature.utf8)
        guard expected.count == given.count else { return false }
        var difference: UInt8 = 0
        for (a, b) in zip(expected, given) { difference |= a ^ b }
        return difference == 0
    }
}
