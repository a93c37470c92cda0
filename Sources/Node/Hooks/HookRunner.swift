import Foundation
import Logging
import Supervisor

/// Runs operator hooks (`sh -c COMMAND`) one at a time, in order, off the protocol path: a slow
/// hook never delays announces (a weakness of uWSGI, whose hooks run in its Legion thread).
public final class HookRunner: Sendable {
    public struct Job: Sendable {
        public var event: String
        public var commands: [String]
        public var environment: [String: String]
    }

    private let continuation: AsyncStream<Job>.Continuation
    private let stream: AsyncStream<Job>
    private let logger: Logger
    private let timeoutSeconds: Double

    public init(logger: Logger, timeoutSeconds: Double = 60) {
        (stream, continuation) = AsyncStream<Job>.makeStream()
        self.logger = logger
        self.timeoutSeconds = timeoutSeconds
    }

    public func enqueue(event: String, commands: [String], environment: [String: String]) {
        guard !commands.isEmpty else { return }
        continuation.yield(Job(event: event, commands: commands, environment: environment))
    }

    /// Stops accepting jobs; `run()` returns after the queued ones.
    public func finish() { continuation.finish() }

    /// Consumes the queue until `finish()`.
    public func run() async {
        for await job in stream {
            for command in job.commands {
                let status = await Self.runShell(command, environment: job.environment, timeoutSeconds: timeoutSeconds)
                if status == 0 {
                    logger.info("hook finished", metadata: ["event": "\(job.event)", "command": "\(command)"])
                } else {
                    logger.error("hook failed; fix the command or its permissions", metadata: [
                        "event": "\(job.event)", "command": "\(command)", "status": "\(status)",
                    ])
                }
            }
        }
    }

    /// Runs `sh -c command` with extra environment variables; returns the exit status (-1 if it
    /// could not start, -2 on timeout).
    public static func runShell(_ command: String, environment: [String: String], timeoutSeconds: Double) async -> Int32 {
        var spec = SpawnSpec.shell(command, extraEnvironment: environment)
        spec.parentDeathSignal = nil   // a hook (e.g. releasing a cloud IP) finishes even if the node dies meanwhile
        return await ProcessSupervisor.shared.run(spec, timeoutSeconds: timeoutSeconds).status
    }
}
