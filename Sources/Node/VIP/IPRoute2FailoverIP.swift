#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Supervisor
import Logging

/// Moves the VIP with `ip addr add/del` on a configured interface and announces it at once with
/// gratuitous ARP sent from this process (a freshly started `arping` can lose the race; see the
/// netlab notes). Needs CAP_NET_ADMIN and CAP_NET_RAW (root, or a network namespace you own).
public struct IPRoute2FailoverIP: FailoverIPDriver {
    public let name = "iproute2"
    public let address: String
    public let prefixLength: Int
    public let interface: String
    let logger: Logger
    let fence: VIPFenceClient?

    /// Starts the fence process (`legion vip-fence`), which removes the VIP if this process dies
    /// or freezes while holding it.
    public init(address: String, prefixLength: Int, interface: String, logger: Logger) {
        self.address = address
        self.prefixLength = prefixLength
        self.interface = interface
        self.logger = logger
        let executable = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        fence = VIPFenceClient(executable: executable, address: address, prefixLength: prefixLength, interface: interface)
        if fence == nil {
            logger.error("could not start the VIP fence process; a killed or frozen node would keep the VIP until restarted")
        }
    }

    public func leaseChanged(heldUntil: UInt64?) {
        if let heldUntil { fence?.hold(until: heldUntil) } else { fence?.idle() }
    }

    public func close() { fence?.stop() }

    var cidr: String { "\(address)/\(prefixLength)" }

    public func acquire() async throws {
        if try await !isPresent() {
            let (status, output) = try await Self.ip(["-4", "addr", "add", cidr, "dev", interface])
            if status != 0, !output.contains("File exists") {
                throw FailoverIPError("ip addr add \(cidr) dev \(interface) failed (\(status)): \(output.trimmingCharacters(in: .whitespacesAndNewlines)); check the interface name and that the node runs as root")
            }
        }
        guard try await isPresent() else {
            throw FailoverIPError("\(cidr) is not on \(interface) after ip addr add; check for another tool removing it")
        }
        do {
            try GratuitousARP.send(address: address, interface: interface)
        } catch {
            logger.warning("gratuitous ARP failed; neighbours will learn the VIP only when their ARP cache expires", metadata: ["error": "\(error)"])
        }
        // A second burst shortly after covers switches and hosts that missed the first.
        let address = self.address, interface = self.interface
        Task {
            try? await Task.sleep(for: .milliseconds(200))
            try? GratuitousARP.send(address: address, interface: interface)
        }
    }

    public func release() async throws {
        guard try await isPresent() else { return }
        let (status, output) = try await Self.ip(["-4", "addr", "del", cidr, "dev", interface])
        if status != 0, !output.contains("Cannot assign") {
            throw FailoverIPError("ip addr del \(cidr) dev \(interface) failed (\(status)): \(output)")
        }
    }

    func isPresent() async throws -> Bool {
        let (status, output) = try await Self.ip(["-o", "-4", "addr", "show", "dev", interface])
        guard status == 0 else {
            throw FailoverIPError("interface '\(interface)' not found (ip addr show failed: \(output.trimmingCharacters(in: .whitespacesAndNewlines))); fix vip.interface")
        }
        return output.contains(" \(address)/")
    }

    static func ip(_ arguments: [String]) async throws -> (Int32, String) {
        let path = FileManager.default.fileExists(atPath: "/usr/sbin/ip") ? "/usr/sbin/ip" : "/sbin/ip"
        let result = await ProcessSupervisor.shared.run(SpawnSpec(executable: path, arguments: arguments), timeoutSeconds: 10, captureOutput: true)
        if let error = result.error { throw FailoverIPError("cannot run ip (\(error)); install iproute2") }
        return (result.status, result.output)
    }
}

/// Gratuitous ARP (request and reply form, sender = target = VIP) on a raw packet socket.
enum GratuitousARP {
    static func send(address: String, interface: String) throws {
        #if canImport(Glibc)
        var addr = in_addr()
        guard inet_pton(AF_INET, address, &addr) == 1 else { throw FailoverIPError("bad IPv4 address \(address)") }
        let ifindex = if_nametoindex(interface)
        guard ifindex != 0 else { throw FailoverIPError("no interface \(interface)") }
        let macText = (try? String(contentsOfFile: "/sys/class/net/\(interface)/address", encoding: .utf8)) ?? ""
        let mac = macText.trimmingCharacters(in: .whitespacesAndNewlines).split(separator: ":").compactMap { UInt8($0, radix: 16) }
        guard mac.count == 6 else { throw FailoverIPError("cannot read the MAC address of \(interface)") }
        let ethPARP = UInt16(0x0806)
        let fd = socket(AF_PACKET, Int32(SOCK_RAW.rawValue), Int32(ethPARP.bigEndian))
        guard fd >= 0 else { throw FailoverIPError("raw socket failed (errno \(errno)); gratuitous ARP needs CAP_NET_RAW") }
        defer { close(fd) }
        let ip = withUnsafeBytes(of: addr.s_addr) { Array($0) }
        for op: UInt8 in [1, 2] {
            var frame: [UInt8] = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff] + mac + [0x08, 0x06]
            frame += [0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, op]
            frame += mac + ip
            frame += (op == 1 ? [0, 0, 0, 0, 0, 0] : [0xff, 0xff, 0xff, 0xff, 0xff, 0xff]) + ip
            // struct sockaddr_ll (linux/if_packet.h), built by hand: Glibc's module map omits it.
            var sll = [UInt8](repeating: 0, count: 20)
            let family = UInt16(AF_PACKET)
            sll[0] = UInt8(family & 0xff); sll[1] = UInt8(family >> 8)
            sll[2] = 0x08; sll[3] = 0x06  // protocol, network byte order
            withUnsafeBytes(of: Int32(ifindex)) { for i in 0..<4 { sll[4 + i] = $0[i] } }
            sll[11] = 6  // halen
            for i in 0..<6 { sll[12 + i] = 0xff }
            let sent = sll.withUnsafeBytes { raw in
                sendto(fd, frame, frame.count, 0, raw.baseAddress?.assumingMemoryBound(to: sockaddr.self), socklen_t(raw.count))
            }
            guard sent == frame.count else { throw FailoverIPError("sendto failed (errno \(errno))") }
        }
        #endif
    }
}
