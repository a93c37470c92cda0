#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Supervisor

/// A tiny watchdog process that fences the failover IP when its node cannot: if the node dies
/// (SIGKILL: the pipe closes, or we are re-parented) or freezes (SIGSTOP: the lease deadline
/// passes without renewal), the fence removes the address itself within a few milliseconds.
/// Without it a killed node's kernel would keep the VIP and keep answering ARP for it.
///
/// Protocol on its standard input, one line each: `hold DEADLINE_NS` (CLOCK_MONOTONIC, shared by
/// all processes of the machine) or `idle` (the node released the IP itself).
public enum VIPFence {
    /// Command line of the fence for an IP; run as `legion vip-fence …`.
    public static func arguments(address: String, prefixLength: Int, interface: String, parent: Int32) -> [String] {
        ["vip-fence", "--address", "\(address)/\(prefixLength)", "--interface", interface, "--parent", String(parent)]
    }

    /// Runs until the node goes away (then releases the IP if it was held) — never returns early
    /// on bad input: unknown lines are ignored.
    public static func run(cidr: String, interface: String, parent: Int32, release: (String) -> Void) {
        #if canImport(Glibc)
        var deadline: UInt64? = nil
        var buffer: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 512)
        while true {
            let now = SystemClock.monotonicNanos()
            if let d = deadline, now >= d {
                release("lease deadline passed without renewal (node frozen or stalled)")
                deadline = nil
            }
            if getppid() != parent {
                if deadline != nil { release("node process is gone") }
                return
            }
            let waitMs: Int32 = deadline.map { Int32(min(max(($0 - now) / 1_000_000, 1), 10)) } ?? 10
            var p = pollfd(fd: 0, events: Int16(POLLIN), revents: 0)
            let ready = poll(&p, 1, waitMs)
            guard ready > 0 else { continue }
            let n = read(0, &chunk, chunk.count)
            if n <= 0 {
                if deadline != nil { release("node process is gone (pipe closed)") }
                return
            }
            buffer.append(contentsOf: chunk[0..<n])
            while let newline = buffer.firstIndex(of: 0x0a) {
                let line = String(decoding: buffer[..<newline], as: UTF8.self)
                buffer.removeSubrange(...newline)
                let parts = line.split(separator: " ")
                if parts.first == "hold", parts.count == 2, let d = UInt64(parts[1]) {
                    deadline = d
                } else if parts.first == "idle" {
                    deadline = nil
                }
            }
            if buffer.count > 4096 { buffer.removeAll() }
        }
        #endif
    }
}

/// The node's side of the fence: starts `legion vip-fence` and feeds it deadlines.
final class VIPFenceClient: Sendable {
    private let child: ChildProcess
    private let input: FileHandle

    init?(executable: String, address: String, prefixLength: Int, interface: String) {
        guard let pipe = try? ProcessSupervisor.makePipe() else { return nil }
        var spec = SpawnSpec(executable: executable,
                             arguments: VIPFence.arguments(address: address, prefixLength: prefixLength, interface: interface,
                                                           parent: ProcessInfo.processInfo.processIdentifier))
        spec.stdin = pipe.read
        // The fence must outlive the node (it releases the VIP when the node dies), even a kill of the node's
        // whole process group: it leads a group of its own and gets no parent-death signal.
        spec.parentDeathSignal = nil
        guard let child = try? ProcessSupervisor.shared.spawn(spec) else {
            close(pipe.read)
            close(pipe.write)
            return nil
        }
        close(pipe.read)
        self.child = child
        input = FileHandle(fileDescriptor: pipe.write, closeOnDealloc: true)
    }

    func hold(until deadline: UInt64) { send("hold \(deadline)\n") }
    func idle() { send("idle\n") }

    private func send(_ line: String) {
        try? input.write(contentsOf: Data(line.utf8))
    }

    func stop() {
        idle()
        try? input.close()
        _ = child.waitBlocking(timeoutSeconds: 10)
    }
}
