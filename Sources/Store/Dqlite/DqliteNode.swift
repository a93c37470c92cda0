import CDqlite
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A dqlite node embedded in this process (Debian's libdqlite 1.11.1).
///
/// `@unchecked Sendable`: the `dqlite_node *` is only touched by create/start/stop/destroy, which this class
/// serialises with a lock; dqlite's own loop thread owns the node between start and stop.
public final class DqliteNode: @unchecked Sendable {
    public struct Settings: Sendable {
        public var id: UInt64
        public var address: String
        public var dataDir: String
        /// Round-trip estimate given to dqlite: heartbeat = 1.5×, election timeout = 15× (50 ms → 750 ms).
        public var latencyMs: UInt32 = 50
        /// Snapshot every `snapshotThreshold` entries, keeping `snapshotTrailing` entries of log behind it.
        public var snapshotThreshold: UInt32 = 512
        public var snapshotTrailing: UInt32 = 1024

        public init(id: UInt64, address: String, dataDir: String) {
            self.id = id
            self.address = address
            self.dataDir = dataDir
        }
    }

    public let settings: Settings
    private let lock = NSLock()
    private var node: OpaquePointer?
    private var running = false

    public init(_ settings: Settings) throws(StoreError) {
        self.settings = settings
        // A peer or client that disconnects mid-write must not kill the process (dqlite never sets MSG_NOSIGNAL).
        signal(SIGPIPE, SIG_IGN)
        do {
            try FileManager.default.createDirectory(atPath: settings.dataDir, withIntermediateDirectories: true)
        } catch {
            throw .configuration("cannot create the store directory \(settings.dataDir): \(error.localizedDescription)")
        }
        var created: OpaquePointer?
        let rc = dqlite_node_create(settings.id, settings.address, settings.dataDir, &created)
        guard rc == 0, let created else {
            let detail = created.flatMap { dqlite_node_errmsg($0).map { String(cString: $0) } } ?? "code \(rc)"
            if let created { dqlite_node_destroy(created) }
            throw .configuration("dqlite could not create node \(settings.id) at \(settings.dataDir): \(detail)")
        }
        node = created
        func check(_ rc: Int32, _ what: String) throws(StoreError) {
            if rc != 0 {
                let detail = dqlite_node_errmsg(created).map { String(cString: $0) } ?? ""
                dqlite_node_destroy(created)
                node = nil
                throw .configuration("dqlite \(what) failed (code \(rc)) \(detail); check [store] in the node config")
            }
        }
        try check(dqlite_node_set_bind_address(created, settings.address), "bind to \(settings.address)")
        try check(dqlite_node_set_connect_func(created, dqliteNoDelayConnect, nil), "set_connect_func")
        try check(dqlite_node_set_network_latency_ms(created, settings.latencyMs), "set_network_latency_ms(\(settings.latencyMs))")
        try check(dqlite_node_set_snapshot_params(created, settings.snapshotThreshold, settings.snapshotTrailing),
                  "set_snapshot_params(\(settings.snapshotThreshold), \(settings.snapshotTrailing))")
    }

    /// Starts dqlite's loop thread (blocks 40-540 ms; run off the cooperative pool).
    public func start() async throws(StoreError) {
        let result: Result<Void, StoreError> = await runOnThread { [self] in
            lock.lock()
            defer { lock.unlock() }
            guard let node, !running else { return .success(()) }
            // dqlite's loop thread inherits this thread's name: "dqlite" in top -H and bench-idle.
            try? "dqlite".write(toFile: "/proc/thread-self/comm", atomically: false, encoding: .utf8)
            let rc = dqlite_node_start(node)
            if rc != 0 {
                let detail = dqlite_node_errmsg(node).map { String(cString: $0) } ?? ""
                return .failure(.configuration("dqlite node \(settings.id) did not start on \(settings.address) (code \(rc)): \(detail); is the port in use or the data directory from another node id?"))
            }
            running = true
            return .success(())
        }
        try result.get()
    }

    /// Stops the loop thread (joins it; tens of ms).
    public func stop() async {
        _ = await runOnThread { [self] () -> Result<Void, StoreError> in
            lock.lock()
            defer { lock.unlock() }
            if let node, running {
                dqlite_node_stop(node)
                running = false
            }
            return .success(())
        }
    }

    func withNode(_ body: (OpaquePointer) throws(StoreError) -> Void) throws(StoreError) {
        lock.lock()
        defer { lock.unlock() }
        guard let node else { throw .configuration("the dqlite node was destroyed") }
        guard !running else { throw .configuration("stop the node first") }
        try body(node)
    }

    deinit {
        if let node {
            if running { dqlite_node_stop(node) }
            dqlite_node_destroy(node)
        }
    }

    /// dqlite's id for an address (as `dqlite_generate_node_id` computes it).
    public static func generateID(address: String) -> UInt64 { dqlite_generate_node_id(address) }
}

/// Runs blocking C calls on a fresh thread so the Swift concurrency pool is never blocked.
func runOnThread<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T {
    await withCheckedContinuation { continuation in
        let thread = Thread { continuation.resume(returning: body()) }
        thread.stackSize = 1 << 20
        thread.start()
    }
}

/// Raft peer connections: IPv4 connect with a 1 s timeout and TCP_NODELAY (dqlite 1.11.1's default connect has
/// neither: Nagle + delayed ACK cost 40 ms stalls, and an unreachable peer blocks a libuv worker indefinitely).
private let dqliteNoDelayConnect: @convention(c) (UnsafeMutableRawPointer?, UnsafePointer<CChar>?, UnsafeMutablePointer<Int32>?) -> Int32 = { _, address, fdOut in
    guard let address, let fdOut else { return 1 }
    let text = String(cString: address)
    guard let colon = text.lastIndex(of: ":"), let port = UInt16(text[text.index(after: colon)...]) else { return 1 }
    var sin = sockaddr_in()
    sin.sin_family = sa_family_t(AF_INET)
    sin.sin_port = port.bigEndian
    guard inet_pton(AF_INET, String(text[..<colon]), &sin.sin_addr) == 1 else { return 1 }
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
    guard fd >= 0 else { return 1 }
    let rc = withUnsafePointer(to: &sin) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    if rc != 0 {
        guard errno == EINPROGRESS else { close(fd); return 1 }
        var pfd = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
        guard poll(&pfd, 1, 1000) == 1 else { close(fd); return 1 }
        var soError: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        guard getsockopt(fd, SOL_SOCKET, SO_ERROR, &soError, &length) == 0, soError == 0 else { close(fd); return 1 }
    }
    // Back to blocking: dqlite/libuv takes the descriptor as a connected stream.
    let flags = fcntl(fd, F_GETFL)
    _ = fcntl(fd, F_SETFL, flags & ~O_NONBLOCK)
    var one: Int32 = 1
    _ = setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
    fdOut.pointee = fd
    return 0
}

extension DqliteNode {
    /// Rewrites the Raft configuration so this (stopped) node is the only voter (dqlite_node_recover_ext).
    public func recover(asLoneVoter: Void) throws(StoreError) {
        try withNode { node throws(StoreError) in
            let rc = settings.address.withCString { address -> Int32 in
                var info = dqlite_node_info_ext()
                info.size = UInt64(MemoryLayout<dqlite_node_info_ext>.size)
                info.id = settings.id
                info.address = UInt64(UInt(bitPattern: address))
                info.dqlite_role = 0
                return dqlite_node_recover_ext(node, &info, 1)
            }
            if rc != 0 {
                throw .configuration("recovery failed (code \(rc)): \(dqlite_node_errmsg(node).map { String(cString: $0) } ?? "")")
            }
        }
    }
}
