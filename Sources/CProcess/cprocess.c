#define _GNU_SOURCE
#include "cprocess.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/prctl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_close_range
#define SYS_close_range 436
#endif

static void child_fail(int report_fd) {
    int e = errno;
    ssize_t ignored = write(report_fd, &e, sizeof e);
    (void)ignored;
    _exit(127);
}

pid_t cproc_spawn(const cproc_spawn_attr *a, int *pidfd_out) {
    if (pidfd_out) *pidfd_out = -1;
    int report[2];
    if (pipe2(report, O_CLOEXEC) != 0) return -1;
    // Everything the child needs is prepared before fork: it may only call async-signal-safe functions.
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pid_t pid = fork();
    if (pid == 0) {
        // Child.
        close(report[0]);
        int rep = fcntl(report[1], F_DUPFD_CLOEXEC, 64);   // above every target fd
        if (rep < 0) _exit(127);
        close(report[1]);
        report[1] = rep;
        for (int s = 1; s < NSIG; s++) {
            if (s == SIGKILL || s == SIGSTOP) continue;
            signal(s, SIG_DFL);   // SIGPIPE is ignored in the node (dqlite); a child must not inherit that
        }
        sigset_t none;
        sigemptyset(&none);
        if (a->new_session) {
            if (setsid() < 0) child_fail(report[1]);
        } else if (a->new_process_group) {
            if (setpgid(0, 0) != 0) child_fail(report[1]);
        }
        if (a->pdeathsig) prctl(PR_SET_PDEATHSIG, a->pdeathsig);
        // stdio: open /dev/null where asked.
        int in = a->stdin_fd;
        if (in < 0) { in = open("/dev/null", O_RDONLY); if (in < 0) child_fail(report[1]); }
        // Move the fds to keep above every target first, so dup2 order cannot clobber one.
        int moved[64];
        int count = a->keep_count > 64 ? 64 : a->keep_count;
        for (int i = 0; i < count; i++) {
            moved[i] = fcntl(a->keep_fds[i], F_DUPFD_CLOEXEC, 64);
            if (moved[i] < 0) child_fail(report[1]);
        }
        int out = a->stdout_fd >= 0 ? fcntl(a->stdout_fd, F_DUPFD_CLOEXEC, 64) : -1;
        int err = a->stderr_fd >= 0 ? fcntl(a->stderr_fd, F_DUPFD_CLOEXEC, 64) : -1;
        int inMoved = fcntl(in, F_DUPFD_CLOEXEC, 64);
        if (inMoved < 0 || dup2(inMoved, 0) < 0) child_fail(report[1]);
        if (out >= 0 && dup2(out, 1) < 0) child_fail(report[1]);
        if (err >= 0 && dup2(err, 2) < 0) child_fail(report[1]);
        for (int i = 0; i < count; i++) {
            if (dup2(moved[i], a->target_fds[i]) < 0) child_fail(report[1]);
        }
        // Close everything else the child inherited (fds above the highest target).
        int highest = 2;
        for (int i = 0; i < count; i++) if (a->target_fds[i] > highest) highest = a->target_fds[i];
        for (int fd = 3; fd < highest; fd++) {
            int keep = 0;
            for (int i = 0; i < count; i++) if (a->target_fds[i] == fd) keep = 1;
            if (!keep && fd != report[1]) close(fd);
        }
        if (syscall(SYS_close_range, (unsigned)(highest + 1), ~0U, 4 /* CLOSE_RANGE_CLOEXEC */) != 0) {
            for (int fd = highest + 1; fd < 4096; fd++) if (fd != report[1]) close(fd);
        }
        if (a->cwd && chdir(a->cwd) != 0) child_fail(report[1]);
        if (a->drop_privileges) {
            if (setgid(a->gid) != 0) child_fail(report[1]);
            if (setgroups(0, NULL) != 0) child_fail(report[1]);
            if (setuid(a->uid) != 0) child_fail(report[1]);
            if (a->pdeathsig) prctl(PR_SET_PDEATHSIG, a->pdeathsig);   // cleared by the uid change
        }
        sigprocmask(SIG_SETMASK, &none, NULL);
        execve(a->path, a->argv, a->envp);
        child_fail(report[1]);
    }
    int saved = errno;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    close(report[1]);
    if (pid < 0) { close(report[0]); errno = saved; return -1; }
    int childErrno = 0;
    ssize_t n;
    do { n = read(report[0], &childErrno, sizeof childErrno); } while (n < 0 && errno == EINTR);
    close(report[0]);
    if (n == (ssize_t)sizeof childErrno) {
        int status;
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
        errno = childErrno;
        return -1;
    }
    if (pidfd_out) {
        int fd = (int)syscall(SYS_pidfd_open, pid, 0);
        if (fd >= 0) fcntl(fd, F_SETFD, FD_CLOEXEC);
        *pidfd_out = fd;
    }
    return pid;
}

int cproc_try_reap(pid_t pid, int *code, int *sig, int *core) {
    int status = 0;
    pid_t r;
    do { r = waitpid(pid, &status, WNOHANG); } while (r < 0 && errno == EINTR);
    if (r == 0) return 0;
    if (r < 0) return -1;
    *code = WIFEXITED(status) ? WEXITSTATUS(status) : 0;
    *sig = WIFSIGNALED(status) ? WTERMSIG(status) : 0;
    *core = WIFSIGNALED(status) ? (WCOREDUMP(status) ? 1 : 0) : 0;
    return 1;
}

int cproc_socketpair(int fds[2]) {
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) return -1;
    int flags = fcntl(fds[0], F_GETFL);
    fcntl(fds[0], F_SETFL, flags | O_NONBLOCK);
    return 0;
}

int cproc_inotify_init(void) { return inotify_init1(IN_NONBLOCK | IN_CLOEXEC); }

int cproc_inotify_watch(int fd, const char *dir) {
    return inotify_add_watch(fd, dir, IN_CREATE | IN_DELETE | IN_MODIFY | IN_MOVED_FROM | IN_MOVED_TO | IN_ATTRIB |
                                          IN_CLOSE_WRITE | IN_DELETE_SELF | IN_MOVE_SELF);
}

int cproc_inotify_drain(int fd) {
    char buf[8192] __attribute__((aligned(__alignof__(struct inotify_event))));
    int total = 0;
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n <= 0) break;
        total += (int)n;
    }
    return total;
}

int cproc_set_subreaper(void) { return prctl(PR_SET_CHILD_SUBREAPER, 1); }

int cproc_write_all(int fd, const void *buf, size_t len, int timeout_ms) {
    const char *p = buf;
    int waited = 0;
    while (len > 0) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n < 0 && errno == ENOTSOCK) n = write(fd, p, len);
        if (n > 0) { p += n; len -= (size_t)n; continue; }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) && waited < timeout_ms) {
            struct pollfd pfd = { .fd = fd, .events = POLLOUT };
            poll(&pfd, 1, 50);
            waited += 50;
            continue;
        }
        return -1;
    }
    return 0;
}

int cproc_pipe(int fds[2], int nonblocking) { return pipe2(fds, O_CLOEXEC | (nonblocking ? O_NONBLOCK : 0)); }

int cproc_name_thread(const char *name) {
    char truncated[16];
    strncpy(truncated, name, sizeof truncated - 1);
    truncated[sizeof truncated - 1] = '\0';
    return pthread_setname_np(pthread_self(), truncated);
}
