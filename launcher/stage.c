/* Staging: rank 0 reads each package once, MPI carries the bytes to one
 * leader per node, leaders unpack into a private temporary directory and
 * rename it into place when every package is complete and verified.
 *
 * Waiting ranks never spin: they test a request and sleep (a spinning node
 * barrier made staging 10x slower on an oversubscribed node). */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ftw.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/mman.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "comm.h"
#include "config.h"
#include "manifest.h"
#include "nodes.h"
#include "sha256.h"
#include "stage.h"
#include "threads.h"
#include "unpack.h"

/* ---- node directories ------------------------------------------------ */

static void check_owned_dir(const char *path, const char *what)
{
    struct stat st;
    if (lstat(path, &st))
        pmb_die("%s %s: %s", what, path, strerror(errno));
    if (S_ISLNK(st.st_mode))
        pmb_die("%s %s is a symlink; refusing to follow it (set PYTHON_MPI_CHROOT to a real "
                "directory)", what, path);
    if (!S_ISDIR(st.st_mode))
        pmb_die("%s %s exists and is not a directory", what, path);
    if (st.st_uid != geteuid())
        pmb_die("%s %s is owned by uid %u, not by you (uid %u); choose another PYTHON_MPI_CHROOT",
                what, path, (unsigned)st.st_uid, (unsigned)geteuid());
    if (st.st_mode & 022)
        pmb_die("%s %s is writable by group or others (mode %03o); make it 0700 or choose "
                "another PYTHON_MPI_CHROOT", what, path, (unsigned)(st.st_mode & 0777));
}

/* Create the node directory (and missing parents) with mode 0700. */
static void make_node_dir(const char *dir)
{
    char tmp[PATH_MAX];
    snprintf(tmp, sizeof tmp, "%s", dir);
    for (char *s = strchr(tmp + 1, '/'); s; s = strchr(s + 1, '/')) {
        *s = 0;
        if (mkdir(tmp, 0700) && errno != EEXIST)
            pmb_die("cannot create %s (for PYTHON_MPI_CHROOT=%s): %s", tmp, pmb_cfg.chroot, strerror(errno));
        *s = '/';
    }
    if (mkdir(tmp, 0700) && errno != EEXIST)
        pmb_die("cannot create node directory %s: %s", tmp, strerror(errno));
    /* an existing directory on a read-only mount: that, not its mode, is the problem */
    struct statvfs sv;
    if (statvfs(dir, &sv) == 0 && (sv.f_flag & ST_RDONLY))
        pmb_die("node directory %s is on a read-only filesystem; set PYTHON_MPI_CHROOT to a "
                "writable node-local directory (e.g. /dev/shm/$SLURM_JOB_ID)", dir);
    check_owned_dir(dir, "node directory");
}

/* some layer holds programs (an interpreter or an environment, not only a
 * plain directory of data) */
static int stage_needs_exec;

static void check_space(const char *dir, uint64_t need, uint64_t files)
{
    struct statvfs sv;
    if (statvfs(dir, &sv))
        pmb_die("cannot stat filesystem of %s: %s", dir, strerror(errno));
    /* stage-only too: the next step runs the staged interpreter from there */
    if (stage_needs_exec && (sv.f_flag & ST_NOEXEC))
        pmb_die("node directory %s is on a noexec mount; set PYTHON_MPI_CHROOT to a directory "
                "on a filesystem mounted with exec", dir);
    uint64_t avail = (uint64_t)sv.f_bavail * (uint64_t)sv.f_frsize;
    /* sizes come from range-checked manifests (< 2^63 each): saturate */
    uint64_t want = need > UINT64_MAX - (1u << 20) ? UINT64_MAX : need + (1u << 20);
    uint64_t meta = files > UINT64_MAX / 2048 ? UINT64_MAX : files * 2048;
    want = want > UINT64_MAX - meta ? UINT64_MAX : want + meta;
    if (avail < want)
        pmb_die("node directory %s has %.1f MB free, the packages need %.1f MB unpacked; free "
                "space or set PYTHON_MPI_CHROOT elsewhere", dir, avail / 1e6, want / 1e6);
}

/* ---- ready trees and concurrent steps --------------------------------
 * A tree is ready when it holds the stamp PMB_READY, written right after the
 * rename with the tree's ctime at that moment: anything changed, added or
 * removed in the tree later has a newer ctime (the entry or its directory),
 * so a step that would reuse the tree notices and stages it again.
 * One step at a time stages a given tree into a node directory (flock on
 * .pmb-lock-<id>); a step that finds it locked does not unpack but, after
 * the broadcast (never inside a collective, so two steps cannot deadlock),
 * waits for the lock and uses the other step's tree. */
#define PMB_READY ".pmb-ready"

static struct timespec ready_base;
static char changed_path[PATH_MAX];

static int newer_than_base(const char *path, const struct stat *st, int flag, struct FTW *f)
{
    if (f->level == 1 && strcmp(path + f->base, PMB_READY) == 0)
        return 0;
    if (flag == FTW_NS || flag == FTW_DNR || st->st_ctim.tv_sec > ready_base.tv_sec ||
        (st->st_ctim.tv_sec == ready_base.tv_sec && st->st_ctim.tv_nsec > ready_base.tv_nsec)) {
        snprintf(changed_path, sizeof changed_path, "%s", path);
        return 1;
    }
    return 0;
}

/* 1 if `tree` is complete and unchanged since it was staged; else 0 and why */
static int tree_intact(const char *tree, char *why, size_t len)
{
    char stamp[PATH_MAX], buf[64];
    snprintf(stamp, sizeof stamp, "%s/" PMB_READY, tree);
    int fd = open(stamp, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        snprintf(why, len, "%s is missing (not staged by this launcher, or damaged)", PMB_READY);
        return 0;
    }
    ssize_t r = read(fd, buf, sizeof buf - 1);
    close(fd);
    long long sec, nsec;
    if (r <= 0 || (buf[r] = 0, sscanf(buf, "%lld.%lld", &sec, &nsec) != 2)) {
        snprintf(why, len, "%s is unreadable", PMB_READY);
        return 0;
    }
    ready_base.tv_sec = (time_t)sec;
    ready_base.tv_nsec = (long)nsec;
    changed_path[0] = 0;
    int rc = nftw(tree, newer_than_base, 16, FTW_PHYS);
    if (rc == 1) {
        snprintf(why, len, "%s was changed after staging", changed_path);
        return 0;
    }
    if (rc) {
        snprintf(why, len, "cannot read it: %s", strerror(errno));
        return 0;
    }
    return 1;
}

static void write_ready(const char *tree)
{
    char stamp[PATH_MAX], buf[64];
    snprintf(stamp, sizeof stamp, "%s/" PMB_READY, tree);
    int fd = open(stamp, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
    struct stat st;
    if (fd < 0 || stat(tree, &st))
        pmb_die("cannot write %s: %s", stamp, strerror(errno));
    int n = snprintf(buf, sizeof buf, "%lld.%09ld\n", (long long)st.st_ctim.tv_sec,
                     (long)st.st_ctim.tv_nsec);
    if (write(fd, buf, (size_t)n) != n || close(fd))
        pmb_die("cannot write %s: %s", stamp, strerror(errno));
}

/* Take the node's lock for tree `id`; -1 if another step holds it. */
static int lock_tree(const char *chroot, const char *id, int wait)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/.pmb-lock-%s", chroot, id);
    long ns = 1000000;
    for (;;) {
        int fd = open(path, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
        if (fd < 0)
            pmb_die("cannot create %s: %s", path, strerror(errno));
        if (flock(fd, LOCK_EX | LOCK_NB) == 0) {
            struct stat a, b; /* still the file under that name (not unlinked by its holder)? */
            if (fstat(fd, &a) == 0 && stat(path, &b) == 0 && a.st_ino == b.st_ino && a.st_dev == b.st_dev)
                return fd;
        } else if (errno != EWOULDBLOCK) {
            pmb_die("cannot lock %s: %s", path, strerror(errno));
        } else if (!wait) {
            close(fd);
            return -1;
        }
        close(fd);
        pmb_backoff(&ns, 100000000);
    }
}

static void unlock_tree(const char *chroot, const char *id, int fd)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/.pmb-lock-%s", chroot, id);
    unlink(path);
    close(fd);
}

/* A tree's names: env-<id>, or env-<id>.<k> when a damaged one that a
 * running step may use still holds the first name (it is never removed
 * from under a step: a new tree is staged beside it). */
#define PMB_TREE_NAMES 16

static void tree_name(char *out, size_t len, const char *chroot, const char *id, int k)
{
    if (k == 0)
        snprintf(out, len, "%s/env-%s", chroot, id);
    else
        snprintf(out, len, "%s/env-%s.%d", chroot, id, k);
}

/* An intact tree of `id`, with this rank's hold on it taken: 1 and its
 * path in `tree`.  `report`: say what is wrong with the damaged ones, remove
 * those nobody holds; *free_k: the first name free afterwards (-1: none; -2: no tree of that id at all). */
static int find_ready(const char *chroot, const char *id, char *tree, int report, int *free_k)
{
    char path[PATH_MAX], why[PATH_MAX + 128];
    struct stat st;
    *free_k = -1;
    int seen = 0;
    for (int k = 0; k < PMB_TREE_NAMES; k++) {
        tree_name(path, sizeof path, chroot, id, k);
        if (lstat(path, &st)) {
            if (*free_k < 0)
                *free_k = k;
            continue;
        }
        seen++;
        check_owned_dir(path, "staged tree");
        int held = pmb_hold_take(path) == 0;
        if (held && tree_intact(path, why, sizeof why)) {
            snprintf(tree, PATH_MAX, "%s", path);
            return 1;
        }
        if (held)
            pmb_hold_release();
        else
            tree_intact(path, why, sizeof why);
        /* a damaged tree goes as soon as nobody holds it */
        int rc = pmb_tree_remove_damaged(path);
        if (rc == PMB_TREE_REMOVED && *free_k < 0)
            *free_k = k;
        if (!report && rc != PMB_TREE_REMOVED)
            continue; /* said once, by the pass under the staging lock */
        fprintf(stderr, "python-mpi: %s (rank %d): staged tree %s: %s; %s\n", pmb_host(),
                pmb_c.world_rank, path, why,
                rc == PMB_TREE_REMOVED ? "staging it again" :
                "staging a new tree beside it (a running job step may use it; it is removed "
                "once its jobs are over)");
    }
    if (!seen)
        *free_k = -2; /* none at all */
    return 0;
}

enum { PMB_NODE_STAGES, PMB_NODE_READY, PMB_NODE_WAITS };

/* Node leader: reuse the tree (its path in `tree`), stage it (lock taken:
 * *lockfd; the name to stage into in `tree`), or wait for another step
 * that is staging it. */
static int node_claim(const char *chroot, char *tree, const char *id, uint64_t need,
                      uint64_t files, int *lockfd)
{
    int free_k;
    if (find_ready(chroot, id, tree, 0, &free_k))
        return PMB_NODE_READY;
    if (free_k == -2) /* nothing of it here: no room means nothing is written */
        check_space(chroot, need, files);
    int fd = lock_tree(chroot, id, 0);
    if (fd < 0)
        return PMB_NODE_WAITS;
    /* under the lock: a step may just have finished; damaged trees go or stay */
    if (find_ready(chroot, id, tree, 1, &free_k)) {
        unlock_tree(chroot, id, fd);
        return PMB_NODE_READY;
    }
    if (free_k == -2)
        free_k = 0;
    if (free_k < 0)
        pmb_die("node directory %s holds %d damaged trees of these packages that running job "
                "steps may use; end those steps or remove them (python-mpi-bcast clean --all %s)",
                chroot, PMB_TREE_NAMES, chroot);
    tree_name(tree, PATH_MAX, chroot, id, free_k);
    check_space(chroot, need, files);
    *lockfd = fd;
    return PMB_NODE_STAGES;
}

/* After the broadcast: wait until the step that holds the lock is done;
 * the seconds waited. */
static double wait_for_other_step(const char *chroot, char *tree, const char *id)
{
    double t0 = pmb_now();
    int fd = lock_tree(chroot, id, 1), free_k;
    if (!find_ready(chroot, id, tree, 0, &free_k)) {
        unlock_tree(chroot, id, fd);
        pmb_die("another job step staging %s on this node ended without a complete tree (killed "
                "or failed); run this step again", tree);
    }
    unlock_tree(chroot, id, fd);
    double waited = pmb_now() - t0;
    if (pmb_cfg.verbose >= 2)
        pmb_log("rank %d (node %d): waited %.3f s for another job step staging %s",
                pmb_c.world_rank, pmb_c.node_index, waited, tree);
    return waited;
}

/* ---- a tree built from the node's earlier tree -------------------------
 * When only the last layer, a directory layer, differs from a ready tree
 * on the node (an edit under `run --with-dir`), the leader copies the
 * earlier tree's other layers into the new tree (its base record beside it
 * says which entries those are, nodes.c) and only the new directory layer
 * travels.  Copies, not hard links: a link or unlink changes the inode's
 * ctime, which is how a ready tree tells it was changed (tree_intact).  The
 * earlier tree is only read, under a shared hold: a step may run from it. */
typedef struct {
    char *data;   /* the base record, NUL-separated entries */
    size_t len;
} base_record;

static int read_base(const char *tree, base_record *b)
{
    char path[PATH_MAX + 16];
    pmb_tree_base_file(tree, path, sizeof path);
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) || !S_ISREG(st.st_mode)) {
        if (fd >= 0)
            close(fd);
        return 0;
    }
    b->len = (size_t)st.st_size;
    b->data = pmb_xmalloc(b->len + 1);
    size_t got = pmb_read_full(fd, b->data, b->len);
    close(fd);
    b->data[got] = 0;
    if (got != b->len || (got && b->data[got - 1] != 0)) {
        free(b->data);
        b->data = NULL;
        return 0;
    }
    return 1;
}

/* One entry of a base record (what the tree held before its last layer). */
typedef struct {
    char type; /* 'd', 'l', 'f' */
    unsigned mode;
    unsigned long long ino;
    long long sec;
    long nsec; /* ctime */
    const char *rel;
} base_entry;

/* The next entry of a base record: 0 at the end, -1 if malformed. */
static int base_next(const base_record *b, size_t *pos, base_entry *x)
{
    if (*pos >= b->len)
        return 0;
    const char *e = b->data + *pos;
    int used = 0;
    if (sscanf(e, "%c %o %llu %lld.%ld %n", &x->type, &x->mode, &x->ino, &x->sec, &x->nsec,
               &used) != 5 || !used || !e[used] || pmb_path_problem(e + used, strlen(e + used)))
        return -1;
    x->rel = e + used;
    *pos += strlen(e) + 1;
    return 1;
}

/* Whether every file and link the base record names is still in `tree`
 * as it was when the record was written (the directory layer may have
 * replaced some). */
static int base_usable(const char *tree, const base_record *b)
{
    size_t pos = 0;
    char path[PATH_MAX * 2];
    base_entry x;
    int rc;
    while ((rc = base_next(b, &pos, &x)) == 1) {
        struct stat st;
        snprintf(path, sizeof path, "%s/%s", tree, x.rel);
        if (lstat(path, &st))
            return 0;
        if (x.type == 'd' ? !S_ISDIR(st.st_mode) : x.type == 'l' ? !S_ISLNK(st.st_mode) :
            x.type == 'f' ? !S_ISREG(st.st_mode) : 1)
            return 0;
        if (x.type != 'd' && (st.st_ino != x.ino || st.st_ctim.tv_sec != x.sec ||
                              st.st_ctim.tv_nsec != x.nsec))
            return 0;
    }
    return rc == 0;
}

/* A ready, intact tree in `chroot` that can be the base of `tree` (whose
 * path has the same length: the copied prefixes are patched in place):
 * its path in `base`, held (*holdfd) and its record read.  0 if none. */
static int find_base(const char *chroot, const char *tree, pmb_manifest *ms, int n, char *base,
                     int *holdfd, base_record *rec)
{
    if (n < 2 || strcmp(ms[n - 1].kind, "directory"))
        return 0;
    DIR *d = opendir(chroot);
    struct dirent *e;
    int found = 0;
    while (d && !found && (e = readdir(d))) {
        char path[PATH_MAX], why[PATH_MAX + 128];
        if (snprintf(path, sizeof path, "%s/%s", chroot, e->d_name) >= (int)sizeof path ||
            strlen(path) != strlen(tree) || !strcmp(path, tree) || !pmb_tree_is_base_of(path, ms, n))
            continue;
        struct stat st;
        if (lstat(path, &st) || !S_ISDIR(st.st_mode) || st.st_uid != geteuid())
            continue;
        int fd = pmb_hold_other(path);
        if (fd < 0)
            continue;
        if (tree_intact(path, why, sizeof why) && read_base(path, rec)) {
            if (base_usable(path, rec)) {
                snprintf(base, PATH_MAX, "%s", path);
                *holdfd = fd;
                found = 1;
                break;
            }
            free(rec->data);
            rec->data = NULL;
        }
        close(fd);
    }
    if (d)
        closedir(d);
    return found;
}

static void copy_fail(const char *chroot, const char *what, const char *path)
{
    if (errno == ENOSPC)
        pmb_die("no space left in %s while copying %s from the node's earlier tree; set "
                "PYTHON_MPI_CHROOT to a directory with more room", chroot, path);
    pmb_die("cannot %s %s (copying the node's earlier tree): %s", what, path, strerror(errno));
}

static void copy_file(const char *chroot, const char *from, const char *to)
{
    int in = open(from, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    struct stat st;
    if (in < 0 || fstat(in, &st))
        copy_fail(chroot, "read", from);
    int out = open(to, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (out < 0)
        copy_fail(chroot, "create", to);
    off_t left = st.st_size;
    static char buf[1 << 20];
    int plain = 0;
    while (left > 0) {
        ssize_t w = -1;
        if (!plain) {
            w = copy_file_range(in, NULL, out, NULL, (size_t)left, 0);
            if (w < 0 && (errno == EXDEV || errno == ENOSYS || errno == EINVAL || errno == EOPNOTSUPP)) {
                plain = 1;
                continue;
            }
        } else {
            size_t want = (size_t)left < sizeof buf ? (size_t)left : sizeof buf;
            size_t r = pmb_read_full(in, buf, want);
            if (!r)
                copy_fail(chroot, "read", from);
            if (pmb_write_all(out, buf, r))
                copy_fail(chroot, "write", to);
            w = (ssize_t)r;
        }
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            copy_fail(chroot, "write", to);
        left -= w;
    }
    struct timespec ts[2] = {st.st_mtim, st.st_mtim};
    if (fchmod(out, st.st_mode & 0777) || futimens(out, ts))
        copy_fail(chroot, "set mode and times of", to);
    if (close(out))
        copy_fail(chroot, "write", to);
    close(in);
}

/* Copy the base of `base` into `tmp`, patch the prefixes of the first n-1
 * layers for `tree`; files and bytes copied in files/bytes. */
static void build_base(const char *chroot, const char *base, const base_record *rec,
                       const char *tmp, const char *tree, pmb_manifest *ms, int n,
                       uint64_t *files, uint64_t *bytes)
{
    size_t pos = 0;
    char from[PATH_MAX * 2], to[PATH_MAX * 2];
    base_entry x;
    int rc;
    while ((rc = base_next(rec, &pos, &x)) == 1) {
        snprintf(from, sizeof from, "%s/%s", base, x.rel);
        snprintf(to, sizeof to, "%s/%s", tmp, x.rel);
        if (x.type == 'd') {
            if (mkdir(to, 0700) || chmod(to, (x.mode & 0777) | 0700))
                copy_fail(chroot, "create directory", to);
        } else if (x.type == 'l') {
            char target[PATH_MAX];
            ssize_t r = readlink(from, target, sizeof target - 1);
            if (r < 0)
                copy_fail(chroot, "read link", from);
            target[r] = 0;
            if (symlink(target, to))
                copy_fail(chroot, "create link", to);
        } else {
            struct stat st;
            copy_file(chroot, from, to);
            if (lstat(to, &st) == 0)
                *bytes += (uint64_t)st.st_size;
            (*files)++;
        }
    }
    if (rc < 0)
        pmb_die("base record of %s is damaged; remove that tree (python-mpi-bcast clean %s)",
                base, chroot);
    for (int i = 0; i < n - 1; i++)
        pmb_repatch_prefixes(tmp, base, tree, &ms[i]);
}

/* ---- the broadcast pipeline ------------------------------------------ */

static MPI_Request *poke_reqs;
static int poke_n;

/* MPI progress while this thread unpacks (inline mode only: otherwise this
 * thread waits for the workers and drives MPI itself) */
static void poke(void)
{
    int flag;
    if (poke_n)
        MPI_Testall(poke_n, poke_reqs, &flag, MPI_STATUSES_IGNORE);
}

static void read_exact(int fd, unsigned char *buf, size_t n, const char *file)
{
    size_t got = pmb_read_full(fd, buf, n);
    if (got < n)
        pmb_die("package '%s': read failed after %zu of %zu bytes: %s", file, got, n,
                errno ? strerror(errno) : "unexpected end of file (truncated?)");
}

/* Where the chunks live: on a node that unpacks with several ranks, in a
 * file in the node directory that the leader creates and every unpacking
 * rank maps (MAP_SHARED), so all read the bytes the leader received without
 * another copy.  Plain POSIX shared memory works with every MPI (MPI RMA
 * windows did not: Open MPI from PyPI hangs in MPI_Win_allocate_shared).
 * The file is unlinked as soon as everyone has mapped it. */
typedef struct {
    unsigned char *base;
    size_t size;
    int mapped;
} pmb_buffers;

/* The buffers all unpacking ranks of a node share: a file in the node
 * directory, mapped by each and unlinked once all have it.  Named after the
 * tree `id` whose staging lock its creator holds, so that one a killed step
 * leaves is removed by the next step on that node (pmb_reclaim). */
static void buffers_open(pmb_buffers *b, size_t size, MPI_Comm unpackers, const char *dir,
                         const char *id)
{
    memset(b, 0, sizeof *b);
    b->size = size;
    int nw = 1;
    if (unpackers != MPI_COMM_NULL)
        MPI_Comm_size(unpackers, &nw);
    if (nw <= 1) {
        if (pmb_c.node_rank == 0)
            b->base = pmb_xmalloc(size);
        return;
    }
    char path[PATH_MAX] = "";
    int fd = -1;
    if (pmb_c.node_rank == 0) {
        snprintf(path, sizeof path, "%s/.pmb-chunks-%s.XXXXXX", dir, id);
        fd = mkstemp(path);
        if (fd < 0 || ftruncate(fd, (off_t)size))
            pmb_die("cannot create the staging buffer %s: %s", path, strerror(errno));
    }
    MPI_Bcast(path, PATH_MAX, MPI_CHAR, 0, unpackers);
    if (pmb_c.node_rank != 0) {
        fd = open(path, O_RDWR | O_CLOEXEC | O_NOFOLLOW);
        if (fd < 0)
            pmb_die("cannot open the staging buffer %s: %s", path, strerror(errno));
    }
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED)
        pmb_die("cannot map the staging buffer %s (%zu bytes): %s; lower PYTHON_MPI_CHUNK",
                path, size, strerror(errno));
    close(fd);
    MPI_Request r;
    MPI_Ibarrier(unpackers, &r);
    pmb_wait(&r);
    if (pmb_c.node_rank == 0)
        unlink(path);
    b->base = p;
    b->mapped = 1;
}

static void buffers_close(pmb_buffers *b)
{
    if (b->mapped)
        munmap(b->base, b->size);
    else
        free(b->base);
}

/* How a node's unpacking ranks work together: `unpackers` (leader first)
 * for setup and totals, and two duplicates of it, one for "chunk k is in
 * the buffer" and one for "chunk k is unpacked", so the barriers of the two
 * streams never interleave on one communicator.  threads/first: this rank's
 * worker threads and the index of its first worker; workers: the node's. */
typedef struct {
    MPI_Comm comm, ready, done;
    int nw, me;
    int threads, first, workers, inline_mode;
} pmb_team;

/* One package moving through a node: its chunks posted (leader), in the
 * node (ready) and unpacked by every worker of the node (done_all). */
typedef struct {
    const pmb_manifest *m;
    int fd, unpack, leader, root, sync, nbuf;
    uint64_t chunk, total, nchunks;
    const pmb_team *tm;
    pmb_buffers *bufs;
    pmb_pool *pool;
    MPI_Request req[8];
    uint64_t posted, ready, done_all, done_asked;
    MPI_Request rdy, dn;
    int rdy_on, dn_on;
    double t_in;
    pmb_stage_report *rep;
} pmb_flow;

static size_t chunk_len(const pmb_flow *fl, uint64_t k)
{
    return (size_t)((k + 1) * fl->chunk > fl->total ? fl->total - k * fl->chunk : fl->chunk);
}

/* The leader refills every buffer the whole node is done with and whose
 * previous broadcast has completed on this rank (chunk posted - nbuf is
 * in: ready).  done_all alone is not enough: when every worker has failed
 * it says "all done", and an Ibcast into a buffer still in flight would
 * forward overwritten bytes to the nodes below this one (they reported a
 * corrupt package).  1 if a chunk was posted. */
static int post_chunks(pmb_flow *fl)
{
    int moved = 0;
    const uint64_t nbuf = (uint64_t)fl->nbuf;
    while (fl->leader && fl->posted < fl->nchunks && fl->posted < fl->done_all + nbuf &&
           fl->posted < fl->ready + nbuf) {
        unsigned char *b = fl->bufs->base + (fl->posted % nbuf) * fl->chunk;
        if (fl->root) {
            double tr = pmb_now();
            read_exact(fl->fd, b, chunk_len(fl, fl->posted), fl->m->file);
            fl->rep->read += pmb_now() - tr;
        }
        MPI_Ibcast(b, (int)chunk_len(fl, fl->posted), MPI_BYTE, 0, pmb_c.leaders,
                   &fl->req[fl->posted % nbuf]);
        fl->posted++;
        moved = 1;
    }
    return moved;
}

/* Chunk `ready` arrived (and every unpacking rank of the node knows); the
 * leader tests only posted chunks (a finished request tests true).  1 if
 * it did. */
static int take_ready(pmb_flow *fl)
{
    if (fl->ready >= fl->nchunks || (fl->leader && fl->ready >= fl->posted))
        return 0;
    int in = 1;
    if (fl->leader)
        MPI_Test(&fl->req[fl->ready % (uint64_t)fl->nbuf], &in, MPI_STATUS_IGNORE);
    if (in && fl->sync) {
        if (!fl->rdy_on) {
            __atomic_thread_fence(__ATOMIC_SEQ_CST);
            MPI_Ibarrier(fl->tm->ready, &fl->rdy);
            fl->rdy_on = 1;
        }
        MPI_Test(&fl->rdy, &in, MPI_STATUS_IGNORE);
        if (in) {
            fl->rdy_on = 0;
            __atomic_thread_fence(__ATOMIC_SEQ_CST);
        }
    }
    if (!in)
        return 0;
    fl->ready++;
    if (fl->pool)
        pmb_pool_publish(fl->pool, fl->ready);
    if (fl->ready == fl->nchunks)
        fl->t_in = pmb_now();
    return 1;
}

/* Chunks every worker of the node is done with (done_all); 1 if the
 * node's barrier on one more just completed. */
static int take_done(pmb_flow *fl)
{
    if (!fl->unpack) {
        fl->done_all = fl->ready;
        return 0;
    }
    if (!fl->sync) {
        fl->done_all = pmb_pool_done(fl->pool);
        return 0;
    }
    if (!fl->dn_on && fl->done_asked < pmb_pool_done(fl->pool)) {
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        MPI_Ibarrier(fl->tm->done, &fl->dn);
        fl->dn_on = 1;
        fl->done_asked++;
    }
    if (fl->dn_on) {
        int f;
        MPI_Test(&fl->dn, &f, MPI_STATUS_IGNORE);
        if (f) {
            fl->dn_on = 0;
            fl->done_all++;
            return 1;
        }
    }
    return 0;
}

/* Move one package from rank 0 to every node and, where `unpack`, into
 * `tmp` on that node.  Leaders take part in the broadcast; the unpacking
 * ranks of a node share the chunks through `bufs`, each rank's threads
 * unpack their own shards.  Up to nbuf chunks are in flight: a buffer is
 * refilled once every worker of the node is done with its chunk, so
 * unpacking runs while later chunks arrive.  Only this thread calls MPI.
 * Adds to rep: read, bcast (until the last chunk is in), unpack (the rest). */
static void stage_package(pmb_manifest *m, int fd, int unpack, const pmb_team *tm,
                          pmb_buffers *bufs, const char *tmp, pmb_stage_report *rep,
                          uint64_t *files_out, uint64_t *bytes_out)
{
    pmb_flow fl = {.m = m, .fd = fd, .unpack = unpack, .tm = tm, .bufs = bufs, .rep = rep,
                   .chunk = pmb_cfg.chunk, .total = m->payload_size, .nbuf = pmb_cfg.nbuf,
                   .leader = pmb_c.node_rank == 0, .root = pmb_c.world_rank == 0,
                   .sync = unpack && tm->nw > 1, .rdy = MPI_REQUEST_NULL,
                   .dn = MPI_REQUEST_NULL};
    fl.nchunks = (fl.total + fl.chunk - 1) / fl.chunk;
    for (int i = 0; i < fl.nbuf; i++)
        fl.req[i] = MPI_REQUEST_NULL;
    if (fl.root && lseek(fd, (off_t)m->payload_start, SEEK_SET) < 0)
        pmb_die("package '%s': seek failed: %s", m->file, strerror(errno));

    int *owner = NULL;
    if (unpack) {
        owner = pmb_xmalloc(sizeof(int) * (size_t)m->nshards);
        pmb_assign_shards(m, tm->workers, owner);
        fl.pool = pmb_pool_new(tmp, m, owner, tm->first, tm->threads, bufs->base, fl.chunk,
                               fl.nbuf, tm->inline_mode);
    }
    if (fl.leader && (!unpack || tm->inline_mode)) {
        poke_reqs = fl.req;
        poke_n = fl.nbuf;
        pmb_set_poke(poke);
    }

    long ns = 1000;
    double t0 = pmb_now();
    for (;;) {
        /* a worker failed (the node's memory is full, a shard is corrupt):
         * this rank reports it and ends the job now, while its requests
         * are still sound (pmb_pool_check dies when the message is settled) */
        if (fl.pool)
            pmb_pool_check(fl.pool);
        int moved = post_chunks(&fl);
        moved |= take_ready(&fl);
        moved |= take_done(&fl);
        if (fl.done_all >= fl.nchunks && fl.ready >= fl.nchunks)
            break;
        if (moved) {
            ns = 1000;
            continue;
        }
        if (!fl.pool) {
            pmb_backoff(&ns, 1000000);
            continue;
        }
        pmb_pool_wait(fl.pool, ns);
        if (ns < 1000000)
            ns *= 2;
    }
    if (!fl.t_in)
        fl.t_in = pmb_now();
    rep->bcast += fl.t_in - t0;
    rep->unpack += pmb_now() - fl.t_in;
    if (fl.leader) {
        poke_n = 0;
        pmb_set_poke(NULL);
    }
    if (!unpack)
        return;
    uint64_t counts[2] = {0, 0}, sums[2] = {0, 0};
    pmb_pool_finish(fl.pool, &counts[0], &counts[1]);
    free(owner);
    if (fl.sync) {
        MPI_Request r;
        MPI_Iallreduce(counts, sums, 2, MPI_UINT64_T, MPI_SUM, tm->comm, &r);
        pmb_wait(&r);
    } else {
        memcpy(sums, counts, sizeof sums);
    }
    if (fl.leader)
        pmb_check_totals(m, sums[0], sums[1]);
    *files_out += sums[0];
    *bytes_out += sums[1];
}

/* The tree directory name: the first 128 bits of the SHA-256 of the
 * layers' tree keys in order (manifest.c: content hash, kind, prefix
 * lines).  The content hash covers every shard's SHA-256 and the unpacker
 * checks each shard against its line, so a tree of this name only ever
 * holds bytes these manifests list: a package whose frames differ from
 * its manifest is refused, never staged under the original's name. */
static void tree_id(pmb_manifest *ms, int n, char out[33])
{
    pmb_sha256_ctx h;
    unsigned char d[32];
    pmb_sha256_init(&h);
    for (int i = 0; i < n; i++)
        pmb_sha256_update(&h, ms[i].tree_key, 32);
    pmb_sha256_final(&h, d);
    for (int k = 0; k < 16; k++)
        snprintf(out + 2 * k, 3, "%02x", d[k]);
}

/* The node's unpacking ranks (this one if `unpacker`) as a team, with
 * each rank's threads and the index of its first worker.  Collective on
 * the node. */
static void team_open(pmb_team *team, int unpacker)
{
    MPI_Comm unpackers;
    MPI_Comm_split(pmb_c.node, unpacker ? 0 : MPI_UNDEFINED, pmb_c.node_rank, &unpackers);
    *team = (pmb_team){MPI_COMM_NULL, MPI_COMM_NULL, MPI_COMM_NULL, 1, 0, 1, 0, 1, 0};
    team->inline_mode = pmb_thread_level < MPI_THREAD_FUNNELED;
    if (unpackers == MPI_COMM_NULL)
        return;
    team->comm = unpackers;
    MPI_Comm_size(unpackers, &team->nw);
    MPI_Comm_rank(unpackers, &team->me);
    MPI_Comm_dup(unpackers, &team->ready);
    MPI_Comm_dup(unpackers, &team->done);
    /* threads per rank, and where each rank's workers start */
    team->threads = pmb_threads_for(unpackers);
    int *per = pmb_xmalloc(sizeof(int) * (size_t)team->nw);
    MPI_Request r;
    MPI_Iallgather(&team->threads, 1, MPI_INT, per, 1, MPI_INT, unpackers, &r);
    pmb_wait(&r);
    team->first = team->workers = 0;
    for (int i = 0; i < team->nw; i++) {
        if (i < team->me)
            team->first += per[i];
        team->workers += per[i];
    }
    free(per);
}

static void team_close(pmb_team *team)
{
    if (team->comm == MPI_COMM_NULL)
        return;
    MPI_Comm_free(&team->ready);
    MPI_Comm_free(&team->done);
    MPI_Comm_free(&team->comm);
}

/* Layers first..n-1 from rank 0 into `tmp` on every node that stages.
 * Layers apply in order: all of one, then its prefixes, before the next
 * (the node's unpacking ranks wait for each other in between). */
static void send_layers(pmb_manifest *ms, int first, int n, const int *fds, int unpacker,
                        const pmb_team *team, pmb_buffers *bufs, const char *tmp,
                        const char *tree, pmb_stage_report *rep, uint64_t *nf, uint64_t *nb)
{
    for (int i = first; i < n; i++) {
        int team_up = unpacker && team->comm != MPI_COMM_NULL;
        MPI_Request r;
        if (team_up && ms[i].nsplits) { /* the split files exist before any piece comes */
            if (pmb_c.node_rank == 0)
                pmb_split_create(tmp, &ms[i]);
            MPI_Ibarrier(team->comm, &r);
            pmb_wait(&r);
        }
        stage_package(&ms[i], pmb_c.world_rank == 0 ? fds[i] : -1, unpacker, team, bufs, tmp,
                      rep, nf, nb);
        if (!team_up)
            continue;
        MPI_Ibarrier(team->comm, &r);
        pmb_wait(&r);
        if (pmb_c.node_rank == 0) {
            pmb_split_finish(tmp, &ms[i]); /* every rank's pieces are in */
            pmb_patch_prefixes(tmp, tree, &ms[i]);
            /* what the tree holds before a last directory layer */
            if (i == n - 2 && !strcmp(ms[n - 1].kind, "directory"))
                pmb_tree_write_base(tmp, tree);
        }
        MPI_Ibarrier(team->comm, &r);
        pmb_wait(&r);
    }
}

/* The leader's last step: the complete tree `tmp` becomes `tree` (or goes,
 * when another step finished first), held and marked ready; the staging
 * lock is given back and older trees this one supersedes go. */
static void publish_tree(const char *chroot, const char *id, const char *tmp, const char *tree,
                         int lockfd, pmb_manifest *ms, int n)
{
    pmb_tree_init_jobs(tree);
    pmb_tree_init_layers(tree, ms, n);
    if (chmod(tmp, 0700))
        pmb_die("cannot chmod %s: %s", tmp, strerror(errno));
    if (rename(tmp, tree)) {
        if (errno == EEXIST || errno == ENOTEMPTY)
            pmb_rmtree(tmp); /* another step finished first; its tree is complete */
        else
            pmb_die("cannot rename %s to %s: %s", tmp, tree, strerror(errno));
    } else {
        write_ready(tree);
    }
    if (pmb_hold_take(tree))
        pmb_die("staged tree %s vanished right after staging: %s", tree, strerror(errno));
    unlock_tree(chroot, id, lockfd);
    pmb_remove_superseded(tree, ms, n);
}

/* rank 0 learns how many nodes waited for another step's staging, and
 * how long at most (its summary must not say "already staged") */
static void gather_waits(int waits, double waited, pmb_stage_report *rep)
{
    double nwaited = waits, most = 0;
    if (pmb_c.leaders != MPI_COMM_NULL) {
        MPI_Request r[2];
        double one = waits;
        MPI_Ireduce(&one, &nwaited, 1, MPI_DOUBLE, MPI_SUM, 0, pmb_c.leaders, &r[0]);
        MPI_Ireduce(&waited, &most, 1, MPI_DOUBLE, MPI_MAX, 0, pmb_c.leaders, &r[1]);
        pmb_wait(&r[0]);
        pmb_wait(&r[1]);
    }
    rep->waited = (int)nwaited; /* on rank 0 */
    rep->wait = most;
}

/* Stage all packages; return the path of the ready tree (same on all ranks
 * of a node); what it did in *rep (the waits on rank 0 only). */
char *pmb_stage(pmb_manifest *ms, int n, int *fds, pmb_stage_report *rep)
{
    double t_start = pmb_now();
    /* one node: nothing to relay, so small chunks let unpacking start while
     * the rest still arrives (the 16M default suits relaying between nodes) */
    if (!pmb_cfg.chunk_set && pmb_c.nnodes == 1) {
        pmb_cfg.chunk = 4u << 20;
        pmb_cfg.nbuf = 8;
    }
    char *chroot = pmb_expand_chroot(pmb_cfg.chroot, pmb_c.node_index);
    for (int i = 0; i < n; i++)
        stage_needs_exec |= strcmp(ms[i].kind, "directory") != 0;
    char id[33];
    tree_id(ms, n, id);
    char *tree = pmb_xmalloc(PATH_MAX);
    snprintf(tree, PATH_MAX, "%s/env-%s", chroot, id);

    int have = 1, waits = 0, lockfd = -1, local = 1, basefd = -1;
    char base[PATH_MAX] = "";
    base_record rec = {NULL, 0};
    uint64_t need = 0, files = 0;
    for (int i = 0; i < n; i++) { /* each < 2^63, n small: saturate */
        need = need > UINT64_MAX - ms[i].unpacked_size ? UINT64_MAX : need + ms[i].unpacked_size;
        files = files > UINT64_MAX - ms[i].files ? UINT64_MAX : files + ms[i].files;
    }
    pmb_tree_need = need; /* for "needs N MB more" when the node fills up (unpack.c) */
    if (pmb_c.node_rank == 0) {
        make_node_dir(chroot);
        /* under the node directory's registry lock: nobody reclaims it meanwhile */
        int regfd = pmb_registry_lock(chroot);
        make_node_dir(chroot);
        pmb_reclaim(chroot, id); /* give back what jobs that are over left on this node */
        int claim = node_claim(chroot, tree, id, need + pmb_cfg.chunk * (uint64_t)pmb_cfg.nbuf,
                               files, &lockfd);
        if (claim == PMB_NODE_READY)
            pmb_tree_record_job(tree);
        pmb_registry_unlock(regfd);
        have = claim != PMB_NODE_STAGES; /* a waiting node takes no part in unpacking */
        waits = claim == PMB_NODE_WAITS;
        /* a node that stages: can it copy all but the last layer from its earlier tree? */
        local = have || find_base(chroot, tree, ms, n, base, &basefd, &rec);
    }
    /* does every node already hold this exact tree, can every node that
     * does not build all but the last layer itself?  (rank 0 is a leader) */
    int mine[2] = {have, local}, all[2] = {1, 1};
    if (pmb_c.leaders != MPI_COMM_NULL) {
        MPI_Request r;
        MPI_Iallreduce(mine, all, 2, MPI_INT, MPI_MIN, pmb_c.leaders, &r);
        pmb_wait(&r);
    }
    int all_have = all[0], all_local = all[1];
    memset(rep, 0, sizeof *rep);
    /* every rank of a node learns whether its node unpacks */
    int node_state[3] = {have, all_have, all_local};
    MPI_Bcast(node_state, 3, MPI_INT, 0, pmb_c.node);
    have = node_state[0];
    all_have = node_state[1];
    all_local = node_state[2] && n >= 2;
    /* the first layer that travels: the last alone when every node that
     * stages builds the others from its earlier tree (decided together:
     * every node takes part in the same broadcasts) */
    const int first = all_local && !all_have ? n - 1 : 0;
    if (basefd >= 0 && (!all_local || have)) {
        close(basefd);
        basefd = -1;
    }
    if (!all_have) {
        int nw = pmb_cfg.unpack_ranks ? pmb_cfg.unpack_ranks : pmb_c.node_size;
        int unpacker = !have && pmb_c.node_rank < nw;
        pmb_team team;
        team_open(&team, unpacker);
        MPI_Comm unpackers = team.comm;
        int participates = pmb_c.node_rank == 0 || unpacker;
        char tmp[PATH_MAX] = "";
        if (participates) {
            double t0 = pmb_now(), t_copy = 0;
            uint64_t cf = 0, cb = 0;
            if (pmb_c.node_rank == 0 && !have) {
                snprintf(tmp, sizeof tmp, "%s/.env-%s.XXXXXX", chroot, id);
                if (!mkdtemp(tmp))
                    pmb_die("cannot create a temporary directory in %s: %s", chroot, strerror(errno));
                if (first) { /* all but the last layer from the earlier tree */
                    build_base(chroot, base, &rec, tmp, tree, ms, n, &cf, &cb);
                    close(basefd);
                    basefd = -1;
                    pmb_tree_write_base(tmp, tree);
                    t_copy = pmb_now() - t0;
                }
            }
            if (unpackers != MPI_COMM_NULL) { /* (the others wait for the copy without spinning) */
                MPI_Request r;
                MPI_Ibcast(tmp, PATH_MAX, MPI_CHAR, 0, unpackers, &r);
                pmb_wait(&r);
            }
            pmb_buffers bufs;
            buffers_open(&bufs, (size_t)pmb_cfg.chunk * (size_t)pmb_cfg.nbuf, unpackers, chroot, id);
            uint64_t nf = 0, nb = 0;
            send_layers(ms, first, n, fds, unpacker, &team, &bufs, tmp, tree, rep, &nf, &nb);
            buffers_close(&bufs);
            if (pmb_c.node_rank == 0 && !have) {
                publish_tree(chroot, id, tmp, tree, lockfd, ms, n);
                if (pmb_cfg.verbose >= 2 && first)
                    pmb_log("rank %d (node %d): copied the first %d layer(s) from %s, %llu files, "
                            "%.1f MB in %.3f s", pmb_c.world_rank, pmb_c.node_index, first, base,
                            (unsigned long long)cf, cb / 1e6, t_copy);
                if (pmb_cfg.verbose >= 2) {
                    int nwk = 1;
                    if (unpackers != MPI_COMM_NULL)
                        MPI_Comm_size(unpackers, &nwk);
                    pmb_log("rank %d (node %d): unpacked %d package(s), %llu files, %.1f MB in "
                            "%.3f s with %d rank(s), %d thread(s) into %s", pmb_c.world_rank,
                            pmb_c.node_index, n - first, (unsigned long long)nf, nb / 1e6,
                            pmb_now() - t0 - t_copy, nwk, team.workers, tree);
                }
            }
        }
        team_close(&team);
    }
    double waited = 0;
    if (waits) {
        waited = wait_for_other_step(chroot, tree, id);
        pmb_tree_record_job(tree);
    }
    else if (have && pmb_c.node_rank == 0 && pmb_cfg.verbose >= 2)
        pmb_log("rank %d (node %d): reusing %s", pmb_c.world_rank, pmb_c.node_index, tree);
    gather_waits(waits, waited, rep);
    pmb_node_barrier();
    /* the tree the leader chose (its name may differ between nodes); every
     * rank holds it for as long as it runs */
    MPI_Bcast(tree, PATH_MAX, MPI_CHAR, 0, pmb_c.node);
    if (pmb_c.node_rank != 0 && pmb_hold_take(tree))
        pmb_die("staged tree %s is gone (removed by hand?): %s", tree, strerror(errno));
    int reused = all_have;
    MPI_Bcast(&reused, 1, MPI_INT, 0, pmb_c.node);
    rep->total = pmb_now() - t_start;
    rep->staged = reused;
    rep->first = first; /* the layers before it were copied on the nodes */
    if (basefd >= 0)
        close(basefd);
    free(rec.data);
    free(chroot);
    return tree;
}
