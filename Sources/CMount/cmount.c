#define _GNU_SOURCE
#include "cmount.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/loop.h>
#include <linux/openat2.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

static int say(char *error, size_t size, const char *format, ...) {
    va_list ap;
    va_start(ap, format);
    vsnprintf(error, size, format, ap);
    va_end(ap);
    return -1;
}

static int open_beneath(int dirfd, const char *path, int flags, int cross_mounts) {
    struct open_how how;
    memset(&how, 0, sizeof how);
    how.flags = (unsigned long long)(flags | O_CLOEXEC | O_NOFOLLOW);
    how.resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | (cross_mounts ? 0 : RESOLVE_NO_XDEV);
    return (int)syscall(SYS_openat2, dirfd, path, &how, sizeof how);
}

int cmount_loopbox_mount(const char *home, const char *image, const char *mountpoint, int read_only, long long min_bytes,
                         char *error, size_t size) {
    int homefd = open(home, O_PATH | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
    if (homefd < 0) return say(error, size, "the home %s cannot be opened: %s", home, strerror(errno));
    int imgfd = open_beneath(homefd, image, read_only ? O_RDONLY : O_RDWR, 0);
    if (imgfd < 0) {
        int e = errno;
        close(homefd);
        if (e == ELOOP || e == EXDEV) return say(error, size, "image %s: a path through a symlink or another mount is refused", image);
        return say(error, size, "image %s: %s", image, strerror(e));
    }
    struct stat st;
    if (fstat(imgfd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(imgfd);
        close(homefd);
        return say(error, size, "image %s is not a regular file", image);
    }
    if (st.st_size < min_bytes) {
        close(imgfd);
        close(homefd);
        return say(error, size, "image %s is %lld bytes; images under %lld bytes are not mounted", image, (long long)st.st_size, min_bytes);
    }
    int mpfd = open_beneath(homefd, mountpoint, O_PATH, 0);
    close(homefd);
    if (mpfd < 0) {
        int e = errno;
        close(imgfd);
        if (e == ELOOP || e == EXDEV) return say(error, size, "mountpoint %s: a path through a symlink or another mount is refused", mountpoint);
        return say(error, size, "mountpoint %s: %s (create the directory first)", mountpoint, strerror(e));
    }
    if (fstat(mpfd, &st) != 0 || !S_ISDIR(st.st_mode)) {
        int link = S_ISLNK(st.st_mode);
        close(imgfd);
        close(mpfd);
        if (link) return say(error, size, "mountpoint %s: a path through a symlink or another mount is refused", mountpoint);
        return say(error, size, "mountpoint %s is not a directory", mountpoint);
    }
    int ctl = open("/dev/loop-control", O_RDWR | O_CLOEXEC);
    if (ctl < 0) {
        close(imgfd);
        close(mpfd);
        return say(error, size, "/dev/loop-control: %s", strerror(errno));
    }
    int number = -1, loopfd = -1;
    for (int attempt = 0; attempt < 16 && loopfd < 0; attempt++) {
        number = ioctl(ctl, LOOP_CTL_GET_FREE);
        if (number < 0) break;
        char device[32];
        snprintf(device, sizeof device, "/dev/loop%d", number);
        int fd = open(device, O_RDWR | O_CLOEXEC);
        if (fd < 0) continue;
        struct loop_config config;
        memset(&config, 0, sizeof config);
        config.fd = (unsigned int)imgfd;
        config.info.lo_flags = LO_FLAGS_AUTOCLEAR | (read_only ? LO_FLAGS_READ_ONLY : 0);
        snprintf((char *)config.info.lo_file_name, sizeof config.info.lo_file_name, "%s", image);
        if (ioctl(fd, LOOP_CONFIGURE, &config) == 0) {
            loopfd = fd;
        } else {
            close(fd);   /* taken meanwhile (EBUSY): try the next free one */
        }
    }
    close(ctl);
    close(imgfd);
    if (loopfd < 0) {
        close(mpfd);
        return say(error, size, "no free loop device: %s", strerror(errno));
    }
    char device[32], target[64];
    snprintf(device, sizeof device, "/dev/loop%d", number);
    snprintf(target, sizeof target, "/proc/self/fd/%d", mpfd);
    unsigned long flags = MS_NOSUID | MS_NODEV | MS_NOATIME | (read_only ? MS_RDONLY : 0);
    if (mount(device, target, "ext4", flags, NULL) != 0) {
        int e = errno;
        ioctl(loopfd, LOOP_CLR_FD, 0);
        close(loopfd);
        close(mpfd);
        return say(error, size, "cannot mount %s as ext4 on %s: %s (only ext4 images are supported)", image, mountpoint, strerror(e));
    }
    close(loopfd);   /* autoclear: the device goes with the unmount */
    close(mpfd);
    return number;
}

int cmount_loopbox_umount(const char *home, const char *mountpoint, char *error, size_t size) {
    int homefd = open(home, O_PATH | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
    if (homefd < 0) return say(error, size, "the home %s cannot be opened: %s", home, strerror(errno));
    int mpfd = open_beneath(homefd, mountpoint, O_PATH | O_DIRECTORY, 1);
    close(homefd);
    if (mpfd < 0) return say(error, size, "mountpoint %s: %s", mountpoint, strerror(errno));
    char target[64];
    snprintf(target, sizeof target, "/proc/self/fd/%d", mpfd);
    int rc = umount2(target, MNT_DETACH);
    int e = errno;
    close(mpfd);
    if (rc != 0) return say(error, size, "cannot unmount %s: %s", mountpoint, strerror(e));
    return 0;
}

int cmount_make_shared(const char *path) {
    return mount(NULL, path, NULL, MS_SHARED, NULL) == 0 ? 0 : -errno;
}

long long cmount_image_size(const char *home, const char *image) {
    int homefd = open(home, O_PATH | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
    if (homefd < 0) return -1;
    int fd = open_beneath(homefd, image, O_PATH, 0);
    close(homefd);
    if (fd < 0) return -1;
    struct stat st;
    long long size = fstat(fd, &st) == 0 && S_ISREG(st.st_mode) ? (long long)st.st_size : -1;
    close(fd);
    return size;
}
