import NIOPosix

/// Runs blocking or CPU-heavy work (PBKDF2, a DNS socket) on NIO's shared thread pool.
enum NIOThreadPoolRunner {
    static func run<T: Sendable>(_ body: @Sendable @escaping () throws -> T) async throws -> T {
        try await NIOThreadPool.singleton.runIfActive(body)
    }
}
