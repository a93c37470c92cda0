/* Loop mounts inside a directory a customer controls, without following anything the customer could plant. */
#ifndef CMOUNT_H
#define CMOUNT_H
#include <stddef.h>

/* Mounts the ext4 image `image` (relative to `home`) on the directory `mountpoint` (relative to `home`) through a
 * new autoclear loop device: both paths are resolved beneath `home` with no symlink anywhere (openat2
 * RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV), and the mount targets the opened directory itself
 * (/proc/self/fd), so swapping a path component for a symlink meanwhile changes nothing. nosuid, nodev,
 * noatime; read-only when `read_only`. Images smaller than `min_bytes` are refused.
 * Returns the loop device number (≥ 0), or -1 with a message for the operator/customer in `error`. */
int cmount_loopbox_mount(const char *home, const char *image, const char *mountpoint, int read_only, long long min_bytes,
                         char *error, size_t error_size);

/* Lazily unmounts whatever is mounted on `mountpoint` (relative to `home`, resolved as above but allowed to cross
 * into the mounted filesystem). Returns 0, or -1 with a message in `error`. */
int cmount_loopbox_umount(const char *home, const char *mountpoint, char *error, size_t error_size);

/* The size of the regular file `image` beneath `home` (resolved as above), or -1 if there is none. */
long long cmount_image_size(const char *home, const char *image);

/* Marks the mount at `path` shared, so mounts made under it later reach the containers that bind it (they hold
 * slave copies). Returns 0 or -errno. */
int cmount_make_shared(const char *path);
#endif
