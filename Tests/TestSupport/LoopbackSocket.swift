import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A socket bound to 127.0.0.1 on a port the kernel picks (port 0), for tests that need a free port or a listener.
public enum LoopbackSocket {
    /// A bound socket of `type` (SOCK_STREAM, SOCK_DGRAM) and its port; the caller closes `fd`.
    public static func bind(_ type: __socket_type) -> (fd: Int32, port: Int) {
        let fd = socket(AF_INET, Int32(type.rawValue), 0)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.bind(fd, $0, len) } }
        _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
        return (fd, Int(UInt16(bigEndian: addr.sin_port)))
    }
}
