/// Errors of the dqlite wire client. Every message says what to do next.
public enum DqliteError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The server answered FAILURE.
    case failure(code: UInt64, message: String)
    /// A value or request the client refuses to send (too big, too many parameters, NUL in text…).
    case invalidInput(String)
    /// The server's bytes do not follow the protocol.
    case protocolViolation(String)
    /// No answer in time.
    case timeout(operation: String, milliseconds: Int)
    /// The TCP connection failed or closed.
    case connection(address: String, reason: String)

    /// SQLITE_IOERR_NOT_LEADER: the node is not (or no longer) the leader.
    public static let notLeaderCode: UInt64 = 10250
    /// SQLITE_IOERR_LEADERSHIP_LOST.
    public static let leadershipLostCode: UInt64 = 10506
    /// SQLITE_BUSY.
    public static let busyCode: UInt64 = 5
    /// SQLITE_CONSTRAINT (and its extended codes, low byte 19).
    public static let constraintCode: UInt64 = 19

    public var isNotLeader: Bool {
        if case .failure(let code, let message) = self {
            return code == Self.notLeaderCode || code == Self.leadershipLostCode || message.contains("not leader")
                || message.contains("leadership lost") || message.contains("no database opened")
        }
        return false
    }

    public var isConstraint: Bool {
        if case .failure(let code, let message) = self {
            return code & 0xff == Self.constraintCode || message.contains("constraint failed")
        }
        return false
    }

    public var description: String {
        switch self {
        case .failure(let code, let message):
            "dqlite error \(code): \(message)"
        case .invalidInput(let why):
            "refused before sending: \(why)"
        case .protocolViolation(let why):
            "the dqlite server sent bytes this client does not understand (\(why)); check that the address is a dqlite 1.11 node"
        case .timeout(let operation, let ms):
            "\(operation) got no answer within \(ms) ms; the node may be overloaded, partitioned or without quorum"
        case .connection(let address, let reason):
            "cannot talk to dqlite node \(address): \(reason); check that the node runs and the address is right"
        }
    }
}
