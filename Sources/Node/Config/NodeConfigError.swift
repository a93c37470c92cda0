/// A node configuration problem. Every message names the key and says what would be accepted.
public enum NodeConfigError: Error, Equatable, CustomStringConvertible, Sendable {
    case unreadable(path: String, reason: String)
    case syntax(path: String, line: Int, column: Int, message: String)
    case missing(key: String, hint: String)
    case wrongType(key: String, expected: String, found: String)
    case invalid(key: String, problem: String)
    case unknownKey(key: String, allowed: String)

    public var description: String {
        switch self {
        case .unreadable(let path, let reason): return "cannot read config \(path): \(reason)"
        case .syntax(let path, let line, let column, let message): return "\(path):\(line):\(column): TOML syntax error: \(message)"
        case .missing(let key, let hint): return "\(key): required key is missing; \(hint)"
        case .wrongType(let key, let expected, let found): return "\(key): expected \(expected), found a \(found)"
        case .invalid(let key, let problem): return "\(key): \(problem)"
        case .unknownKey(let key, let allowed): return "\(key): unknown key (allowed here: \(allowed))"
        }
    }
}
