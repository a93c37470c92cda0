/*
 * libnss_legion.so.2 — the containers' users for the host's NSS, so that `ssh 30001@node` can log in (sshd needs
 * the user to exist before it looks at keys). Like uwsgi.it's nss-unbit, it is a formula, not a table: the user
 * and group named by a decimal uid in the containers' range (30001 … 30000 + 0xFFFFFF, no leading zero) exist,
 * with that uid and gid, home "/" (the shell starts inside the container, at its home) and shell /bin/sh (sshd
 * runs ForceCommand through it). The password field is "*": no password ever works. Whether a container of that
 * uid exists is decided later by its authorized keys (written by the node) and the login helper (legion-shell).
 *
 * Enable with "passwd: files legion" and "group: files legion" in /etc/nsswitch.conf (scripts/install --ssh).
 */
#include "nss_legion.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#define LEGION_FIRST_UID 30001UL
#define LEGION_LAST_UID (30000UL + 0xFFFFFFUL)

static int legion_parse(const char *name, unsigned long *out) {
    if (name == NULL || name[0] < '1' || name[0] > '9') return 0;
    unsigned long v = 0;
    for (const char *p = name; *p; p++) {
        if (*p < '0' || *p > '9' || p - name >= 9) return 0;
        v = v * 10 + (unsigned long)(*p - '0');
    }
    if (v < LEGION_FIRST_UID || v > LEGION_LAST_UID) return 0;
    *out = v;
    return 1;
}

/* Copies s into the caller's buffer; NULL if it does not fit. */
static char *legion_put(const char *s, char **buffer, size_t *left) {
    size_t n = strlen(s) + 1;
    if (n > *left) return NULL;
    char *at = *buffer;
    memcpy(at, s, n);
    *buffer += n;
    *left -= n;
    return at;
}

static enum nss_status legion_fill_pw(unsigned long uid, struct passwd *pw, char *buffer, size_t size, int *errnop) {
    char name[16];
    snprintf(name, sizeof name, "%lu", uid);
    size_t left = size;
    if (!(pw->pw_name = legion_put(name, &buffer, &left)) || !(pw->pw_passwd = legion_put("*", &buffer, &left)) ||
        !(pw->pw_gecos = legion_put("legion container", &buffer, &left)) || !(pw->pw_dir = legion_put("/", &buffer, &left)) ||
        !(pw->pw_shell = legion_put("/bin/sh", &buffer, &left))) {
        *errnop = ERANGE;
        return NSS_STATUS_TRYAGAIN;
    }
    pw->pw_uid = (uid_t)uid;
    pw->pw_gid = (gid_t)uid;
    return NSS_STATUS_SUCCESS;
}

static enum nss_status legion_fill_gr(unsigned long gid, struct group *gr, char *buffer, size_t size, int *errnop) {
    char name[16];
    snprintf(name, sizeof name, "%lu", gid);
    size_t left = size;
    if (!(gr->gr_name = legion_put(name, &buffer, &left)) || !(gr->gr_passwd = legion_put("*", &buffer, &left))) {
        *errnop = ERANGE;
        return NSS_STATUS_TRYAGAIN;
    }
    /* An empty, aligned member list. */
    uintptr_t at = ((uintptr_t)buffer + sizeof(char *) - 1) & ~(uintptr_t)(sizeof(char *) - 1);
    if (at + sizeof(char *) > (uintptr_t)buffer + left) {
        *errnop = ERANGE;
        return NSS_STATUS_TRYAGAIN;
    }
    gr->gr_mem = (char **)at;
    gr->gr_mem[0] = NULL;
    gr->gr_gid = (gid_t)gid;
    return NSS_STATUS_SUCCESS;
}

enum nss_status _nss_legion_getpwnam_r(const char *name, struct passwd *pw, char *buffer, size_t size, int *errnop) {
    unsigned long uid;
    if (!legion_parse(name, &uid)) return NSS_STATUS_NOTFOUND;
    return legion_fill_pw(uid, pw, buffer, size, errnop);
}

enum nss_status _nss_legion_getpwuid_r(uid_t uid, struct passwd *pw, char *buffer, size_t size, int *errnop) {
    if (uid < LEGION_FIRST_UID || uid > LEGION_LAST_UID) return NSS_STATUS_NOTFOUND;
    return legion_fill_pw(uid, pw, buffer, size, errnop);
}

enum nss_status _nss_legion_getgrnam_r(const char *name, struct group *gr, char *buffer, size_t size, int *errnop) {
    unsigned long gid;
    if (!legion_parse(name, &gid)) return NSS_STATUS_NOTFOUND;
    return legion_fill_gr(gid, gr, buffer, size, errnop);
}

enum nss_status _nss_legion_getgrgid_r(gid_t gid, struct group *gr, char *buffer, size_t size, int *errnop) {
    if (gid < LEGION_FIRST_UID || gid > LEGION_LAST_UID) return NSS_STATUS_NOTFOUND;
    return legion_fill_gr(gid, gr, buffer, size, errnop);
}
