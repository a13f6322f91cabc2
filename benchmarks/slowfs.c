/* slowfs: a read-only FUSE passthrough that behaves like an overloaded
 * shared-filesystem metadata server, for benchmarks only.
 *
 *   slowfs BACKING_DIR MOUNTPOINT LATENCY_US [fuse options]
 *
 * Every metadata operation (getattr = lookup, readlink, opendir, readdir,
 * open, access, statfs) sleeps LATENCY_US while holding one global lock, so
 * only one is in service at a time (one metadata server).  Data reads are
 * not slowed.  Kernel attribute/entry caching is off.  BACKING_DIR may be
 * the mountpoint itself: it is opened before mounting and used through
 * *at() calls, so a tree can be slowed where it lies (absolute paths inside
 * a venv keep working). */
#define FUSE_USE_VERSION 31
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <fuse.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

static int base_fd = -1;
static long latency_us;
static pthread_mutex_t server = PTHREAD_MUTEX_INITIALIZER;

static void meta_op(void)
{
    pthread_mutex_lock(&server);
    struct timespec ts = {latency_us / 1000000, (latency_us % 1000000) * 1000};
    nanosleep(&ts, NULL);
    pthread_mutex_unlock(&server);
}

static const char *rel(const char *path)
{
    while (*path == '/')
        path++;
    return *path ? path : ".";
}

static void *sf_init(struct fuse_conn_info *conn, struct fuse_config *cfg)
{
    (void)conn;
    cfg->attr_timeout = 0;
    cfg->entry_timeout = 0;
    cfg->negative_timeout = 0;
    cfg->use_ino = 1;
    return NULL;
}

static int sf_getattr(const char *path, struct stat *st, struct fuse_file_info *fi)
{
    meta_op();
    int r = fi ? fstat((int)fi->fh, st) : fstatat(base_fd, rel(path), st, AT_SYMLINK_NOFOLLOW);
    return r ? -errno : 0;
}

static int sf_readlink(const char *path, char *buf, size_t size)
{
    meta_op();
    ssize_t n = readlinkat(base_fd, rel(path), buf, size - 1);
    if (n < 0)
        return -errno;
    buf[n] = 0;
    return 0;
}

static int sf_access(const char *path, int mask)
{
    meta_op();
    return faccessat(base_fd, rel(path), mask, 0) ? -errno : 0;
}

static int sf_opendir(const char *path, struct fuse_file_info *fi)
{
    meta_op();
    int fd = openat(base_fd, rel(path), O_RDONLY | O_DIRECTORY);
    if (fd < 0)
        return -errno;
    DIR *d = fdopendir(fd);
    if (!d) {
        close(fd);
        return -errno;
    }
    fi->fh = (uint64_t)(uintptr_t)d;
    return 0;
}

static int sf_readdir(const char *path, void *buf, fuse_fill_dir_t fill, off_t off,
                      struct fuse_file_info *fi, enum fuse_readdir_flags flags)
{
    (void)path; (void)off; (void)flags;
    meta_op();
    DIR *d = (DIR *)(uintptr_t)fi->fh;
    rewinddir(d);
    struct dirent *e;
    while ((e = readdir(d))) {
        struct stat st = {0};
        st.st_ino = e->d_ino;
        st.st_mode = (mode_t)DTTOIF(e->d_type);
        if (fill(buf, e->d_name, &st, 0, 0))
            break;
    }
    return 0;
}

static int sf_releasedir(const char *path, struct fuse_file_info *fi)
{
    (void)path;
    closedir((DIR *)(uintptr_t)fi->fh);
    return 0;
}

static int sf_open(const char *path, struct fuse_file_info *fi)
{
    meta_op();
    if ((fi->flags & O_ACCMODE) != O_RDONLY)
        return -EROFS;
    int fd = openat(base_fd, rel(path), fi->flags);
    if (fd < 0)
        return -errno;
    fi->fh = (uint64_t)fd;
    return 0;
}

static int sf_read(const char *path, char *buf, size_t size, off_t off, struct fuse_file_info *fi)
{
    (void)path;
    ssize_t n = pread((int)fi->fh, buf, size, off);
    return n < 0 ? -errno : (int)n;
}

static int sf_release(const char *path, struct fuse_file_info *fi)
{
    (void)path;
    close((int)fi->fh);
    return 0;
}

static int sf_statfs(const char *path, struct statvfs *sv)
{
    (void)path;
    meta_op();
    return fstatvfs(base_fd, sv) ? -errno : 0;
}

static const struct fuse_operations ops = {
    .init = sf_init, .getattr = sf_getattr, .readlink = sf_readlink, .access = sf_access,
    .opendir = sf_opendir, .readdir = sf_readdir, .releasedir = sf_releasedir,
    .open = sf_open, .read = sf_read, .release = sf_release, .statfs = sf_statfs,
};

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: %s BACKING_DIR MOUNTPOINT LATENCY_US [fuse options]\n", argv[0]);
        return 2;
    }
    base_fd = open(argv[1], O_RDONLY | O_DIRECTORY);
    if (base_fd < 0) {
        perror(argv[1]);
        return 1;
    }
    latency_us = atol(argv[3]);
    char *fargv[64];
    int fargc = 0;
    fargv[fargc++] = argv[0];
    fargv[fargc++] = argv[2];
    fargv[fargc++] = "-o";
    fargv[fargc++] = "ro,fsname=slowfs,auto_unmount";
    for (int i = 4; i < argc && fargc < 63; i++)
        fargv[fargc++] = argv[i];
    fargv[fargc] = NULL;
    return fuse_main(fargc, fargv, &ops, NULL);
}
