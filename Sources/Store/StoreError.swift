/// Errors of the replicated store, each saying what to do.
public enum StoreError: Error, Sendable, Equatable, CustomStringConvertible {
    /// No leader could be found: a majority of the voters is down or cut off.
    case noQuorum(String)
    /// A write was sent but its outcome is unknown (timeout or leader change at commit). Retrying with the same
    /// request id is safe: it is applied at most once.
    case unconfirmed(requestID: String, detail: String)
    /// The store refused the statement (constraint, SQL error): retrying will not help.
    case rejected(String)
    /// The caller's input cannot be sent (too big, too many parameters, bad name…).
    case invalidInput(String)
    /// The node's store settings are wrong.
    case configuration(String)
    /// The schema in the store is newer than this binary.
    case schemaTooNew(store: Int, binary: Int)

    public var description: String {
        switch self {
        case .noQuorum(let detail):
            "no quorum: \(detail) — a majority of the store's voters must run and reach each other; start the stopped nodes (legion cluster up) and retry"
        case .unconfirmed(let id, let detail):
            "write \(id) not confirmed (\(detail)); it may or may not have been applied — retry with the same request id, which applies it at most once"
        case .rejected(let why):
            "the store refused the write: \(why)"
        case .invalidInput(let why):
            "invalid input: \(why)"
        case .configuration(let why):
            "store configuration: \(why)"
        case .schemaTooNew(let store, let binary):
            "the store's schema is version \(store) but this binary knows only up to \(binary); upgrade this node's legion binary"
        }
    }
}
