/* libnss_legion.so.2: containers' users for the host's NSS (see nss_legion.c). */
#ifndef NSS_LEGION_H
#define NSS_LEGION_H
#include <grp.h>
#include <nss.h>
#include <pwd.h>
#include <stddef.h>

enum nss_status _nss_legion_getpwnam_r(const char *name, struct passwd *pw, char *buffer, size_t size, int *errnop);
enum nss_status _nss_legion_getpwuid_r(uid_t uid, struct passwd *pw, char *buffer, size_t size, int *errnop);
enum nss_status _nss_legion_getgrnam_r(const char *name, struct group *gr, char *buffer, size_t size, int *errnop);
enum nss_status _nss_legion_getgrgid_r(gid_t gid, struct group *gr, char *buffer, size_t size, int *errnop);
#endif
