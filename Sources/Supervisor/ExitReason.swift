/// How a child process ended.
public enum ExitReason: Sendable, Equatable, CustomStringConvertible {
    case exited(Int32)
    case signaled(Int32, coreDumped: Bool)

    public var description: String {
        switch self {
        case .exited(let code): return "exit code \(code)"
        case .signaled(let sig, let core): return "killed by signal \(sig)\(signalName(sig).map { " (\($0))" } ?? "")\(core ? ", core dumped" : "")"
        }
    }

    /// The shell's convention: the exit code, or 128 + the signal.
    public var shellStatus: Int32 {
        switch self {
        case .exited(let code): return code
        case .signaled(let sig, _): return 128 + sig
        }
    }

    public var succeeded: Bool { self == .exited(0) }
}

func signalName(_ sig: Int32) -> String? {
    switch sig {
    case 1: return "SIGHUP"
    case 2: return "SIGINT"
    case 6: return "SIGABRT"
    case 9: return "SIGKILL"
    case 11: return "SIGSEGV"
    case 13: return "SIGPIPE"
    case 15: return "SIGTERM"
    default: return nil
    }
}
