#if canImport(Glibc)
import Glibc
#endif

/// A tiny blocking HTTP/1.0 GET with a hard deadline, for CLI status checks and probes.
/// (No client library needed for one request to a loopback port.)
public enum HTTPProbe {
    public struct Response: Sendable {
        public var status: Int
        public var body: String
    }

    /// `hostHeader`: the Host to ask for (default: the address itself).
    public static func get(host: String, port: Int, path: String, timeoutMs: Int = 500, hostHeader: String? = nil) -> Response? {
        if case .success(let response) = fetch(host: host, port: port, path: path, timeoutMs: timeoutMs, hostHeader: hostHeader) {
            return response
        }
        return nil
    }

    /// Why a probe got no answer, in a few words (for drill reports: "connect: Connection refused", "timed out reading").
    public struct Failure: Error, Sendable, CustomStringConvertible {
        public var description: String
    }

    /// The same GET, saying why it failed.
    public static func fetch(host: String, port: Int, path: String, timeoutMs: Int = 500, hostHeader: String? = nil) -> Result<Response, Failure> {
        #if canImport(Glibc)
        func failed(_ what: String, _ code: Int32? = errno) -> Result<Response, Failure> {
            .failure(Failure(description: code.map { "\(what): \(String(cString: strerror($0)))" } ?? what))
        }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        guard inet_pton(AF_INET, host == "localhost" ? "127.0.0.1" : host, &addr.sin_addr) == 1 else { return failed("not an IPv4 address: \(host)", nil) }
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return failed("socket") }
        defer { close(fd) }
        let flags = fcntl(fd, F_GETFL, 0)
        _ = fcntl(fd, F_SETFL, flags | O_NONBLOCK)
        let deadline = monotonicMs() + timeoutMs
        let rc = withUnsafePointer(to: &addr) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        if rc != 0 {
            guard errno == EINPROGRESS else { return failed("connect") }
            guard wait(fd, events: Int16(POLLOUT), deadline: deadline) else { return failed("timed out connecting", nil) }
            var err: Int32 = 0
            var len = socklen_t(MemoryLayout<Int32>.size)
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len)
            guard err == 0 else { return failed("connect", err) }
        }
        let request = Array("GET \(path) HTTP/1.0\r\nHost: \(hostHeader ?? "\(host):\(port)")\r\nConnection: close\r\n\r\n".utf8)
        var sent = 0
        while sent < request.count {
            guard wait(fd, events: Int16(POLLOUT), deadline: deadline) else { return failed("timed out sending", nil) }
            let n = request[sent...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard n > 0 else { return failed("send") }
            sent += n
        }
        var data: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while data.count < 1_048_576 {
            guard wait(fd, events: Int16(POLLIN), deadline: deadline) else { return failed("timed out reading after \(data.count) bytes", nil) }
            let n = chunk.withUnsafeMutableBytes { Glibc.recv(fd, $0.baseAddress, $0.count, 0) }
            if n == 0 { break }
            guard n > 0 else { return failed("read after \(data.count) bytes") }
            data.append(contentsOf: chunk[0..<n])
        }
        let text = String(decoding: data, as: UTF8.self)
        guard text.hasPrefix("HTTP/"), let space = text.firstIndex(of: " ") else {
            return failed(data.isEmpty ? "closed without an answer" : "not an HTTP answer (\(data.count) bytes)", nil)
        }
        let code = Int(text[text.index(after: space)...].prefix(3)) ?? 0
        let body = text.range(of: "\r\n\r\n").map { String(text[$0.upperBound...]) } ?? ""
        return .success(Response(status: code, body: body))
        #else
        return .failure(Failure(description: "HTTP probes need Glibc"))
        #endif
    }

    #if canImport(Glibc)
    static func monotonicMs() -> Int { Int(SystemClock.monotonicNanos() / 1_000_000) }

    static func wait(_ fd: Int32, events: Int16, deadline: Int) -> Bool {
        let remaining = deadline - monotonicMs()
        guard remaining > 0 else { return false }
        var p = pollfd(fd: fd, events: events, revents: 0)
        return poll(&p, 1, Int32(remaining)) == 1
    }
    #endif
}
