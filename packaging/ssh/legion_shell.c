/*
 * legion-shell — the login of a container's user over ssh (sshd's ForceCommand), installed setuid root.
 *
 * sshd has authenticated user <uid> (a container's: 30001 … 30000 + 0xFFFFFF, resolved by libnss_legion) with a
 * key the node wrote from the store; sshd runs this helper as that uid. It finds the running container of that uid
 * on this server (runc's state: /run/runc/legion-<node>-<uid>), becomes root only to call
 *
 *     runc exec [-t] --user <uid>:<uid> --cwd /containers/<uid> <id> /bin/sh -c "$SSH_ORIGINAL_COMMAND"
 *
 * (or a login shell), so the session runs inside the container — its namespaces, cgroups (limits hold), seccomp
 * filter, no new privileges, never root — exactly as the container's own processes. `runc exec` is the only entry
 * that applies all of them (nsenter escapes the cgroups). The environment is cleared; nothing the user passes
 * reaches runc except the command, which runs as the user inside.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <grp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define FIRST_UID 30001UL
#define LAST_UID (30000UL + 0xFFFFFFUL)

static int fail(const char *message) {
    fprintf(stderr, "legion-shell: %s\n", message);
    return 1;
}

/* The runc id of the running container for uid: exactly one "legion-<node>-<uid>" in runc's state directory. */
static int find_container(unsigned long uid, char *id, size_t size) {
    char suffix[32];
    snprintf(suffix, sizeof suffix, "-%lu", uid);
    size_t suffix_len = strlen(suffix);
    DIR *dir = opendir("/run/runc");
    if (dir == NULL) return 0;
    int found = 0;
    struct dirent *entry;
    while ((entry = readdir(dir)) != NULL) {
        const char *name = entry->d_name;
        size_t len = strlen(name);
        if (strncmp(name, "legion-", 7) != 0 || len <= 7 + suffix_len || strcmp(name + len - suffix_len, suffix) != 0) continue;
        if (len >= size) continue;
        if (found++ == 0) memcpy(id, name, len + 1);
    }
    closedir(dir);
    return found;
}

static const char *runc_binary(void) {
    static const char *candidates[] = {"/usr/sbin/runc", "/usr/bin/runc", "/usr/local/sbin/runc", "/usr/local/bin/runc"};
    for (size_t i = 0; i < sizeof candidates / sizeof candidates[0]; i++) {
        struct stat st;
        if (stat(candidates[i], &st) == 0 && st.st_uid == 0 && (st.st_mode & 0022) == 0) return candidates[i];
    }
    return NULL;
}

int main(void) {
    unsigned long uid = (unsigned long)getuid();
    if (uid < FIRST_UID || uid > LAST_UID) return fail("only containers' users (uid 30001 and up) log in through here");

    /* Read what we need from the environment before clearing it. */
    const char *original = getenv("SSH_ORIGINAL_COMMAND");
    char *command = original ? strdup(original) : NULL;
    const char *term_env = getenv("TERM");
    char term[64] = "";
    if (term_env && strlen(term_env) < sizeof term - 6 && strspn(term_env, "abcdefghijklmnopqrstuvwxyz0123456789-.") == strlen(term_env))
        snprintf(term, sizeof term, "TERM=%s", term_env);
    int tty = getenv("SSH_TTY") != NULL && isatty(STDIN_FILENO);

    char id[256];
    int found = find_container(uid, id, sizeof id);
    if (found == 0) {
        fprintf(stderr, "legion-shell: container %lu is not running on this server; check its node (legion admin container list)\n", uid);
        return 1;
    }
    if (found > 1) return fail("more than one node on this server runs this container; ask the operator (legion container enter)");
    const char *runc = runc_binary();
    if (runc == NULL) return fail("runc is not installed (root-owned) on this server");

    if (setgroups(0, NULL) != 0 || setresgid(0, 0, 0) != 0 || setresuid(0, 0, 0) != 0)
        return fail("must be installed setuid root (scripts/install --ssh does it)");
    clearenv();
    setenv("PATH", "/usr/sbin:/usr/bin:/sbin:/bin", 1);

    char user[64], cwd[64], home[80], username[64], logname[64];
    snprintf(user, sizeof user, "%lu:%lu", uid, uid);
    snprintf(cwd, sizeof cwd, "/containers/%lu", uid);
    snprintf(home, sizeof home, "HOME=/containers/%lu", uid);
    snprintf(username, sizeof username, "USER=%lu", uid);
    snprintf(logname, sizeof logname, "LOGNAME=%lu", uid);

    const char *argv[32];
    int n = 0;
    argv[n++] = runc;
    argv[n++] = "exec";
    if (tty) argv[n++] = "-t";
    argv[n++] = "--user"; argv[n++] = user;
    argv[n++] = "--cwd"; argv[n++] = cwd;
    argv[n++] = "--env"; argv[n++] = home;
    argv[n++] = "--env"; argv[n++] = username;
    argv[n++] = "--env"; argv[n++] = logname;
    argv[n++] = "--env"; argv[n++] = "PATH=/usr/local/bin:/usr/bin:/bin";
    if (term[0]) { argv[n++] = "--env"; argv[n++] = term; }
    argv[n++] = id;
    argv[n++] = "/bin/sh";
    argv[n++] = "-c";
    argv[n++] = command ? command : "command -v bash >/dev/null && exec bash -l; exec sh -l";
    argv[n] = NULL;
    execv(runc, (char *const *)argv);
    perror("legion-shell: exec runc");
    return 1;
}
