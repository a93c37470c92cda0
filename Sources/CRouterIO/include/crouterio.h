// Thin wrappers over Linux's epoll, eventfd and socket calls for the router's fast path
// (Sources/Node/Router/Fast). Swift's Glibc module does not import <sys/epoll.h>, and
// struct epoll_event is packed on x86-64, so events are unpacked here into plain arrays.
#ifndef CROUTERIO_H
#define CROUTERIO_H

#include <stdint.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

enum {
    CRIO_IN = 0x001,
    CRIO_OUT = 0x004,
    CRIO_ERR = 0x008,
    CRIO_HUP = 0x010,
    CRIO_RDHUP = 0x2000,
};

/// epoll_create1(EPOLL_CLOEXEC); -1 and errno on failure.
int crio_epoll_create(void);
/// Adds `fd` edge-triggered for in+out+rdhup (`out` 0: in only); `exclusive` adds EPOLLEXCLUSIVE (listeners).
int crio_epoll_add(int epfd, int fd, uint64_t token, int out, int edge, int exclusive);
int crio_epoll_del(int epfd, int fd);
/// Waits; fills tokens[i] and events[i] (CRIO_* bits); returns the count, 0 on timeout or EINTR, -1 on error.
int crio_epoll_wait(int epfd, uint64_t *tokens, uint32_t *events, int max, int timeout_ms);

/// eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC).
int crio_eventfd(void);
int crio_eventfd_signal(int fd);
void crio_eventfd_drain(int fd);

/// timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC): a blocking one-shot timer; -1 and errno on failure.
int crio_timerfd(void);
/// Arms it to expire at `deadline_ns` on CLOCK_MONOTONIC (absolute; 0 disarms).
int crio_timerfd_arm(int fd, uint64_t deadline_ns);
/// Blocks until it expires; returns the expirations count, -1 and errno on failure.
int64_t crio_timerfd_wait(int fd);

/// accept4(SOCK_NONBLOCK | SOCK_CLOEXEC); writes the peer's numeric address ("1.2.3.4", "::1", "" for
/// UNIX) into `host` (size `host_len`) and its port into `*port`. -1 and errno when nothing to accept.
int crio_accept(int listen_fd, char *host, size_t host_len, int *port);
/// TCP_NODELAY on.
int crio_nodelay(int fd);
/// A bound, listening TCP socket (SO_REUSEADDR, non-blocking). `host` is an IPv4 or IPv6 literal.
int crio_listen_tcp(const char *host, int port, int backlog);
/// The local port of a bound socket (for port 0), or -1.
int crio_local_port(int fd);

/// Non-blocking connect to an IPv4/IPv6 literal or a UNIX socket path (`port` < 0).
/// Returns the fd (connect in progress or done) or -1 with errno (e.g. ECONNREFUSED for a UNIX path).
/// `*bad_address` is set to 1 when `host` is not a literal (the caller resolves names another way).
int crio_connect(const char *host, int port, int *bad_address);

/// send(MSG_NOSIGNAL) / sendmsg with two iovecs; -1 and errno on failure.
long crio_send(int fd, const void *buf, size_t len);
long crio_send2(int fd, const void *a, size_t alen, const void *b, size_t blen);
long crio_recv(int fd, void *buf, size_t len);
int crio_close(int fd);
/// close() with SO_LINGER 0: an abortive close (RST, no TIME_WAIT), for a backend connection whose
/// response has been received in full.
int crio_close_reset(int fd);
int crio_errno(void);
/// A bound UNIX datagram socket at `path` (an old file there is replaced), blocking, close-on-exec, mode 0666.
int crio_bind_unix_dgram(const char *path);
/// A listening, non-blocking UNIX stream socket at `path` (an old file there is replaced), mode 0600.
int crio_listen_unix(const char *path);
/// A connected pair of non-blocking, close-on-exec UNIX stream sockets (the TLS bridge to the general router).
int crio_socketpair(int fds[2]);
/// The uid of the process at the other end of a connected UNIX socket (SO_PEERCRED), or -1.
long crio_peer_uid(int fd);

#ifdef __cplusplus
}
#endif

#endif
