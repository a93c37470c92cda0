#define _GNU_SOURCE
#include "crouterio.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/timerfd.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <sys/stat.h>
#include <unistd.h>

int crio_epoll_create(void) { return epoll_create1(EPOLL_CLOEXEC); }

int crio_epoll_add(int epfd, int fd, uint64_t token, int out, int edge, int exclusive) {
    struct epoll_event ev;
    memset(&ev, 0, sizeof ev);
    ev.events = EPOLLIN | EPOLLRDHUP;
    if (out) ev.events |= EPOLLOUT;
    if (edge) ev.events |= EPOLLET;
    if (exclusive) ev.events = EPOLLIN | EPOLLEXCLUSIVE;
    ev.data.u64 = token;
    return epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
}

int crio_epoll_del(int epfd, int fd) {
    struct epoll_event ev;
    memset(&ev, 0, sizeof ev);
    return epoll_ctl(epfd, EPOLL_CTL_DEL, fd, &ev);
}

int crio_epoll_wait(int epfd, uint64_t *tokens, uint32_t *events, int max, int timeout_ms) {
    struct epoll_event evs[256];
    if (max > 256) max = 256;
    int n = epoll_wait(epfd, evs, max, timeout_ms);
    if (n < 0) return errno == EINTR ? 0 : -1;
    for (int i = 0; i < n; i++) {
        tokens[i] = evs[i].data.u64;
        events[i] = evs[i].events;
    }
    return n;
}

int crio_eventfd(void) { return eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC); }

int crio_eventfd_signal(int fd) {
    uint64_t one = 1;
    return write(fd, &one, sizeof one) == sizeof one ? 0 : -1;
}

void crio_eventfd_drain(int fd) {
    uint64_t value;
    while (read(fd, &value, sizeof value) == sizeof value) {}
}

int crio_timerfd(void) { return timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC); }

int crio_timerfd_arm(int fd, uint64_t deadline_ns) {
    struct itimerspec spec = {0};
    spec.it_value.tv_sec = (time_t)(deadline_ns / 1000000000ull);
    spec.it_value.tv_nsec = (long)(deadline_ns % 1000000000ull);
    return timerfd_settime(fd, deadline_ns ? TFD_TIMER_ABSTIME : 0, &spec, NULL);
}

int64_t crio_timerfd_wait(int fd) {
    uint64_t expirations = 0;
    ssize_t n;
    do { n = read(fd, &expirations, sizeof expirations); } while (n < 0 && errno == EINTR);
    return n == sizeof expirations ? (int64_t)expirations : -1;
}

int crio_accept(int listen_fd, char *host, size_t host_len, int *port) {
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    int fd = accept4(listen_fd, (struct sockaddr *)&ss, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) return -1;
    if (host_len) host[0] = 0;
    *port = 0;
    if (ss.ss_family == AF_INET) {
        struct sockaddr_in *in = (struct sockaddr_in *)&ss;
        inet_ntop(AF_INET, &in->sin_addr, host, (socklen_t)host_len);
        *port = ntohs(in->sin_port);
    } else if (ss.ss_family == AF_INET6) {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
        inet_ntop(AF_INET6, &in6->sin6_addr, host, (socklen_t)host_len);
        *port = ntohs(in6->sin6_port);
    }
    return fd;
}

int crio_nodelay(int fd) {
    int one = 1;
    return setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

static int fill_address(const char *host, int port, struct sockaddr_storage *ss, socklen_t *len) {
    memset(ss, 0, sizeof *ss);
    struct sockaddr_in *in = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET, host, &in->sin_addr) == 1) {
        in->sin_family = AF_INET;
        in->sin_port = htons((uint16_t)port);
        *len = sizeof *in;
        return 0;
    }
    if (inet_pton(AF_INET6, host, &in6->sin6_addr) == 1) {
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons((uint16_t)port);
        *len = sizeof *in6;
        return 0;
    }
    return -1;
}

int crio_listen_tcp(const char *host, int port, int backlog) {
    struct sockaddr_storage ss;
    socklen_t len;
    if (fill_address(host, port, &ss, &len) != 0) {
        errno = EINVAL;
        return -1;
    }
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    // Bind even before the address is on an interface: the failover IP's listener is up before the IP is added,
    // so a client never meets the IP without a listener (a RST instead of a retransmitted SYN).
    if (ss.ss_family == AF_INET) setsockopt(fd, IPPROTO_IP, 15 /* IP_FREEBIND */, &one, sizeof one);
    else if (ss.ss_family == AF_INET6) setsockopt(fd, IPPROTO_IPV6, 78 /* IPV6_FREEBIND */, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&ss, len) != 0 || listen(fd, backlog) != 0) {
        int saved = errno;
        close(fd);
        errno = saved;
        return -1;
    }
    return fd;
}

int crio_local_port(int fd) {
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    if (getsockname(fd, (struct sockaddr *)&ss, &len) != 0) return -1;
    if (ss.ss_family == AF_INET) return ntohs(((struct sockaddr_in *)&ss)->sin_port);
    if (ss.ss_family == AF_INET6) return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    return -1;
}

int crio_connect(const char *host, int port, int *bad_address) {
    struct sockaddr_storage ss;
    socklen_t len;
    *bad_address = 0;
    if (port < 0) {
        struct sockaddr_un *un = (struct sockaddr_un *)&ss;
        memset(&ss, 0, sizeof ss);
        size_t n = strlen(host);
        if (n >= sizeof un->sun_path) {
            *bad_address = 1;
            errno = ENAMETOOLONG;
            return -1;
        }
        un->sun_family = AF_UNIX;
        memcpy(un->sun_path, host, n);
        len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + 1);
    } else if (fill_address(host, port, &ss, &len) != 0) {
        *bad_address = 1;
        errno = EINVAL;
        return -1;
    }
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    if (connect(fd, (struct sockaddr *)&ss, len) != 0 && errno != EINPROGRESS) {
        int saved = errno;
        close(fd);
        errno = saved;
        return -1;
    }
    return fd;
}

long crio_send(int fd, const void *buf, size_t len) { return send(fd, buf, len, MSG_NOSIGNAL); }

long crio_send2(int fd, const void *a, size_t alen, const void *b, size_t blen) {
    struct iovec iov[2] = {{(void *)a, alen}, {(void *)b, blen}};
    struct msghdr msg;
    memset(&msg, 0, sizeof msg);
    msg.msg_iov = iov;
    msg.msg_iovlen = blen ? 2 : 1;
    return sendmsg(fd, &msg, MSG_NOSIGNAL);
}

long crio_recv(int fd, void *buf, size_t len) { return read(fd, buf, len); }

int crio_close(int fd) { return close(fd); }

int crio_close_reset(int fd) {
    struct linger lg = {1, 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    return close(fd);
}

int crio_errno(void) { return errno; }

/// A UNIX socket of `type` bound at `path` (an old file there is replaced), close-on-exec.
static int bind_unix(const char *path, int type) {
    struct sockaddr_un un;
    memset(&un, 0, sizeof un);
    un.sun_family = AF_UNIX;
    size_t n = strlen(path);
    if (n >= sizeof un.sun_path) { errno = ENAMETOOLONG; return -1; }
    memcpy(un.sun_path, path, n + 1);
    int fd = socket(AF_UNIX, type | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    unlink(path);
    if (bind(fd, (struct sockaddr *)&un, sizeof un) != 0) {
        int saved = errno;
        close(fd);
        errno = saved;
        return -1;
    }
    return fd;
}

int crio_bind_unix_dgram(const char *path) {
    int fd = bind_unix(path, SOCK_DGRAM);
    if (fd < 0) return -1;
    int big = 1 << 20;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
    chmod(path, 0666);
    return fd;
}

int crio_listen_unix(const char *path) {
    int fd = bind_unix(path, SOCK_STREAM | SOCK_NONBLOCK);
    if (fd < 0) return -1;
    if (listen(fd, 64) != 0) {
        int saved = errno;
        close(fd);
        errno = saved;
        return -1;
    }
    chmod(path, 0600);
    return fd;
}

long crio_peer_uid(int fd) {
    struct ucred credentials;
    socklen_t length = sizeof credentials;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &credentials, &length) != 0) return -1;
    return (long)credentials.uid;
}

int crio_socketpair(int fds[2]) {
    return socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fds);
}
