#if os(Linux)
import CFastTLS
import Foundation

/// One client's TLS session on the fast path (OpenSSL over the loop's non-blocking socket): the handshake,
/// then plaintext in and out through the connection's buffers. Reads always go on until OpenSSL wants more
/// from the socket, so nothing decrypted is left in the session while edge-triggered epoll waits for an edge
/// that will not come. Used only on its loop's thread.
final class TLSStream {
    private var session: OpaquePointer?
    /// A read stopped because OpenSSL must write first (a handshake or post-handshake message): resume it
    /// when the socket is writable.
    var readWantsWrite = false
    /// A write stopped because OpenSSL must read first: resume it when the socket is readable.
    var writeWantsRead = false
    private(set) var established = false
    /// The verified client certificate (`sni_ca` names): its subject (uWSGI's HTTPS_DN) and DER encoding.
    private(set) var peerSubject: [UInt8]?
    private(set) var peerCertificateDER: [UInt8]?

    init?(contexts: FastTLSContexts, fd: Int32) {
        guard let session = contexts.session(fd: fd) else { return nil }
        self.session = session
    }

    deinit { close(notify: false) }

    enum HandshakeResult { case done, pending, failed(String) }

    func handshake() -> HandshakeResult {
        guard let session else { return .failed("closed") }
        let r = Int(ftls_handshake(session))
        switch r {
        case 1:
            established = true
            readPeer(session)
            return .done
        case FTLS_WANT_READ: return .pending
        case FTLS_WANT_WRITE:
            readWantsWrite = true
            return .pending
        case FTLS_CLOSED: return .failed("the client closed during the handshake")
        default: return .failed(TLSStream.lastError())
        }
    }

    private func readPeer(_ session: OpaquePointer) {
        var subject = [CChar](repeating: 0, count: 1024)
        let n = ftls_peer_subject(session, &subject, subject.count)
        guard n > 0 else { return }
        peerSubject = subject[..<n].map { UInt8(bitPattern: $0) }
        var der = [UInt8](repeating: 0, count: 16 * 1024)
        let m = ftls_peer_der(session, &der, der.count)
        if m > 0 { peerCertificateDER = Array(der[..<m]) }
    }

    /// Decrypts into `buffer` until OpenSSL needs the socket (`.drained`), the client closes, or `limit`
    /// bytes are buffered (the caller reads again once it has made room).
    func read(into buffer: IOBuffer, limit: Int) -> SocketIO.ReadResult {
        guard let session else { return .failed }
        readWantsWrite = false
        while true {
            if buffer.count >= limit { return .limit }
            buffer.reserve(4096)
            let n = ftls_read(session, buffer.writePointer, buffer.writableCount)
            if n > 0 {
                buffer.commit(n)
                continue
            }
            switch n {
            case FTLS_WANT_READ: return .drained
            case FTLS_WANT_WRITE:
                readWantsWrite = true
                return .drained
            case FTLS_CLOSED: return .eof
            default:
                _ = TLSStream.lastError()
                return .failed
            }
        }
    }

    /// Encrypts and sends `buffer`'s bytes until it is empty or the socket is full. After `.blocked` the same
    /// bytes go first on the next call (OpenSSL's rule for retried writes; more may have been appended).
    func flush(_ buffer: IOBuffer) -> SocketIO.WriteResult {
        guard let session else { return .failed(EBADF) }
        writeWantsRead = false
        while !buffer.isEmpty {
            let n = ftls_write(session, buffer.readable.baseAddress, buffer.count)
            if n > 0 {
                buffer.consume(n)
                continue
            }
            switch n {
            case FTLS_WANT_WRITE: return .blocked
            case FTLS_WANT_READ:
                writeWantsRead = true
                return .blocked
            default:
                _ = TLSStream.lastError()
                return .failed(EPIPE)
            }
        }
        return .done
    }

    /// Frees the session; `notify` sends close_notify first (a graceful close). The socket is the caller's.
    func close(notify: Bool) {
        guard let session else { return }
        self.session = nil
        ftls_conn_free(session, notify && established ? 1 : 0)
    }

    static func lastError() -> String {
        var text = [CChar](repeating: 0, count: 256)
        let n = ftls_last_error(&text, text.count)
        return String(decoding: text[..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
#endif
