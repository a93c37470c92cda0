import UwsgiWire

/// A uWSGI subscription datagram (type 224, spec §3.2): `key`, `address`, modifiers, `cores`,
/// `load`, `weight`, optional `sni_key`/`sni_crt`/`sni_ca`, `notify`, `backup`, and for signed
/// packets `unix` then `sign` as the last two entries.
public struct SubscriptionPacket: Sendable, Equatable {
    public enum Command: UInt8, Sendable { case subscribe = 0, unsubscribe = 1 }

    /// uWSGI's router reads at most 4096 bytes per datagram (spec §1.3).
    public static let maxDatagram = 4096
    /// Keys longer than this crash uWSGI's router; we refuse them.
    public static let maxKeyLength = 255
    public static let maxAddressLength = 255

    public var command: Command
    public var key: [UInt8]
    public var address: [UInt8]
    public var modifier1: UInt8 = 0
    public var modifier2: UInt8 = 0
    public var cores: UInt64 = 0
    public var load: UInt64 = 0
    public var weight: UInt64 = 0
    public var sniKey: [UInt8]?
    public var sniCrt: [UInt8]?
    public var sniCA: [UInt8]?
    public var notify: [UInt8]?
    public var backup: UInt64?
    public var unix: UInt64?
    public var signature: [UInt8]?
    /// The bytes a signature covers: the body from its start through the end of the `unix` entry
    /// (everything before the trailing `sign` entry). Set when decoding.
    public private(set) var signedRegion: [UInt8] = []

    public init(command: Command, key: String, address: String) {
        self.command = command
        self.key = Array(key.utf8)
        self.address = Array(address.utf8)
    }

    public var keyString: String { String(decoding: key, as: UTF8.self) }
    public var addressString: String { String(decoding: address, as: UTF8.self) }
    public var isSigned: Bool { signature != nil }

    /// The vars uWSGI 2.0 sends, in its order, up to and including `unix` (the signed region).
    public var unsignedVars: UwsgiVars {
        var v = UwsgiVars()
        v.append("key", key)
        v.append("address", address)
        v.append("modifier1", number: modifier1)
        v.append("modifier2", number: modifier2)
        v.append("cores", number: cores)
        v.append("load", number: load)
        v.append("weight", number: weight)
        if let sniKey { v.append("sni_key", sniKey) }
        if let sniCrt { v.append("sni_crt", sniCrt) }
        if let sniCA { v.append("sni_ca", sniCA) }
        if let notify { v.append("notify", notify) }
        if let backup { v.append("backup", number: backup) }
        if let unix { v.append("unix", number: unix) }
        return v
    }

    /// Encodes the datagram; `sign` (if given) computes the signature over the signed region.
    public func encode(sign: (([UInt8]) throws -> [UInt8])? = nil) throws -> [UInt8] {
        var vars = unsignedVars
        if let sign {
            let region = try vars.encode()
            vars.append("sign", try sign(region))
        } else if let signature {
            vars.append("sign", signature)
        }
        return try UwsgiPacket(modifier1: UwsgiModifier.subscription, modifier2: command.rawValue, vars: vars).encode()
    }

    /// Strict decode: header type 224 and a size that matches, a well-formed vars block, decimal
    /// numbers, key and address of 1-255 bytes, and `sign` (if any) as the last entry after `unix`.
    /// uWSGI is laxer (it ignores the header and truncation); every difference is a rejection
    /// with a reason, never a crash.
    public init(decoding datagram: [UInt8]) throws(SubscriptionError) {
        guard datagram.count <= SubscriptionPacket.maxDatagram else { throw .oversized(datagram.count) }
        let header: UwsgiHeader
        do { header = try UwsgiHeader(decoding: datagram) } catch { throw .malformed("shorter than the 4-byte header") }
        guard header.modifier1 == UwsgiModifier.subscription else { throw .notSubscription(header.modifier1) }
        let body = Array(datagram[UwsgiHeader.size...])
        guard Int(header.dataSize) == body.count else {
            throw .malformed("header declares \(header.dataSize) body bytes, \(body.count) follow")
        }
        guard header.modifier2 <= 1 else { throw .malformed("unknown command \(header.modifier2) (0 = subscribe, 1 = unsubscribe)") }
        command = header.modifier2 == 0 ? .subscribe : .unsubscribe
        let vars: UwsgiVars
        do { vars = try UwsgiVars(decoding: body) } catch { throw .malformed("\(error)") }

        guard let key = vars["key"], !key.isEmpty else { throw .missingField("key") }
        guard key.count <= SubscriptionPacket.maxKeyLength else { throw .keyTooLong(key.count) }
        guard let address = vars["address"], !address.isEmpty else { throw .missingField("address") }
        guard address.count <= SubscriptionPacket.maxAddressLength else { throw .malformed("address longer than 255 bytes") }
        self.key = key
        self.address = address

        func number(_ name: String, max: UInt64 = .max) throws(SubscriptionError) -> UInt64? {
            guard let raw = vars[name] else { return nil }
            guard let value = UwsgiVars.parseDecimal(raw), value <= max else { throw .badNumber(name) }
            return value
        }
        modifier1 = UInt8(try number("modifier1", max: 255) ?? 0)
        modifier2 = UInt8(try number("modifier2", max: 255) ?? 0)
        cores = try number("cores") ?? 0
        load = try number("load") ?? 0
        weight = try number("weight") ?? 0
        backup = try number("backup")
        unix = try number("unix")
        sniKey = vars["sni_key"]
        sniCrt = vars["sni_crt"]
        sniCA = vars["sni_ca"]
        notify = vars["notify"]

        if let signIndex = vars.entries.lastIndex(where: { $0.key == Array("sign".utf8) }) {
            guard signIndex == vars.entries.count - 1 else { throw .malformed("'sign' must be the last entry") }
            guard unix != nil else { throw .malformed("a signed packet needs a 'unix' entry before 'sign'") }
            let sign = vars.entries[signIndex].value
            guard !sign.isEmpty else { throw .malformed("empty signature") }
            signature = sign
            signedRegion = Array(body[0..<(body.count - 4 - 4 - sign.count)])
        }
    }
}

/// Why a subscription datagram was refused.
public enum SubscriptionError: Error, Equatable, Sendable, CustomStringConvertible {
    case oversized(Int)
    case notSubscription(UInt8)
    case malformed(String)
    case missingField(String)
    case badNumber(String)
    case keyTooLong(Int)
    case unsigned
    case noPublicKey(String)
    case badSignature
    case replayed(unix: UInt64, last: UInt64)
    case stale(unix: UInt64, now: UInt64)
    case future(unix: UInt64, now: UInt64)
    case unknownNode
    case tableFull(String)

    public var reason: String {
        switch self {
        case .oversized: return "oversized"
        case .notSubscription: return "not_subscription"
        case .malformed: return "malformed"
        case .missingField: return "missing_field"
        case .badNumber: return "bad_number"
        case .keyTooLong: return "key_too_long"
        case .unsigned: return "unsigned"
        case .noPublicKey: return "no_public_key"
        case .badSignature: return "bad_signature"
        case .replayed: return "replayed"
        case .stale: return "stale"
        case .future: return "future"
        case .unknownNode: return "unknown_node"
        case .tableFull: return "table_full"
        }
    }

    public var description: String {
        switch self {
        case .oversized(let n): return "datagram of \(n) bytes exceeds the 4096-byte subscription limit"
        case .notSubscription(let m): return "modifier1 \(m) is not a subscription (224)"
        case .malformed(let why): return "malformed subscription: \(why)"
        case .missingField(let k): return "subscription without '\(k)'"
        case .badNumber(let k): return "field '\(k)' is not a decimal number in range"
        case .keyTooLong(let n): return "key of \(n) bytes; keys are limited to 255 bytes"
        case .unsigned: return "unsigned packet, but this router requires signed subscriptions"
        case .noPublicKey(let key): return "no public key for '\(key)' (expected <key dir>/<key>.pem)"
        case .badSignature: return "signature does not verify with the key's public key"
        case .replayed(let unix, let last): return "unix \(unix) is not newer than \(last) already accepted for this node (replayed or reordered packet)"
        case .stale(let unix, let now): return "unix \(unix) is too old (now \(now)); check the subscriber's clock"
        case .future(let unix, let now): return "unix \(unix) is too far in the future (now \(now)); check the subscriber's clock"
        case .unknownNode: return "unsubscribe for a node that is not subscribed"
        case .tableFull(let what): return "subscription table full: \(what)"
        }
    }
}
