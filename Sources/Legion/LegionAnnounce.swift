import UwsgiWire

/// The cleartext of a Legion announce (spec §2.3), plus the optional keys native mode adds.
///
/// uWSGI peers ignore unknown keys, so native keys never break the layout; compat mode never sends them.
public struct LegionAnnounce: Sendable, Equatable {
    public var legion: [UInt8]
    public var valor: UInt64
    /// Sender's wall clock in whole seconds.
    public var unix: UInt64
    /// 0, or the Unix time at which the sender became Lord.
    public var lord: UInt64
    public var name: [UInt8]
    public var pid: UInt64
    public var uuid: LegionUUID
    public var checksum: UInt64
    public var lordValor: UInt64
    public var lordUUID: LegionUUID
    public var scroll: [UInt8]?
    public var dead: Bool

    /// Native mode only: per-incarnation sequence number, strictly increasing.
    public var seq: UInt64?
    /// Native mode only: the sequence number of the voted-for node's latest announce this sender had
    /// received when it voted (the Lord counts its lease from when it sent that announce).
    public var ack: UInt64?
    /// Native mode only: sender's wall clock in milliseconds (clock-skew detection).
    public var unixMs: UInt64?
    /// Native mode only: milliseconds of lease the sender (as Lord) still holds.
    public var leaseMs: UInt64?
    /// Native mode only: how many members the sender currently hears (viability of a candidate).
    public var heard: UInt64?

    public init(legion: [UInt8], valor: UInt64, unix: UInt64, lord: UInt64 = 0, name: [UInt8], pid: UInt64,
                uuid: LegionUUID, checksum: UInt64 = 0, lordValor: UInt64 = 0, lordUUID: LegionUUID = .none,
                scroll: [UInt8]? = nil, dead: Bool = false, seq: UInt64? = nil, ack: UInt64? = nil,
                unixMs: UInt64? = nil, leaseMs: UInt64? = nil, heard: UInt64? = nil) {
        self.legion = legion
        self.valor = valor
        self.unix = unix
        self.lord = lord
        self.name = name
        self.pid = pid
        self.uuid = uuid
        self.checksum = checksum
        self.lordValor = lordValor
        self.lordUUID = lordUUID
        self.scroll = scroll
        self.dead = dead
        self.seq = seq
        self.ack = ack
        self.unixMs = unixMs
        self.leaseMs = leaseMs
        self.heard = heard
    }

    public var nameString: String { String(decoding: name, as: UTF8.self) }

    /// Entries in uWSGI's order (`uwsgi_legion_announce`), native keys after the optional ones.
    public var vars: UwsgiVars {
        var v = UwsgiVars()
        v.append("legion", legion)
        v.append("valor", number: valor)
        v.append("unix", number: unix)
        v.append("lord", number: lord)
        v.append("name", name)
        v.append("pid", number: pid)
        v.append("uuid", uuid.bytes)
        v.append("checksum", number: checksum)
        v.append("lord_valor", number: lordValor)
        v.append("lord_uuid", lordUUID.bytes)
        if let scroll, !scroll.isEmpty { v.append("scroll", scroll) }
        if dead { v.append("dead", "1") }
        if let seq { v.append("seq", number: seq) }
        if let ack { v.append("ack", number: ack) }
        if let unixMs { v.append("unix_ms", number: unixMs) }
        if let leaseMs { v.append("lease_ms", number: leaseMs) }
        if let heard { v.append("heard", number: heard) }
        return v
    }

    /// Decodes as uWSGI's `uwsgi_parse_legion` does: unknown keys ignored, last duplicate wins, a
    /// uuid that is not exactly 36 bytes stays "none", presence of `dead` marks a death announce.
    /// Stricter than uWSGI where uWSGI misbehaves: numbers must be decimal digits, and `legion`,
    /// `valor`, `unix`, `name`, `uuid` are required.
    public init(vars: UwsgiVars) throws(LegionPacketError) {
        func required(_ key: String) throws(LegionPacketError) -> [UInt8] {
            guard let value = vars[key] else { throw .missingField(key) }
            return value
        }
        func number(_ key: String, required isRequired: Bool) throws(LegionPacketError) -> UInt64? {
            guard let raw = vars[key] else {
                if isRequired { throw .missingField(key) }
                return nil
            }
            guard let value = UwsgiVars.parseDecimal(raw) else { throw .badNumber(key) }
            return value
        }
        legion = try required("legion")
        valor = try number("valor", required: true) ?? 0
        unix = try number("unix", required: true) ?? 0
        lord = (try? number("lord", required: false)) ?? 0
        name = try required("name")
        pid = try number("pid", required: false) ?? 0
        guard let id = LegionUUID(bytes: try required("uuid")) else { throw .badUUID("uuid") }
        uuid = id
        checksum = try number("checksum", required: false) ?? 0
        lordValor = try number("lord_valor", required: false) ?? 0
        lordUUID = vars["lord_uuid"].flatMap { LegionUUID(bytes: $0) } ?? .none
        scroll = vars["scroll"]
        dead = vars["dead"] != nil
        seq = try number("seq", required: false)
        ack = try number("ack", required: false)
        unixMs = try number("unix_ms", required: false)
        leaseMs = try number("lease_ms", required: false)
        heard = try number("heard", required: false)
    }
}
