/// A configuration problem, naming the key and what to do about it.
public enum LegionConfigError: Error, Equatable, CustomStringConvertible, Sendable {
    case invalid(key: String, problem: String)

    public var description: String {
        switch self {
        case .invalid(let key, let problem): return "\(key): \(problem)"
        }
    }
}
