#if os(Linux)
import CRouterIO
import Glibc

/// The fast path's socket loops (non-blocking, edge-triggered), shared by its connection kinds.
enum SocketIO {
    enum ReadResult { case drained, limit, eof, failed }

    /// Reads into `buffer` until the socket has nothing more (a short read or EAGAIN — with
    /// edge-triggered epoll a later arrival raises a new event), its end, an error, or `limit`
    /// bytes are buffered (the caller resumes reading once it has made room). `untilBlocked`: a short read
    /// is not taken as the end (a peer that closes right after writing raises one edge for both: the end is
    /// only seen by reading on).
    static func read(_ fd: Int32, into buffer: IOBuffer, limit: Int, untilBlocked: Bool = false) -> ReadResult {
        while true {
            if buffer.count >= limit { return .limit }
            buffer.reserve(4096)
            let room = buffer.writableCount
            let n = crio_recv(fd, buffer.writePointer, room)
            if n > 0 {
                buffer.commit(n)
                if n < room && !untilBlocked { return .drained }
                continue
            }
            if n == 0 { return .eof }
            let err = crio_errno()
            if err == EAGAIN || err == EWOULDBLOCK { return .drained }
            if err != EINTR { return .failed }
        }
    }

    enum WriteResult { case done, blocked, failed(Int32) }

    /// Sends `buffer`'s bytes until it is empty (`.done`) or the socket is full (`.blocked`).
    static func flush(_ buffer: IOBuffer, to fd: Int32) -> WriteResult {
        while !buffer.isEmpty {
            let n = crio_send(fd, buffer.readable.baseAddress, buffer.count)
            if n > 0 {
                buffer.consume(n)
                continue
            }
            let err = crio_errno()
            if err == EINTR { continue }
            if err == EAGAIN || err == EWOULDBLOCK || err == ENOTCONN { return .blocked }
            return .failed(err)
        }
        return .done
    }

    /// Sends `a` then `b` in one call; what the socket does not take goes to `overflow` (which must be
    /// empty: bytes already waiting there go first, so callers append instead). False when the peer is gone.
    static func send(_ a: UnsafeRawBufferPointer, _ b: UnsafeRawBufferPointer, to fd: Int32, overflow: IOBuffer) -> Bool {
        var sent = 0
        while true {
            let n = crio_send2(fd, a.baseAddress, a.count, b.baseAddress, b.count)
            if n >= 0 {
                sent = n
                break
            }
            let err = crio_errno()
            if err == EINTR { continue }
            if err == EAGAIN || err == EWOULDBLOCK { break }
            return false
        }
        if sent < a.count {
            overflow.append(UnsafeRawBufferPointer(rebasing: a[sent...]))
            overflow.append(b)
        } else if sent < a.count + b.count {
            overflow.append(UnsafeRawBufferPointer(rebasing: b[(sent - a.count)...]))
        }
        return true
    }
}
#endif
