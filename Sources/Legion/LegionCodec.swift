import Crypto
import _CryptoExtras
import UwsgiWire

/// Encodes and decodes Legion datagrams (modifier1 109).
///
/// Layout in both modes: `6d | u16le cleartext length | 00 | encrypted cleartext`.
/// * compat: AES-CBC exactly as uWSGI 2.0 (same key and IV for every packet, PKCS#7, no MAC).
/// * native: AES-256-GCM with a key derived by HKDF-SHA256 from the configured secret, a fresh
///   random 12-byte nonce per packet (`nonce | ciphertext | tag`) and the 4-byte header as
///   additional authenticated data, so no byte of the datagram can be changed unnoticed.
public struct LegionCodec: Sendable {
    public enum Mode: String, Sendable { case compat, native }

    /// uWSGI reads at most 65 499 bytes (spec §1.3).
    public static let maxDatagram = 65_499
    public static let nonceLength = 12
    public static let tagLength = 16

    public let mode: Mode
    public let secret: LegionSecret
    // Raw key bytes (SymmetricKey is not Sendable); keys are rebuilt per packet, which is cheap.
    private let cbcKeyBytes: [UInt8]
    private let cbcIVBytes: [UInt8]
    private var cbcKey: SymmetricKey { SymmetricKey(data: cbcKeyBytes) }
    private var cbcIV: AES._CBC.IV {
        get throws { try AES._CBC.IV(ivBytes: cbcIVBytes) }
    }
    /// AES-256-GCM with the announce key and with the relay key (native announces, relays in both modes).
    private let announceAEAD: any LegionAEAD
    private let relayAEAD: any LegionAEAD

    /// `aead`: the AES-256-GCM implementation for a 32-byte key (swift-crypto by default; the node's protocol thread
    /// plugs in one that keeps its key schedule). The wire format does not depend on it.
    public init(mode: Mode, secret: LegionSecret,
                aead: (_ key: [UInt8]) -> any LegionAEAD = { SwiftCryptoAEAD(key: $0) }) throws(LegionConfigError) {
        self.mode = mode
        self.secret = secret
        cbcKeyBytes = secret.compatKey
        cbcIVBytes = secret.compatIV
        var material = Array("legion-native-v1:".utf8)
        material.append(contentsOf: Array(secret.cipher.rawValue.utf8))
        material.append(0x3a)
        material.append(contentsOf: secret.secret)
        material.append(0x20)
        material.append(contentsOf: secret.ivToken)
        let derived = HKDF<SHA256>.deriveKey(inputKeyMaterial: SymmetricKey(data: material),
                                            salt: Array("legion".utf8),
                                            info: Array("announce-aead".utf8),
                                            outputByteCount: 32)
        announceAEAD = aead(derived.withUnsafeBytes { Array($0) })
        let relay = HKDF<SHA256>.deriveKey(inputKeyMaterial: SymmetricKey(data: material), salt: Array("legion".utf8),
                                           info: Array("relay-aead".utf8), outputByteCount: 32)
        relayAEAD = aead(relay.withUnsafeBytes { Array($0) })
    }

    /// modifier1 of legion side-channel messages (cluster-domain subscription relays). uWSGI peers
    /// drop them (not 109); legion peers authenticate them with the legion secret.
    public static let relayModifier: UInt8 = 226

    /// Seals a side-channel payload: `e2 | u16le length | 00 | nonce | AES-256-GCM(payload) | tag`,
    /// header authenticated, key derived from the legion secret (separate from announces).
    public func sealRelay(_ payload: [UInt8]) throws -> [UInt8] {
        guard payload.count <= Int(UInt16.max) else { throw LegionPacketError.oversized(payload.count) }
        let header = UwsgiHeader(modifier1: LegionCodec.relayModifier, dataSize: UInt16(payload.count), modifier2: 0)
        var out = header.bytes
        out.append(contentsOf: try relayAEAD.seal(payload, authenticating: header.bytes))
        return out
    }

    /// Opens a sealed side-channel payload; throws on any tampering or wrong secret.
    public func openRelay(_ datagram: [UInt8]) throws(LegionPacketError) -> [UInt8] {
        guard datagram.count >= UwsgiHeader.size + LegionCodec.nonceLength + LegionCodec.tagLength else { throw .tooShort(datagram.count) }
        let header: UwsgiHeader
        do { header = try UwsgiHeader(decoding: datagram) } catch { throw .tooShort(datagram.count) }
        guard header.modifier1 == LegionCodec.relayModifier else { throw .notLegion(modifier1: header.modifier1) }
        let plain: [UInt8]
        do {
            plain = try relayAEAD.open(datagram[UwsgiHeader.size...], authenticating: header.bytes)
        } catch {
            throw .decryptFailed
        }
        guard plain.count == Int(header.dataSize) else { throw .lengthMismatch(declared: Int(header.dataSize), actual: plain.count) }
        return plain
    }

    public func encode(_ announce: LegionAnnounce) throws -> [UInt8] {
        let cleartext = try announce.encodedVars()
        let header = UwsgiHeader(modifier1: UwsgiModifier.legion, dataSize: UInt16(cleartext.count), modifier2: 0)
        var out = header.bytes
        switch mode {
        case .compat:
            let sealed = try AES._CBC.encrypt(cleartext, using: cbcKey, iv: try cbcIV)
            out.append(contentsOf: sealed)
        case .native:
            out.append(contentsOf: try announceAEAD.seal(cleartext, authenticating: header.bytes))
        }
        guard out.count <= LegionCodec.maxDatagram else { throw LegionPacketError.oversized(out.count) }
        return out
    }

    /// Decrypts and parses one datagram. Never traps on any input.
    public func decode(_ datagram: [UInt8]) throws(LegionPacketError) -> LegionAnnounce {
        guard datagram.count <= LegionCodec.maxDatagram else { throw .oversized(datagram.count) }
        guard datagram.count >= UwsgiHeader.size + 1 else { throw .tooShort(datagram.count) }
        let header: UwsgiHeader
        do { header = try UwsgiHeader(decoding: datagram) } catch { throw .tooShort(datagram.count) }
        guard header.modifier1 == UwsgiModifier.legion else { throw .notLegion(modifier1: header.modifier1) }
        let body = datagram[UwsgiHeader.size...]
        let cleartext: [UInt8]
        switch mode {
        case .compat:
            guard body.count % 16 == 0 else { throw .decryptFailed }
            do {
                cleartext = Array(try AES._CBC.decrypt(Array(body), using: cbcKey, iv: try cbcIV))
            } catch {
                throw .decryptFailed
            }
        case .native:
            guard body.count >= LegionCodec.nonceLength + LegionCodec.tagLength else { throw .decryptFailed }
            do {
                cleartext = try announceAEAD.open(body, authenticating: header.bytes)
            } catch {
                throw .decryptFailed
            }
        }
        guard cleartext.count == Int(header.dataSize) else {
            throw .lengthMismatch(declared: Int(header.dataSize), actual: cleartext.count)
        }
        let announce = try LegionAnnounce(decodingVars: cleartext)
        guard announce.valor <= 65_535 else { throw .valorOutOfRange(announce.valor) }
        if mode == .native, announce.seq == nil { throw .missingSequence }
        return announce
    }
}

/// AES-256-GCM as legion datagrams use it: a fresh random 12-byte nonce per message, a 16-byte tag, the datagram
/// header authenticated; sealed form `nonce | ciphertext | tag`.
public protocol LegionAEAD: Sendable {
    func seal(_ plaintext: [UInt8], authenticating header: [UInt8]) throws -> [UInt8]
    /// The plaintext of `nonce | ciphertext | tag`; throws unless it is authentic.
    func open(_ sealed: ArraySlice<UInt8>, authenticating header: [UInt8]) throws -> [UInt8]
}

/// swift-crypto's AES-GCM (portable; the reference the node's OpenSSL one is tested against).
public struct SwiftCryptoAEAD: LegionAEAD {
    private let key: [UInt8]

    public init(key: [UInt8]) {
        precondition(key.count == 32, "AES-256 takes a 32-byte key")
        self.key = key
    }

    public func seal(_ plaintext: [UInt8], authenticating header: [UInt8]) throws -> [UInt8] {
        let box = try AES.GCM.seal(plaintext, using: SymmetricKey(data: key), nonce: AES.GCM.Nonce(), authenticating: header)
        var out = Array(box.nonce)
        out.append(contentsOf: box.ciphertext)
        out.append(contentsOf: box.tag)
        return out
    }

    public func open(_ sealed: ArraySlice<UInt8>, authenticating header: [UInt8]) throws -> [UInt8] {
        guard sealed.count >= LegionCodec.nonceLength + LegionCodec.tagLength else { throw LegionPacketError.decryptFailed }
        let start = sealed.startIndex
        let nonce = try AES.GCM.Nonce(data: sealed[start..<(start + LegionCodec.nonceLength)])
        let box = try AES.GCM.SealedBox(nonce: nonce, ciphertext: sealed[(start + LegionCodec.nonceLength)..<(sealed.endIndex - LegionCodec.tagLength)],
                                        tag: sealed[(sealed.endIndex - LegionCodec.tagLength)...])
        return Array(try AES.GCM.open(box, using: SymmetricKey(data: key), authenticating: header))
    }
}
