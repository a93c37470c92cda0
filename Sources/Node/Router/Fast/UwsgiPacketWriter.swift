import UwsgiWire

/// Writes the uwsgi request packet for a scanned request straight from the client's bytes:
/// the same vars, in the same order, as `UwsgiRequest.encodePacket` (unit-tested to be
/// byte-identical), without building strings.
enum UwsgiPacketWriter {
    struct Context {
        var serverName: [UInt8]
        var serverPort: [UInt8]
        var remoteAddress: [UInt8]
        var remotePort: [UInt8]
        var https: Bool
        /// A verified TLS client certificate (`sni_ca`): HTTPS_DN and HTTPS_CC (PEM), as the general router sends.
        var clientSubject: [UInt8]? = nil
        var clientCertificateDER: [UInt8]? = nil
    }

    enum Failure: Error { case tooLarge }

    /// Appends the packet (4-byte header + vars) to `out` (which should be empty). Throws when the
    /// vars exceed 65 535 bytes.
    static func write(_ p: UnsafeRawBufferPointer, request: HTTPHeadScanner.Request, headers: [HTTPHeadScanner.Header],
                      context: Context, modifier1: UInt8, modifier2: UInt8, into out: IOBuffer) throws(Failure) {
        let start = out.writeIndex
        out.append(byte: modifier1)
        out.append(byte: 0)
        out.append(byte: 0)
        out.append(byte: modifier2)
        let uri = request.uri
        var query: Int?
        for k in uri where p[k] == 0x3F { query = k; break }
        let pathRange = uri.lowerBound..<(query ?? uri.upperBound)
        var needsDecoding = false
        for k in pathRange {
            let b = p[k]
            if b == 0x25 || b == 0x2E || b == 0x23 { needsDecoding = true; break }
        }
        var decoded: [UInt8] = []
        if needsDecoding {
            decoded = Array(UwsgiRequest.decodePath(String(decoding: UnsafeRawBufferPointer(rebasing: p[pathRange]), as: UTF8.self)).utf8)
        }
        func putPath() {
            if needsDecoding { put(out, "PATH_INFO", decoded) } else { put(out, "PATH_INFO", slice(p, pathRange)) }
        }
        put(out, "REQUEST_METHOD", slice(p, request.method))
        if let query {
            putPath()
            put(out, "REQUEST_URI", slice(p, uri))
            put(out, "QUERY_STRING", slice(p, (query + 1)..<uri.upperBound))
        } else {
            put(out, "REQUEST_URI", slice(p, uri))
            putPath()
            put(out, "QUERY_STRING", "")
        }
        put(out, "SERVER_PROTOCOL", request.minor == 1 ? "HTTP/1.1" : "HTTP/1.0")
        put(out, "SCRIPT_NAME", "")
        put(out, "SERVER_NAME", context.serverName)
        put(out, "SERVER_PORT", context.serverPort)
        put(out, "UWSGI_ROUTER", "http")
        if context.https { put(out, "HTTPS", "on") }
        put(out, "REMOTE_ADDR", context.remoteAddress)
        put(out, "REMOTE_PORT", context.remotePort)
        for header in headers where !header.replaced {
            putCGIName(out, p, header.name)
            putValue(out, slice(p, header.value))
        }
        // X-Forwarded-For: the client's chain (last value received) extended with the client's address.
        putKey(out, "HTTP_X_FORWARDED_FOR")
        if let forwarded = request.forwardedFor {
            let length = forwarded.count + 2 + context.remoteAddress.count
            out.append(byte: UInt8(truncatingIfNeeded: length))
            out.append(byte: UInt8(truncatingIfNeeded: length >> 8))
            out.append(slice(p, forwarded))
            out.append(", ")
            out.append(context.remoteAddress)
        } else {
            putValue(out, context.remoteAddress)
        }
        put(out, "HTTP_X_FORWARDED_PROTO", context.https ? "https" : "http")
        if let subject = context.clientSubject {
            put(out, "HTTPS_DN", subject)
            if let der = context.clientCertificateDER { put(out, "HTTPS_CC", Array(ClientOrigin.pem(der: der).utf8)) }
        }
        let size = out.writeIndex - start - 4
        guard size <= Int(UInt16.max) else { throw .tooLarge }
        out.patchUInt16LE(size, at: start + 1)
    }

    @inline(__always) static func slice(_ p: UnsafeRawBufferPointer, _ r: Range<Int>) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(rebasing: p[r])
    }

    @inline(__always) static func putKey(_ out: IOBuffer, _ key: StaticString) {
        let n = key.utf8CodeUnitCount
        out.append(byte: UInt8(truncatingIfNeeded: n))
        out.append(byte: UInt8(truncatingIfNeeded: n >> 8))
        out.append(key)
    }

    @inline(__always) static func putValue(_ out: IOBuffer, _ value: UnsafeRawBufferPointer) {
        out.append(byte: UInt8(truncatingIfNeeded: value.count))
        out.append(byte: UInt8(truncatingIfNeeded: value.count >> 8))
        out.append(value)
    }

    @inline(__always) static func putValue(_ out: IOBuffer, _ value: [UInt8]) {
        value.withUnsafeBytes { putValue(out, $0) }
    }

    static func put(_ out: IOBuffer, _ key: StaticString, _ value: UnsafeRawBufferPointer) {
        putKey(out, key)
        putValue(out, value)
    }

    static func put(_ out: IOBuffer, _ key: StaticString, _ value: [UInt8]) {
        putKey(out, key)
        putValue(out, value)
    }

    static func put(_ out: IOBuffer, _ key: StaticString, _ value: StaticString) {
        putKey(out, key)
        putValue(out, UnsafeRawBufferPointer(start: value.utf8Start, count: value.utf8CodeUnitCount))
    }

    /// `Content-Type` → `CONTENT_TYPE`, `X-Test` → `HTTP_X_TEST`.
    static func putCGIName(_ out: IOBuffer, _ p: UnsafeRawBufferPointer, _ name: Range<Int>) {
        let bare = HTTPHeadScanner.equalsLower(p, name, "content-type") || HTTPHeadScanner.equalsLower(p, name, "content-length")
        let length = name.count + (bare ? 0 : 5)
        out.append(byte: UInt8(truncatingIfNeeded: length))
        out.append(byte: UInt8(truncatingIfNeeded: length >> 8))
        if !bare { out.append("HTTP_") }
        out.reserve(name.count)
        let dst = out.writePointer
        var i = 0
        for k in name {
            var b = p[k]
            if b >= 0x61 && b <= 0x7A { b &= 0xDF } else if b == 0x2D { b = 0x5F }
            dst.storeBytes(of: b, toByteOffset: i, as: UInt8.self)
            i += 1
        }
        out.commit(name.count)
    }
}
