// fork/exec and pidfd wrappers for the process supervisor (Sources/Supervisor).
// Swift cannot safely run code between fork and exec, and posix_spawn cannot drop privileges,
// set PR_SET_PDEATHSIG or reset every signal, so the child side lives here and calls only
// async-signal-safe functions.
#ifndef CPROCESS_H
#define CPROCESS_H

#include <stdint.h>
#include <stddef.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct cproc_spawn_attr {
    const char *path;          // absolute path of the program
    char *const *argv;         // NULL-terminated
    char *const *envp;         // NULL-terminated
    const char *cwd;           // NULL: inherit
    int stdin_fd;              // -1: /dev/null
    int stdout_fd;             // -1: inherit
    int stderr_fd;             // -1: inherit
    const int *keep_fds;       // fds dup2'ed to target_fds in the child (no CLOEXEC there)
    const int *target_fds;
    int keep_count;
    int new_process_group;     // setpgid(0, 0)
    int new_session;           // setsid() (implies a new group)
    int pdeathsig;             // 0: none
    int drop_privileges;       // setgid/setgroups/setuid to gid/uid
    uid_t uid;
    gid_t gid;
} cproc_spawn_attr;

/// Forks and execs. Returns the pid, or -1 with errno set (the exec's errno when exec failed:
/// reported back through a CLOEXEC pipe, so a missing binary is an error here, not an exit code).
/// `pidfd_out` receives a pidfd for the child (or -1 where the kernel has none).
pid_t cproc_spawn(const cproc_spawn_attr *attr, int *pidfd_out);

/// waitid(P_PIDFD) or waitpid on pid without blocking: 1 and the status when it exited, 0 when it
/// is still running, -1 on error. `code` is the exit code, `sig` the signal (0 when it exited).
int cproc_try_reap(pid_t pid, int *code, int *sig, int *core);

/// socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC); fds[0] non-blocking.
int cproc_socketpair(int fds[2]);

/// inotify_init1(IN_NONBLOCK | IN_CLOEXEC) and a watch for create/delete/modify/move/attrib.
int cproc_inotify_init(void);
int cproc_inotify_watch(int fd, const char *dir);
/// Drains pending inotify events; returns how many were read (0 when none).
int cproc_inotify_drain(int fd);

/// Writes all of `len` bytes to a (possibly non-blocking) fd, waiting up to `timeout_ms` in total; 0 on success.
int cproc_write_all(int fd, const void *buf, size_t len, int timeout_ms);

/// pipe2(fds, O_CLOEXEC | extra_flags).
int cproc_pipe(int fds[2], int nonblocking);

/// prctl(PR_SET_CHILD_SUBREAPER, 1).
int cproc_set_subreaper(void);

/// Names the calling thread (first 15 bytes) as shown by top -H, ps -L and /proc/PID/task/TID/comm.
int cproc_name_thread(const char *name);

#ifdef __cplusplus
}
#endif
#endif
