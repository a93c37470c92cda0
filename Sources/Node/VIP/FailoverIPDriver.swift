/// Puts the failover IP on this node and takes it off again. Drivers must be idempotent: acquire
/// twice or release an IP that is not held is not an error.
public protocol FailoverIPDriver: Sendable {
    var name: String { get }
    /// Makes the VIP answer on this node. Throws with an actionable message if it cannot.
    func acquire() async throws
    /// Removes the VIP from this node. Must be fast: it runs before the lease ends.
    func release() async throws
    /// The lease behind the IP changed: held until this monotonic deadline, or `nil` once released.
    /// Drivers with an external fence (iproute2) forward it; the default does nothing.
    func leaseChanged(heldUntil: UInt64?)
    /// Called once at clean shutdown, after the final release.
    func close()
}

extension FailoverIPDriver {
    public func leaseChanged(heldUntil: UInt64?) {}
    public func close() {}
}

public struct FailoverIPError: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// No VIP: lordship only runs hooks (e.g. uWSGI-style `cmd:` hooks) and is visible in status.
public struct NoFailoverIP: FailoverIPDriver {
    public let name = "none"
    public init() {}
    public func acquire() async throws {}
    public func release() async throws {}
}

/// The loopback driver: 127.0.0.0/8 is already local on Linux, so holding the VIP means the Lord
/// binds the VIP's HTTP port on its 127.x address (done by the controller). No root needed.
public struct LoopbackFailoverIP: FailoverIPDriver {
    public let name = "loopback"
    public init() {}
    public func acquire() async throws {}
    public func release() async throws {}
}
