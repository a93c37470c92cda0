#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Pure scanners for the router's fast path: find an HTTP/1.x request head (or a backend's
/// response head) in raw bytes and note the few facts routing needs, as offsets — no copies,
/// no allocations besides the caller's reusable header list.
///
/// The fast path serves only plain, unambiguous requests. Anything else — a malformed or
/// oversized head, bare LF line ends, obsolete line folding, `Transfer-Encoding`, upgrades
/// and WebSockets, `Expect`, repeated header names (merged by CGI name), a missing Host —
/// is `.general`: the connection goes to the general (SwiftNIO) router, which answers it.
enum HTTPHeadScanner {
    /// One header of a request head, as offsets into the scanned bytes.
    struct Header: Equatable {
        var name: Range<Int>
        var value: Range<Int>
        /// X-Forwarded-For / X-Forwarded-Proto: replaced by the router's own.
        var replaced = false
    }

    struct Request: Equatable {
        /// Bytes up to and including the blank line.
        var headLength: Int
        var method: Range<Int>
        var uri: Range<Int>
        /// HTTP/1.`minor`.
        var minor: UInt8
        var host: Range<Int>
        var contentLength: Int
        var keepAlive: Bool
        /// The last X-Forwarded-For value, extended with the client's address.
        var forwardedFor: Range<Int>?
    }

    enum RequestScan: Equatable {
        case incomplete
        case complete(Request)
        case general(String)
    }

    struct Response: Equatable {
        var headLength: Int
        var status: Int
        /// Offset of the byte after `HTTP/1.x` in the status line.
        var statusRest: Int
        var contentLength: Int?
        var chunked: Bool
        /// Connection or Keep-Alive headers, which the router replaces.
        var hasConnectionHeaders: Bool
        var minor: UInt8
    }

    enum ResponseScan: Equatable {
        case incomplete
        case complete(Response)
        case invalid(String)
    }

    /// Largest request head the fast path waits for (the general path answers larger ones).
    static let maxHead = 64 * 1024
    /// Most header lines the fast path takes (it compares names pairwise; the general path takes more).
    static let maxHeaders = 64
    /// Largest Content-Length body collected by the fast path (larger uploads are streamed by the general path).
    static let maxFastBody = 1 << 20

    @inline(__always) static func isToken(_ b: UInt8) -> Bool {
        switch b {
        case 0x30...0x39, 0x41...0x5A, 0x61...0x7A: return true
        case 0x21, 0x23, 0x24, 0x25, 0x26, 0x27, 0x2A, 0x2B, 0x2D, 0x2E, 0x5E, 0x5F, 0x60, 0x7C, 0x7E: return true
        default: return false
        }
    }

    /// ASCII case-insensitive comparison with a lowercase literal.
    @inline(__always) static func equalsLower(_ p: UnsafeRawBufferPointer, _ r: Range<Int>, _ lower: StaticString) -> Bool {
        guard r.count == lower.utf8CodeUnitCount else { return false }
        let l = lower.utf8Start
        var i = 0
        while i < r.count {
            var b = p[r.lowerBound + i]
            if b >= 0x41 && b <= 0x5A { b |= 0x20 }
            if b != l[i] { return false }
            i += 1
        }
        return true
    }

    /// Byte-exact comparison with a literal.
    @inline(__always) static func equals(_ p: UnsafeRawBufferPointer, _ r: Range<Int>, _ literal: StaticString) -> Bool {
        guard r.count == literal.utf8CodeUnitCount, let base = p.baseAddress else { return false }
        return memcmp(base + r.lowerBound, literal.utf8Start, r.count) == 0
    }

    /// Same CGI variable name (`X-A` and `x_a` are both `HTTP_X_A`).
    static func sameCGIName(_ p: UnsafeRawBufferPointer, _ a: Range<Int>, _ b: Range<Int>) -> Bool {
        guard a.count == b.count else { return false }
        var i = 0
        while i < a.count {
            var x = p[a.lowerBound + i], y = p[b.lowerBound + i]
            if x >= 0x61 && x <= 0x7A { x &= 0xDF }
            if y >= 0x61 && y <= 0x7A { y &= 0xDF }
            if x == 0x2D { x = 0x5F }
            if y == 0x2D { y = 0x5F }
            if x != y { return false }
            i += 1
        }
        return true
    }

    /// Finds the next `\n` at or after `from` (below `end`); nil if none.
    @inline(__always) static func lineEnd(_ p: UnsafeRawBufferPointer, from: Int, end: Int) -> Int? {
        guard from < end, let base = p.baseAddress else { return nil }
        guard let hit = memchr(base + from, 0x0A, end - from) else { return nil }
        return base.distance(to: UnsafeRawPointer(hit))
    }

    /// Scans a request head at the start of `p`; `headers` is cleared and filled.
    static func scanRequest(_ p: UnsafeRawBufferPointer, headers: inout [Header]) -> RequestScan {
        headers.removeAll(keepingCapacity: true)
        let n = p.count
        let limit = min(n, maxHead)
        guard n > 0 else { return .incomplete }
        guard isToken(p[0]) else { return .general("request does not start with a method") }
        // Request line.
        guard let first = lineEnd(p, from: 0, end: limit) else {
            return n >= maxHead ? .general("request line over \(maxHead) bytes") : .incomplete
        }
        guard first > 0, p[first - 1] == 0x0D else { return .general("bare LF") }
        let lineStop = first - 1
        var i = 0
        while i < lineStop, isToken(p[i]) { i += 1 }
        guard i > 0, i < lineStop, p[i] == 0x20 else { return .general("bad method") }
        let method = 0..<i
        // Common methods only (the general router's parser refuses unknown ones; it takes the rarer known ones).
        guard equals(p, method, "GET") || equals(p, method, "POST") || equals(p, method, "HEAD") || equals(p, method, "PUT")
              || equals(p, method, "DELETE") || equals(p, method, "OPTIONS") || equals(p, method, "PATCH") else {
            return .general("method")
        }
        i += 1
        let uriStart = i
        guard i < lineStop, p[i] == 0x2F else { return .general("not an origin-form target") }
        while i < lineStop, p[i] > 0x20, p[i] < 0x7F { i += 1 }
        guard i > uriStart, i < lineStop, p[i] == 0x20 else { return .general("bad request target") }
        let uri = uriStart..<i
        i += 1
        guard lineStop - i == 8, p[i] == 0x48, p[i + 1] == 0x54, p[i + 2] == 0x54, p[i + 3] == 0x50, p[i + 4] == 0x2F,
              p[i + 5] == 0x31, p[i + 6] == 0x2E, p[i + 7] == 0x30 || p[i + 7] == 0x31 else {
            return .general("not HTTP/1.0 or HTTP/1.1")
        }
        let minor = p[i + 7] - 0x30
        // Header lines.
        var host: Range<Int>?
        var contentLength: Int?
        var close = false, keepAliveToken = false
        var forwardedFor: Range<Int>?
        var pos = first + 1
        while true {
            guard let end = lineEnd(p, from: pos, end: limit) else {
                return n >= maxHead ? .general("request head over \(maxHead) bytes") : .incomplete
            }
            guard end > pos, p[end - 1] == 0x0D else { return .general("bare LF") }
            let stop = end - 1
            if stop == pos { pos = end + 1; break }  // blank line: end of head
            var j = pos
            while j < stop, isToken(p[j]) { j += 1 }
            guard j > pos, j < stop, p[j] == 0x3A else { return .general("malformed header line") }
            let name = pos..<j
            j += 1
            while j < stop, p[j] == 0x20 || p[j] == 0x09 { j += 1 }
            let valueStart = j
            var valueEnd = j
            while j < stop {
                let b = p[j]
                guard b == 0x09 || b >= 0x20 && b != 0x7F else { return .general("control byte in a header value") }
                if b != 0x20 && b != 0x09 { valueEnd = j + 1 }
                j += 1
            }
            let value = valueStart..<valueEnd
            var header = Header(name: name, value: value)
            switch name.count {
            case 4 where equalsLower(p, name, "host"):
                guard host == nil else { return .general("two Host headers") }
                host = value
            case 14 where equalsLower(p, name, "content-length"):
                guard contentLength == nil, value.count > 0, value.count <= 12 else { return .general("bad Content-Length") }
                var v = 0
                for k in value {
                    let d = p[k]
                    guard d >= 0x30 && d <= 0x39 else { return .general("bad Content-Length") }
                    v = v * 10 + Int(d - 0x30)
                }
                contentLength = v
            case 17 where equalsLower(p, name, "transfer-encoding"): return .general("Transfer-Encoding")
            case 7 where equalsLower(p, name, "upgrade"): return .general("Upgrade")
            case 6 where equalsLower(p, name, "expect"): return .general("Expect")
            case 17 where equalsLower(p, name, "sec-websocket-key"): return .general("WebSocket")
            case 10 where equalsLower(p, name, "connection"):
                // Comma-separated elements, whitespace trimmed at their ends (as the general router reads them).
                var t = value.lowerBound
                while t < value.upperBound {
                    while t < value.upperBound, p[t] == 0x20 || p[t] == 0x09 || p[t] == 0x2C { t += 1 }
                    let tokenStart = t
                    while t < value.upperBound, p[t] != 0x2C { t += 1 }
                    var tokenEnd = t
                    while tokenEnd > tokenStart, p[tokenEnd - 1] == 0x20 || p[tokenEnd - 1] == 0x09 { tokenEnd -= 1 }
                    let token = tokenStart..<tokenEnd
                    if equalsLower(p, token, "close") { close = true }
                    else if equalsLower(p, token, "keep-alive") { keepAliveToken = true }
                    else if equalsLower(p, token, "upgrade") { return .general("Connection: upgrade") }
                }
            case 15 where equalsLower(p, name, "x-forwarded-for"):
                forwardedFor = value
                header.replaced = true
            case 17 where equalsLower(p, name, "x-forwarded-proto"):
                header.replaced = true
            default: break
            }
            guard headers.count < maxHeaders else { return .general("over \(maxHeaders) headers") }
            if !header.replaced {
                for other in headers where !other.replaced && sameCGIName(p, other.name, name) {
                    return .general("repeated header")
                }
            }
            headers.append(header)
            pos = end + 1
        }
        guard let host, host.count > 0 else { return .general("no Host") }
        let length = contentLength ?? 0
        guard length <= maxFastBody else { return .general("large body") }
        let keepAlive = minor == 1 ? !close : keepAliveToken && !close
        return .complete(Request(headLength: pos, method: method, uri: uri, minor: minor, host: host, contentLength: length,
                                 keepAlive: keepAlive, forwardedFor: forwardedFor))
    }

    /// Scans a backend's response head at the start of `p` (CRLF or LF line ends accepted).
    static func scanResponse(_ p: UnsafeRawBufferPointer) -> ResponseScan {
        let n = p.count
        guard let first = lineEnd(p, from: 0, end: min(n, maxHead)) else {
            return n >= maxHead ? .invalid("response head over \(maxHead) bytes") : .incomplete
        }
        // "HTTP/1.x SSS"
        guard first >= 12, p[0] == 0x48, p[1] == 0x54, p[2] == 0x54, p[3] == 0x50, p[4] == 0x2F, p[5] == 0x31, p[6] == 0x2E,
              p[7] == 0x30 || p[7] == 0x31, p[8] == 0x20 else {
            return .invalid("no HTTP/1.x status line")
        }
        var status = 0
        for k in 9..<12 {
            let d = p[k]
            guard d >= 0x30 && d <= 0x39 else { return .invalid("bad status code") }
            status = status * 10 + Int(d - 0x30)
        }
        guard status >= 100 else { return .invalid("bad status code") }
        var contentLength: Int?
        var chunked = false, connection = false
        var pos = first + 1
        while true {
            guard let end = lineEnd(p, from: pos, end: min(n, maxHead)) else {
                return n >= maxHead ? .invalid("response head over \(maxHead) bytes") : .incomplete
            }
            let stop = end > pos && p[end - 1] == 0x0D ? end - 1 : end
            if stop == pos { pos = end + 1; break }
            var j = pos
            while j < stop, p[j] != 0x3A { j += 1 }
            guard j < stop else { return .invalid("malformed response header") }
            let name = pos..<j
            j += 1
            while j < stop, p[j] == 0x20 || p[j] == 0x09 { j += 1 }
            var valueEnd = stop
            while valueEnd > j, p[valueEnd - 1] == 0x20 || p[valueEnd - 1] == 0x09 { valueEnd -= 1 }
            let value = j..<valueEnd
            if equalsLower(p, name, "content-length") {
                var v = 0
                guard value.count > 0, value.count <= 15 else { return .invalid("bad Content-Length") }
                for k in value {
                    let d = p[k]
                    guard d >= 0x30 && d <= 0x39 else { return .invalid("bad Content-Length") }
                    v = v * 10 + Int(d - 0x30)
                }
                if let previous = contentLength, previous != v { return .invalid("conflicting Content-Length") }
                contentLength = v
            } else if equalsLower(p, name, "transfer-encoding") {
                chunked = true
            } else if equalsLower(p, name, "connection") || equalsLower(p, name, "keep-alive") {
                connection = true
            }
            pos = end + 1
        }
        return .complete(Response(headLength: pos, status: status, statusRest: 8, contentLength: chunked ? nil : contentLength,
                                  chunked: chunked, hasConnectionHeaders: connection, minor: p[7] - 0x30))
    }

    /// Writes the response head for the client: the client's HTTP version, the backend's status
    /// and headers without Connection/Keep-Alive, then `extra` header lines and the blank line.
    static func rewriteResponseHead(_ p: UnsafeRawBufferPointer, _ response: Response, clientMinor: UInt8, extra: StaticString,
                                    into out: IOBuffer) {
        out.append("HTTP/1.")
        out.append(byte: 0x30 + clientMinor)
        guard let first = lineEnd(p, from: 0, end: response.headLength) else { return }
        out.append(UnsafeRawBufferPointer(rebasing: p[response.statusRest...first]))
        var pos = first + 1
        while pos < response.headLength, let end = lineEnd(p, from: pos, end: response.headLength) {
            let stop = end > pos && p[end - 1] == 0x0D ? end - 1 : end
            if stop == pos { break }
            var j = pos
            while j < stop, p[j] != 0x3A { j += 1 }
            let name = pos..<j
            if !(equalsLower(p, name, "connection") || equalsLower(p, name, "keep-alive")) {
                out.append(UnsafeRawBufferPointer(rebasing: p[pos...end]))
            }
            pos = end + 1
        }
        out.append(extra)
        out.append("\r\n")
    }
}
