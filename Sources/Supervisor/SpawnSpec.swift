#if canImport(Glibc)
import Glibc
#endif

/// Everything needed to start one child process.
public struct SpawnSpec: Sendable {
    /// A path, or a name looked up in `PATH` when it has no `/`.
    public var executable: String
    public var arguments: [String]
    /// argv[0]; the executable when nil.
    public var argv0: String?
    /// The whole environment of the child (nil: this process's environment).
    public var environment: [String: String]?
    public var workingDirectory: String?
    /// File descriptors the child gets: stdin (nil: /dev/null), stdout/stderr (nil: inherited).
    public var stdin: Int32?
    public var stdout: Int32?
    public var stderr: Int32?
    /// Extra descriptors passed to the child: `source` in this process becomes `target` there.
    public var passFDs: [(source: Int32, target: Int32)]
    /// The child leads a new process group, so stopping it reaches everything it started.
    public var newProcessGroup: Bool
    /// The child starts a new session (and group): for daemons that must outlive a terminal.
    public var newSession: Bool
    /// Signal the child gets when the supervisor's thread dies (nil: none).
    public var parentDeathSignal: Int32?
    /// Drop to this uid/gid (supplementary groups cleared) before exec; needs root.
    public var user: (uid: UInt32, gid: UInt32)?

    public init(executable: String, arguments: [String] = [], environment: [String: String]? = nil,
                workingDirectory: String? = nil) {
        self.executable = executable
        self.arguments = arguments
        self.environment = environment
        self.workingDirectory = workingDirectory
        self.passFDs = []
        self.newProcessGroup = true
        self.newSession = false
        self.parentDeathSignal = SIGKILL
    }

    /// `sh -c command` with `extra` added to this process's environment.
    public static func shell(_ command: String, extraEnvironment extra: [String: String] = [:]) -> SpawnSpec {
        var env = currentEnvironment()
        for (k, v) in extra { env[k] = v }
        return SpawnSpec(executable: "/bin/sh", arguments: ["-c", command], environment: env)
    }
}

/// This process's environment as a dictionary.
public func currentEnvironment() -> [String: String] {
    var result: [String: String] = [:]
    var pointer = environ
    while let entry = pointer.pointee {
        let text = String(cString: entry)
        if let eq = text.firstIndex(of: "=") {
            result[String(text[..<eq])] = String(text[text.index(after: eq)...])
        }
        pointer += 1
    }
    return result
}

/// Resolves a program name through `PATH` (as execvp would); paths with `/` are returned as they are.
public func resolveExecutable(_ name: String, path: String? = nil) -> String? {
    if name.contains("/") { return access(name, X_OK) == 0 ? name : nil }
    let searchPath = path ?? currentEnvironment()["PATH"] ?? "/usr/local/bin:/usr/bin:/bin"
    for dir in searchPath.split(separator: ":") where !dir.isEmpty {
        let candidate = "\(dir)/\(name)"
        if access(candidate, X_OK) == 0 { return candidate }
    }
    return nil
}
