/// Operator scripts (e.g. a cloud provider's floating-IP API), run only while the lease is held:
/// `acquire` on becoming Lord, `release` on resigning. Environment: LEGION_VIP, LEGION_NODE.
public struct CommandFailoverIP: FailoverIPDriver {
    public let name = "command"
    public let acquireCommand: String
    public let releaseCommand: String
    public let environment: [String: String]
    public let timeoutSeconds: Double

    public init(acquire: String, release: String, environment: [String: String], timeoutSeconds: Double = 10) {
        acquireCommand = acquire
        releaseCommand = release
        self.environment = environment
        self.timeoutSeconds = timeoutSeconds
    }

    public func acquire() async throws {
        let status = await HookRunner.runShell(acquireCommand, environment: environment, timeoutSeconds: timeoutSeconds)
        guard status == 0 else { throw FailoverIPError("vip.acquire command exited with \(status): \(acquireCommand)") }
    }

    public func release() async throws {
        let status = await HookRunner.runShell(releaseCommand, environment: environment, timeoutSeconds: timeoutSeconds)
        guard status == 0 else { throw FailoverIPError("vip.release command exited with \(status): \(releaseCommand)") }
    }
}
