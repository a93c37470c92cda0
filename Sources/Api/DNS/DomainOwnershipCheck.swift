import Foundation
import NIOPosix

/// Proves a customer owns a domain the way uwsgi.it did: a TXT record `uwsgi:<customer uuid>` on the name or
/// on any parent (a record on `example.com` authorises `www.example.com`), stopping before a single label.
///
/// Queries go to one configurable resolver (`[api] resolver`, default: the first `nameserver` of
/// `/etc/resolv.conf`) rather than to the domain's own name servers: an operator points it at a validating
/// recursive resolver, and tests at a local dnsmasq.
public struct DomainOwnershipCheck: Sendable {
    public var resolver: String
    public var port: Int
    public var timeoutMs: Int

    public init(resolver: String, port: Int = 53, timeoutMs: Int = 3000) {
        self.resolver = resolver
        self.port = port
        self.timeoutMs = timeoutMs
    }

    /// `host[:port]` (IPv4) or the first nameserver of resolv.conf when nil.
    public static func configured(_ address: String?) -> DomainOwnershipCheck {
        if let address {
            let parts = address.split(separator: ":")
            if parts.count == 2, let port = Int(parts[1]) { return .init(resolver: String(parts[0]), port: port) }
            return .init(resolver: address)
        }
        let conf = (try? String(contentsOfFile: "/etc/resolv.conf", encoding: .utf8)) ?? ""
        for line in conf.split(separator: "\n") {
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            if fields.count >= 2, fields[0] == "nameserver", !fields[1].contains(":") { return .init(resolver: String(fields[1])) }
        }
        return .init(resolver: "127.0.0.1")
    }

    /// The names whose TXT records may prove ownership of `domain`, most specific first.
    public static func candidates(for domain: String) -> [String] {
        var labels = domain.split(separator: ".").map(String.init)
        var names: [String] = []
        while labels.count >= 2 {
            names.append(labels.joined(separator: "."))
            labels.removeFirst()
        }
        return names
    }

    public enum Outcome: Sendable, Equatable {
        case proven
        case missing
        /// The resolver did not answer or answered with an error.
        case unreachable(String)
    }

    public func check(domain: String, customerUUID: String) async -> Outcome {
        let expected = "uwsgi:" + customerUUID
        var lastError: String?
        for name in Self.candidates(for: domain) {
            do {
                let texts = try await txt(name)
                if texts.contains(where: { $0.contains(expected) }) { return .proven }
            } catch {
                lastError = "\(error)"
            }
        }
        if let lastError { return .unreachable(lastError) }
        return .missing
    }

    struct ResolverError: Error, CustomStringConvertible {
        var description: String
    }

    /// One TXT query over UDP (blocking socket on the NIO thread pool, with a receive timeout).
    public func txt(_ name: String) async throws -> [String] {
        let id = UInt16.random(in: 0...UInt16.max)
        guard let query = DNSMessage.query(id: id, name: name) else { throw ResolverError(description: "\(name) cannot be encoded as a DNS name") }
        let resolver = resolver, port = port, timeoutMs = timeoutMs
        let answer: [UInt8] = try await NIOThreadPool.singleton.runIfActive {
            let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
            guard fd >= 0 else { throw ResolverError(description: "cannot open a UDP socket (errno \(errno))") }
            defer { close(fd) }
            var timeout = timeval(tv_sec: timeoutMs / 1000, tv_usec: (timeoutMs % 1000) * 1000)
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_port = in_port_t(UInt16(port).bigEndian)
            guard inet_pton(AF_INET, resolver, &address.sin_addr) == 1 else {
                throw ResolverError(description: "api.resolver \(resolver) is not an IPv4 address")
            }
            let sent = withUnsafePointer(to: &address) { pointer in
                pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { sendto(fd, query, query.count, 0, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            guard sent == query.count else { throw ResolverError(description: "cannot send to the resolver \(resolver):\(port) (errno \(errno))") }
            var buffer = [UInt8](repeating: 0, count: 4096)
            while true {
                let received = recv(fd, &buffer, buffer.count, 0)
                guard received > 0 else { throw ResolverError(description: "the resolver \(resolver):\(port) did not answer within \(timeoutMs) ms") }
                let bytes = Array(buffer[0..<received])
                if bytes.count >= 2, UInt16(bytes[0]) << 8 | UInt16(bytes[1]) != id { continue }  // a stale answer
                return bytes
            }
        }
        return try DNSMessage.txtStrings(answer: answer, id: id)
    }
}
