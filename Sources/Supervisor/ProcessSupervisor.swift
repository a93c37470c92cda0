import CProcess
import Foundation
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Why a child could not be started; the message says what to check.
public struct SpawnError: Error, CustomStringConvertible, Sendable {
    public var executable: String
    public var errno: Int32
    public var description: String {
        let reason = String(cString: strerror(errno))
        switch errno {
        case ENOENT: return "cannot start \(executable): \(reason) (is it installed and on PATH?)"
        case EACCES: return "cannot start \(executable): \(reason) (check that it is executable and its directory readable)"
        case EPERM: return "cannot start \(executable): \(reason) (dropping to another user needs root)"
        default: return "cannot start \(executable): \(reason)"
        }
    }
}

/// A started child. Its exit is delivered once, to the `onExit` handler given at spawn and to `wait()`.
public final class ChildProcess: Sendable {
    public let pid: Int32
    /// The child's process group (its pid when it leads one, else nil).
    public let processGroup: Int32?
    public let executable: String
    private let state = Mutex<(reason: ExitReason?, waiters: [CheckedContinuation<ExitReason, Never>])>((nil, []))
    private let exitCondition = NSCondition()

    init(pid: Int32, processGroup: Int32?, executable: String) {
        self.pid = pid
        self.processGroup = processGroup
        self.executable = executable
    }

    /// The exit reason once the child has been reaped, else nil.
    public var exitReason: ExitReason? { state.withLock { $0.reason } }
    public var isRunning: Bool { exitReason == nil }

    /// Waits for the child to exit.
    public func wait() async -> ExitReason {
        await withCheckedContinuation { continuation in
            let ready: ExitReason? = state.withLock { s in
                if let r = s.reason { return r }
                s.waiters.append(continuation)
                return nil
            }
            if let ready { continuation.resume(returning: ready) }
        }
    }

    /// Waits for the child on this thread (for synchronous callers); nil when `timeoutSeconds` passed first.
    public func waitBlocking(timeoutSeconds: Double? = nil) -> ExitReason? {
        let deadline = timeoutSeconds.map { Date().addingTimeInterval($0) }
        exitCondition.lock()
        defer { exitCondition.unlock() }
        while exitReason == nil {
            if let deadline {
                if !exitCondition.wait(until: deadline) { return exitReason }
            } else {
                exitCondition.wait()
            }
        }
        return exitReason
    }

    /// Sends `signal` to the child only.
    @discardableResult
    public func signal(_ signal: Int32) -> Bool {
        guard isRunning else { return false }
        return kill(pid, signal) == 0
    }

    /// Sends `signal` to the child's whole process group (the child when it leads none).
    @discardableResult
    public func signalGroup(_ signal: Int32) -> Bool {
        guard isRunning else {
            // The leader is gone but its group may live on (orphaned workers): reach them too.
            if let group = processGroup { return kill(-group, signal) == 0 }
            return false
        }
        if let group = processGroup { return kill(-group, signal) == 0 }
        return kill(pid, signal) == 0
    }

    func finish(_ reason: ExitReason) {
        let waiters = state.withLock { s -> [CheckedContinuation<ExitReason, Never>] in
            s.reason = reason
            defer { s.waiters = [] }
            return s.waiters
        }
        for w in waiters { w.resume(returning: reason) }
        exitCondition.lock()
        exitCondition.broadcast()
        exitCondition.unlock()
    }
}

/// The one place legion starts child processes: fork/exec with process groups, passed descriptors,
/// privilege drop and parent-death signal; exits are reaped through pidfds on one thread (no polling, no
/// SIGCHLD handler that could steal another library's children), and every caller can stop what it started.
public final class ProcessSupervisor: @unchecked Sendable {
    // @unchecked: all mutable state is behind `lock`; the reaper thread only touches it through `lock`.
    public static let shared = ProcessSupervisor()

    private struct Entry {
        var child: ChildProcess
        var pidfd: Int32
        var onExit: (@Sendable (Int32, ExitReason) -> Void)?
    }

    private let lock = NSLock()
    private var entries: [Int32: Entry] = [:]
    private var wakeRead: Int32 = -1
    private var wakeWrite: Int32 = -1
    private var started = false
    private let forkThread = ForkThread()

    public init() {}

    /// Children started and not yet reaped.
    public var running: [ChildProcess] { lock.withLock { entries.values.map(\.child) } }

    /// Starts a child. `onExit` runs on the reaper thread once the child has been reaped: keep it short.
    @discardableResult
    public func spawn(_ spec: SpawnSpec, onExit: (@Sendable (_ pid: Int32, _ reason: ExitReason) -> Void)? = nil) throws(SpawnError) -> ChildProcess {
        startReaperIfNeeded()
        let env = spec.environment ?? currentEnvironment()
        guard let path = resolveExecutable(spec.executable, path: env["PATH"]) else {
            throw SpawnError(executable: spec.executable, errno: ENOENT)
        }
        let argvStrings = [spec.argv0 ?? spec.executable] + spec.arguments
        let envStrings = env.map { "\($0.key)=\($0.value)" }
        var pidfd: Int32 = -1
        let pid: Int32 = withCStrings(argvStrings) { argv in
            withCStrings(envStrings) { envp in
                let sources = spec.passFDs.map(\.source)
                let targets = spec.passFDs.map(\.target)
                return sources.withUnsafeBufferPointer { src in
                    targets.withUnsafeBufferPointer { dst in
                        path.withCString { cPath in
                            withOptionalCString(spec.workingDirectory) { cwd in
                                var attr = cproc_spawn_attr()
                                attr.path = cPath
                                attr.argv = argv
                                attr.envp = envp
                                attr.cwd = cwd
                                attr.stdin_fd = spec.stdin ?? -1
                                attr.stdout_fd = spec.stdout ?? -1
                                attr.stderr_fd = spec.stderr ?? -1
                                attr.keep_fds = src.baseAddress
                                attr.target_fds = dst.baseAddress
                                attr.keep_count = Int32(spec.passFDs.count)
                                attr.new_process_group = spec.newProcessGroup ? 1 : 0
                                attr.new_session = spec.newSession ? 1 : 0
                                attr.pdeathsig = spec.parentDeathSignal ?? 0
                                if let user = spec.user {
                                    attr.drop_privileges = 1
                                    attr.uid = user.uid
                                    attr.gid = user.gid
                                }
                                // Forks run on one long-lived thread: PR_SET_PDEATHSIG fires when the *thread* that
                                // forked exits, and pool threads come and go. The lock is held until the child is
                                // registered, so the reaper cannot see its exit first.
                                lock.lock()
                                return forkThread.run { cproc_spawn(&attr, &pidfd) }
                            }
                        }
                    }
                }
            }
        }
        if pid < 0 {
            let e = forkThread.lastErrno
            lock.unlock()
            throw SpawnError(executable: path, errno: e)
        }
        let child = ChildProcess(pid: pid, processGroup: (spec.newProcessGroup || spec.newSession) ? pid : nil, executable: path)
        entries[pid] = Entry(child: child, pidfd: pidfd, onExit: onExit)
        lock.unlock()
        wake()
        return child
    }

    /// Runs a command to completion; on timeout its process group gets SIGTERM, then SIGKILL 1 s later.
    /// Output (stdout + stderr) is captured when `captureOutput` (up to 64 KiB).
    public func run(_ spec: SpawnSpec, timeoutSeconds: Double? = nil, captureOutput: Bool = false) async -> RunResult {
        let child: ChildProcess, reader: OutputReader
        switch start(spec, captureOutput: captureOutput) {
        case .failure(let failed): return failed.result
        case .success(let started): (child, reader) = started
        }
        let timedOut = Flag()
        let watchdog: Task<Void, Never>? = timeoutSeconds.map { seconds in
            Task.detached {
                try? await Task.sleep(for: .milliseconds(Int(seconds * 1000)))
                guard !Task.isCancelled, child.isRunning else { return }
                timedOut.set()
                child.signalGroup(SIGTERM)
                try? await Task.sleep(for: .seconds(1))
                if child.isRunning { child.signalGroup(SIGKILL) }
            }
        }
        let reason = await child.wait()
        watchdog?.cancel()
        return RunResult(reason: reason, output: reader.finish(), timedOut: timedOut.value, error: nil)
    }

    /// `run` for synchronous callers (CLI commands, the VIP fence): blocks this thread, not the pool.
    public func runBlocking(_ spec: SpawnSpec, timeoutSeconds: Double? = nil, captureOutput: Bool = false) -> RunResult {
        let child: ChildProcess, reader: OutputReader
        switch start(spec, captureOutput: captureOutput) {
        case .failure(let failed): return failed.result
        case .success(let started): (child, reader) = started
        }
        if let reason = child.waitBlocking(timeoutSeconds: timeoutSeconds) {
            return RunResult(reason: reason, output: reader.finish(), timedOut: false, error: nil)
        }
        child.signalGroup(SIGTERM)
        if child.waitBlocking(timeoutSeconds: 1) == nil { child.signalGroup(SIGKILL) }
        return RunResult(reason: child.waitBlocking(timeoutSeconds: 5), output: reader.finish(), timedOut: true, error: nil)
    }

    private struct StartFailure: Error { var result: RunResult }

    /// Spawns for `run`/`runBlocking`, with stdout + stderr into a pipe read on its own thread when capturing
    /// (a child that hangs with the pipe open cannot block the caller).
    private func start(_ spec: SpawnSpec, captureOutput: Bool) -> Result<(ChildProcess, OutputReader), StartFailure> {
        var spec = spec
        var pipeFDs: [Int32] = [-1, -1]
        if captureOutput {
            guard cproc_pipe(&pipeFDs, 0) == 0 else {
                return .failure(StartFailure(result: RunResult(reason: nil, output: "", timedOut: false, error: "pipe: \(String(cString: strerror(errno)))")))
            }
            spec.stdout = pipeFDs[1]
            spec.stderr = pipeFDs[1]
        }
        let child: ChildProcess
        do {
            child = try spawn(spec)
        } catch {
            if captureOutput { close(pipeFDs[0]); close(pipeFDs[1]) }
            return .failure(StartFailure(result: RunResult(reason: nil, output: "", timedOut: false, error: error.description)))
        }
        let reader = OutputReader()
        if captureOutput {
            close(pipeFDs[1])
            reader.start(fd: pipeFDs[0])
        }
        return .success((child, reader))
    }

    /// A pipe (both ends close-on-exec; pass one to a child with `SpawnSpec.stdin`/`stdout`).
    public static func makePipe() throws(SpawnError) -> (read: Int32, write: Int32) {
        var fds: [Int32] = [-1, -1]
        guard cproc_pipe(&fds, 0) == 0 else { throw SpawnError(executable: "pipe", errno: errno) }
        return (fds[0], fds[1])
    }

    /// Opens (creating) a log file for appending, close-on-exec; -1 when it cannot be opened.
    public static func openLog(_ path: String) -> Int32 {
        open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o644)
    }

    /// Kill-on-stop: SIGTERM to every child's group, SIGKILL after `graceSeconds` to what is left.
    public func terminateAll(graceSeconds: Double) async {
        let children = running
        for child in children { child.signalGroup(SIGTERM) }
        let deadline = ContinuousClock.now + .milliseconds(Int(graceSeconds * 1000))
        for child in children {
            while child.isRunning, ContinuousClock.now < deadline { try? await Task.sleep(for: .milliseconds(20)) }
            if child.isRunning { child.signalGroup(SIGKILL) }
        }
    }

    // MARK: Reaper

    private func startReaperIfNeeded() {
        lock.lock()
        defer { lock.unlock() }
        guard !started else { return }
        started = true
        var fds: [Int32] = [-1, -1]
        if cproc_pipe(&fds, 1) == 0 {
            wakeRead = fds[0]
            wakeWrite = fds[1]
        }
        let thread = Thread { [self] in
            ThreadName.set("legion-reaper")
            reaperLoop()
        }
        thread.start()
    }

    private func wake() {
        var byte: UInt8 = 1
        _ = write(wakeWrite, &byte, 1)
    }

    private func reaperLoop() {
        while true {
            let snapshot: [(pid: Int32, pidfd: Int32)] = lock.withLock { entries.map { ($0.key, $0.value.pidfd) } }
            var polls = [pollfd(fd: wakeRead, events: Int16(POLLIN), revents: 0)]
            var needsPolling = false
            for e in snapshot {
                if e.pidfd >= 0 { polls.append(pollfd(fd: e.pidfd, events: Int16(POLLIN), revents: 0)) } else { needsPolling = true }
            }
            // Without pidfds (old kernels) exits are checked every 50 ms.
            _ = poll(&polls, nfds_t(polls.count), needsPolling ? 50 : -1)
            if polls[0].revents != 0 {
                var buffer = [UInt8](repeating: 0, count: 256)
                while read(wakeRead, &buffer, buffer.count) > 0 {}
            }
            for e in snapshot { reapIfExited(pid: e.pid) }
        }
    }

    private func reapIfExited(pid: Int32) {
        var code: Int32 = 0, sig: Int32 = 0, core: Int32 = 0
        let r = cproc_try_reap(pid, &code, &sig, &core)
        guard r != 0 else { return }
        // r < 0: someone else reaped it (should not happen); report it as lost with code -1.
        let reason: ExitReason = r > 0 ? (sig != 0 ? .signaled(sig, coreDumped: core != 0) : .exited(code)) : .exited(-1)
        let entry: Entry? = lock.withLock { entries.removeValue(forKey: pid) }
        guard let entry else { return }
        if entry.pidfd >= 0 { close(entry.pidfd) }
        entry.child.finish(reason)
        entry.onExit?(pid, reason)
    }
}

/// The outcome of `ProcessSupervisor.run`.
public struct RunResult: Sendable {
    /// nil when the command could not be started (see `error`).
    public var reason: ExitReason?
    public var output: String
    public var timedOut: Bool
    public var error: String?
    /// The shell-style status: exit code, 128+signal, -1 when it did not start, -2 on timeout.
    public var status: Int32 {
        if timedOut { return -2 }
        return reason?.shellStatus ?? -1
    }
}

func readAll(fd: Int32, limit: Int) -> String {
    var data = [UInt8]()
    var buffer = [UInt8](repeating: 0, count: 4096)
    while true {
        let n = read(fd, &buffer, buffer.count)
        if n > 0 {
            if data.count < limit { data.append(contentsOf: buffer[0..<min(n, limit - data.count)]) }
        } else if n < 0, errno == EINTR {
            continue
        } else {
            break
        }
    }
    close(fd)
    return String(decoding: data, as: UTF8.self)
}

private func withCStrings<R>(_ strings: [String], _ body: (UnsafePointer<UnsafeMutablePointer<CChar>?>?) -> R) -> R {
    var pointers: [UnsafeMutablePointer<CChar>?] = strings.map { strdup($0) }
    pointers.append(nil)
    defer { for p in pointers { free(p) } }
    return pointers.withUnsafeBufferPointer { buffer in
        // The C side takes `char *const *` (never empty: the array ends with its NULL).
        body(buffer.baseAddress)
    }
}

private func withOptionalCString<R>(_ string: String?, _ body: (UnsafePointer<CChar>?) -> R) -> R {
    guard let string else { return body(nil) }
    return string.withCString { body($0) }
}

private final class Flag: Sendable {
    private let state = Mutex(false)
    func set() { state.withLock { $0 = true } }
    var value: Bool { state.withLock { $0 } }
}

/// A dedicated thread that performs every fork, so a child's parent-death signal is tied to a thread that
/// lives as long as the process.
private final class ForkThread: @unchecked Sendable {
    // @unchecked: `job`, `result` and `lastErrno` are only touched with `condition` locked.
    private let condition = NSCondition()
    private var job: (() -> Int32)?
    private var result: Int32?
    private(set) var lastErrno: Int32 = 0
    private var started = false

    func run(_ body: @escaping () -> Int32) -> Int32 {
        condition.lock()
        defer { condition.unlock() }
        if !started {
            started = true
            let thread = Thread { [self] in
                ThreadName.set("legion-spawner")
                loop()
            }
            thread.start()
        }
        while job != nil || result != nil { condition.wait() }
        job = body
        condition.broadcast()
        while result == nil { condition.wait() }
        let value = result ?? -1
        result = nil
        condition.broadcast()
        return value
    }

    private func loop() {
        condition.lock()
        while true {
            while job == nil { condition.wait() }
            let body = job
            job = nil
            let value = body?() ?? -1
            lastErrno = errno
            result = value
            condition.broadcast()
        }
    }
}

/// Reads a pipe to EOF on a thread of its own.
private final class OutputReader: @unchecked Sendable {
    // @unchecked: `text` is written by the reader thread before it signals `done`, and read only after.
    private var text = ""
    private let done = DispatchSemaphore(value: 0)
    private var started = false

    func start(fd: Int32) {
        started = true
        let thread = Thread { [self] in
            ThreadName.set("legion-output")
            text = readAll(fd: fd, limit: 64 * 1024)
            done.signal()
        }
        thread.start()
    }

    /// The output (waits up to 2 s for EOF after the child exited: grandchildren may still hold the pipe).
    func finish() -> String {
        guard started else { return "" }
        return done.wait(timeout: .now() + 2) == .success ? text : ""
    }
}
