import CLegionAEAD
import Legion
import Synchronization

/// The legion codec's AES-256-GCM on the protocol thread: OpenSSL with the key schedule set up once and nonces from
/// its user-space generator — swift-crypto's API builds a key, a nonce (a system call) and several buffers per
/// datagram, which was most of an idle node's Legion CPU. Same wire format (tested against `SwiftCryptoAEAD`).
final class OpenSSLAEAD: LegionAEAD, @unchecked Sendable {
    // @unchecked: the OpenSSL context is only touched under `lock`.
    private let context: OpaquePointer
    private let lock = Mutex<Void>(())

    /// nil when OpenSSL cannot set the key up (the codec then keeps swift-crypto's implementation).
    init?(key: [UInt8]) {
        precondition(key.count == 32, "AES-256 takes a 32-byte key")
        guard let context = key.withUnsafeBufferPointer({ lgaead_new($0.baseAddress) }) else { return nil }
        self.context = context
    }

    deinit { lgaead_free(context) }

    /// An implementation for the codec: this one, or swift-crypto's if OpenSSL refuses the key.
    static func make(key: [UInt8]) -> any LegionAEAD {
        OpenSSLAEAD(key: key) ?? SwiftCryptoAEAD(key: key)
    }

    func seal(_ plaintext: [UInt8], authenticating header: [UInt8]) throws -> [UInt8] {
        let nonceLength = LegionCodec.nonceLength, tagLength = LegionCodec.tagLength
        var out = [UInt8](repeating: 0, count: nonceLength + plaintext.count + tagLength)
        let ok = lock.withLock { _ in
            out.withUnsafeMutableBufferPointer { o in
                plaintext.withUnsafeBufferPointer { p in
                    header.withUnsafeBufferPointer { h in
                        lgaead_seal(context, h.baseAddress, h.count, p.baseAddress, p.count, o.baseAddress,
                                    o.baseAddress.map { $0 + nonceLength }, o.baseAddress.map { $0 + nonceLength + p.count })
                    }
                }
            }
        }
        guard ok == 1 else { throw SealFailed() }
        return out
    }

    struct SealFailed: Error, CustomStringConvertible {
        var description: String { "OpenSSL could not seal a datagram (no random nonce, or a cipher failure)" }
    }

    func open(_ sealed: ArraySlice<UInt8>, authenticating header: [UInt8]) throws -> [UInt8] {
        let nonceLength = LegionCodec.nonceLength, tagLength = LegionCodec.tagLength
        guard sealed.count >= nonceLength + tagLength else { throw LegionPacketError.decryptFailed }
        let textLength = sealed.count - nonceLength - tagLength
        var out = [UInt8](repeating: 0, count: textLength)
        let ok = lock.withLock { _ in
            out.withUnsafeMutableBufferPointer { o in
                sealed.withUnsafeBufferPointer { s in
                    header.withUnsafeBufferPointer { h in
                        guard let base = s.baseAddress else { return Int32(0) }
                        return lgaead_open(context, h.baseAddress, h.count, base, base + nonceLength, textLength,
                                           base + nonceLength + textLength, o.baseAddress)
                    }
                }
            }
        }
        guard ok == 1 else { throw LegionPacketError.decryptFailed }
        return out
    }
}
