/// One node's Legion protocol in either mode, behind one set of inputs.
public enum LegionMachine: Sendable {
    case compat(CompatLegion)
    case native(NativeLegion)

    public mutating func tick(at time: LegionTime) -> [LegionDirective] {
        switch self {
        case .compat(var m): let out = m.tick(at: time); self = .compat(m); return out
        case .native(var m): let out = m.tick(at: time); self = .native(m); return out
        }
    }

    public mutating func receive(_ announce: LegionAnnounce, at time: LegionTime) -> [LegionDirective] {
        switch self {
        case .compat(var m): let out = m.receive(announce, at: time); self = .compat(m); return out
        case .native(var m): let out = m.receive(announce, at: time); self = .native(m); return out
        }
    }

    public mutating func shutdown(at time: LegionTime) -> [LegionDirective] {
        switch self {
        case .compat(var m): let out = m.shutdown(at: time); self = .compat(m); return out
        case .native(var m): let out = m.shutdown(at: time); self = .native(m); return out
        }
    }

    public func nextWakeup(after time: LegionTime) -> UInt64 {
        switch self {
        case .compat(let m): return m.nextWakeup(after: time)
        case .native(let m): return m.nextWakeup(after: time)
        }
    }

    public var status: LegionStatus {
        switch self {
        case .compat(let m): return m.status
        case .native(let m): return m.status
        }
    }

    public var isLord: Bool {
        switch self {
        case .compat(let m): return m.isLord
        case .native(let m): return m.isLord
        }
    }

    /// Native: lordship with a lease still running on this node's clock. Compat has no lease, so a
    /// compat Lord always believes its lordship valid.
    public func holdsValidLordship(at mono: UInt64) -> Bool {
        switch self {
        case .compat(let m): return m.isLord
        case .native(let m): return m.holdsValidLease(at: mono)
        }
    }
}
