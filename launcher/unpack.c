/* Unpack a package's payload into a directory: the one implementation of
 * the reading rules, used by the launcher on every node and, through
 * `python-mpi --pmb-unpack`, by `python-mpi-bcast unpack`, `verify` and
 * every other command that reads packages.
 *
 * Integrity: every shard must be exactly one zstd frame with a content
 * checksum (libzstd verifies it while decoding), ending exactly at the
 * shard's end, whose bytes have exactly the SHA-256 of its shard line
 * (hashed as they are decoded, by the thread that decodes them; the
 * manifest's content_hash covers those lines, manifest.c, and names the
 * tree, stage.c: a tree only ever holds bytes its name's manifest lists),
 * decoding to exactly the manifest's size and holding exactly
 * its number of files, each a whole POSIX tar member; the last shard is the
 * two zero blocks that end the archive.  Totals are checked by the caller
 * (pmb_check_totals).  Every loop is bounded by the declared sizes.
 *
 * Containment, by construction rather than by looking at names: member
 * paths are relative with no '.', '..' or empty component; every parent
 * is opened component by component with O_NOFOLLOW|O_DIRECTORY (or openat2
 * RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS) and created as a real directory
 * when missing, and a parent that is not a real directory is refused;
 * files are created with O_EXCL|O_NOFOLLOW, links with symlinkat,
 * directories with mkdirat, all relative to that parent.  Symlink targets
 * obey pmb_link_problem (leading '..' only, never more than the link's
 * depth), which with real-directory parents keeps every link inside the
 * tree whatever else it holds.
 *
 * Split files (format.py, part lines): a regular file whose data runs
 * across shards.  One process of the node creates it empty before any
 * shard of the package is unpacked (pmb_split_create: as begin_file does,
 * never through a link); the shard holding its header and each shard that
 * begins inside it (shard_begin) open it without creating, O_NOFOLLOW,
 * and pwrite their piece at its offset, within [0, size); whoever ends a
 * shard inside the file checks that the manifest continues it in the next
 * shard at exactly that offset (shard_end), so the pieces cover it without
 * a gap, and a shard that ends between members must not be announced as
 * beginning inside one.  A member named like a split file must be its
 * header, in its shard, with its size, mode and mtime.  The file's mode
 * and times are set once every piece is in (pmb_split_finish, after the
 * node's unpack of the package).
 *
 * A file or link name is given once per package: the threads unpacking a
 * layer in one process share a table of the names they made (names_mark)
 * and refuse a second one, whichever thread meets it; an earlier layer's
 * entry of that name is replaced (clear_leaf).  Ranks of one node that
 * unpack shards of a layer in separate processes do not share the table.
 *
 * Check mode (root NULL: `python-mpi --pmb-unpack --check`, behind
 * `python-mpi-bcast verify`): every rule above, creating nothing.  The tree
 * is a table of the names it would hold and their types (place_name), which
 * meets exactly the conflicts the real tree would (a parent that is a file
 * or a symlink, a directory where a file or link goes and the reverse), and
 * the prefix lines are checked against it (pmb_check_prefixes).  Verify's
 * order (pmb_unpack_verify, check mode): a failure inside a shard waits
 * until the shard's SHA-256 is complete, and a SHA-256 mismatch is the one
 * reported, as verify always reported it. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <unistd.h>
#include <zstd.h>

#include "manifest.h"
#include "sha256.h"
#include "unpack.h"

enum { ST_HEADER, ST_DATA, ST_PAX };

#define PMB_MAX_PAX (1u << 20)
#define PMB_HASH_SLICE (64u << 10)

struct pmb_unpacker {
    const pmb_manifest *m;
    char root[PATH_MAX];
    int rootfd;
    ZSTD_DStream *zd;
    unsigned char *zout;
    size_t zout_size;
    /* the shard being decoded (-1: between shards) */
    int shard, tail;
    uint64_t fed, decoded, shard_files;
    unsigned char fhd[5];
    int fhd_have, frame_done;
    pmb_sha256_ctx sha;           /* of the shard's compressed bytes so far */
    int shards_done;
    /* tar state */
    int state;
    unsigned char hdr[512];
    size_t hdr_have;
    uint64_t remaining, pad;
    int fd;
    char name[PATH_MAX];
    unsigned mode;
    int64_t mtime;
    char *ext;                /* pax header payload */
    size_t ext_len;
    int have_pax;
    char *pax_path, *pax_link;
    size_t pax_path_len, pax_link_len;
    int pax_has_size;
    uint64_t pax_size;
    /* the last parent directory opened (members arrive sorted) */
    char pdir[PATH_MAX];
    int pdirfd;
    uint64_t files, bytes, since_poke;
    int open_file;            /* a regular file's data follows */
    int split;                /* the open file is this split file (-1: a whole one) */
    uint64_t wpos;            /* a split file: where its next byte goes */
    /* verify's order (pmb_unpack_verify): a failure inside a shard waits
     * for the shard's SHA-256, which is reported first when it differs */
    int sha_first, armed;
    size_t piece_hashed;      /* bytes of the piece being fed already hashed */
    jmp_buf jb;
    char deferred[1024];
    /* check mode (no root): what the tree would hold, instead of a tree */
    pmb_names *names;
    /* unpacking: the files and links this layer made, shared by its threads */
    pmb_names *made;
    char last_dir[PATH_MAX];  /* the last member's parent ("a/b/"), its node */
    size_t last_dir_len, last_dir_node;
};

int pmb_unpack_verify = 0;

uint64_t pmb_tree_need = 0;

static void (*poke_fn)(void);

void pmb_set_poke(void (*fn)(void)) { poke_fn = fn; }

#define UFAIL(u, ...) do { \
        char msg_[1024]; snprintf(msg_, sizeof msg_, __VA_ARGS__); \
        ufail((u), msg_); } while (0)

static void ufail(pmb_unpacker *u, const char *msg) __attribute__((noreturn));
static void ufail(pmb_unpacker *u, const char *msg)
{
    if (u->armed) { /* verify's order: finish the shard's SHA-256 first (shard_data) */
        u->armed = 0;
        snprintf(u->deferred, sizeof u->deferred, "%s", msg);
        longjmp(u->jb, 1);
    }
    pmb_die("package '%s': %s", u->m->file, msg);
}

/* ---- check mode: the names a tree would hold ----------------------------- */

/* Every name the members (and the parents they imply) would create, with
 * its type: 'd', 'f' or 'l'.  A node is (parent node, component): node 0
 * is the root, a path is found component by component, so the table grows
 * with the bytes of the names, never with the square of a path's depth.
 * Components live in one pool; the index is open addressing over node
 * numbers (0: empty), grown at half full. */
struct pmb_names {
    size_t *parent;           /* per node */
    size_t *off;              /* its component: pool[off .. off + len) */
    unsigned char *len;       /* <= NAME_MAX, checked before a node is made */
    unsigned char *type;
    unsigned *gen;            /* the package that last gave the node its type */
    unsigned cur;             /* the package being read (check mode) */
    size_t n, ncap;           /* nodes (node 0: the root) */
    char *pool;
    size_t pool_len, pool_cap;
    size_t *slot;             /* node numbers */
    size_t cap;
    pthread_mutex_t mu;       /* unpacking: names_mark's, shared by the threads */
};

pmb_names *pmb_names_new(void)
{
    pmb_names *t = pmb_xcalloc(1, sizeof *t);
    t->ncap = 1024;
    t->parent = pmb_xmalloc(t->ncap * sizeof *t->parent);
    t->off = pmb_xmalloc(t->ncap * sizeof *t->off);
    t->len = pmb_xmalloc(t->ncap);
    t->type = pmb_xmalloc(t->ncap);
    t->gen = pmb_xmalloc(t->ncap * sizeof *t->gen);
    t->parent[0] = t->off[0] = t->len[0] = t->gen[0] = 0;
    t->type[0] = 'd';
    pthread_mutex_init(&t->mu, NULL);
    t->n = 1;
    t->pool_cap = 1u << 16;
    t->pool = pmb_xmalloc(t->pool_cap);
    t->cap = 2048;
    t->slot = pmb_xcalloc(t->cap, sizeof *t->slot);
    return t;
}

static size_t names_hash(size_t parent, const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull ^ (uint64_t)parent * 0x9E3779B97F4A7C15ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return (size_t)(h ^ (h >> 29));
}

/* The slot of (parent, s[0:n]): its node, or the empty slot it would take. */
static size_t names_slot(const pmb_names *t, size_t parent, const char *s, size_t n)
{
    size_t i = names_hash(parent, s, n) & (t->cap - 1);
    for (size_t k; (k = t->slot[i]); i = (i + 1) & (t->cap - 1))
        if (t->parent[k] == parent && t->len[k] == n && !memcmp(t->pool + t->off[k], s, n))
            break;
    return i;
}

/* The node of the child s[0:n] of parent, or 0 when the tree would not hold it. */
static size_t names_child(const pmb_names *t, size_t parent, const char *s, size_t n)
{
    return t->slot[names_slot(t, parent, s, n)];
}

/* A new child s[0:n] (n <= NAME_MAX, not in the table) of parent: its node. */
static size_t names_add(pmb_names *t, size_t parent, const char *s, size_t n, int type)
{
    if (t->n == t->ncap) {
        t->ncap *= 2;
        t->parent = pmb_xrealloc(t->parent, t->ncap * sizeof *t->parent);
        t->off = pmb_xrealloc(t->off, t->ncap * sizeof *t->off);
        t->len = pmb_xrealloc(t->len, t->ncap);
        t->type = pmb_xrealloc(t->type, t->ncap);
        t->gen = pmb_xrealloc(t->gen, t->ncap * sizeof *t->gen);
    }
    while (t->pool_len + n > t->pool_cap) {
        t->pool_cap *= 2;
        t->pool = pmb_xrealloc(t->pool, t->pool_cap);
    }
    size_t k = t->n++;
    t->parent[k] = parent;
    t->off[k] = t->pool_len;
    t->len[k] = (unsigned char)n;
    t->type[k] = (unsigned char)type;
    t->gen[k] = t->cur;
    memcpy(t->pool + t->pool_len, s, n);
    t->pool_len += n;
    t->slot[names_slot(t, parent, s, n)] = k;
    if (t->n * 2 >= t->cap) {
        free(t->slot);
        t->cap *= 2;
        t->slot = pmb_xcalloc(t->cap, sizeof *t->slot);
        for (size_t j = 1; j < t->n; j++)
            t->slot[names_slot(t, t->parent[j], t->pool + t->off[j], t->len[j])] = j;
    }
    return k;
}

/* Unpacking: record that this layer makes the file or link name[0:nl]
 * (parents: 'd' nodes, whatever the tree holds); 0 when it made it already
 * (a repeated name, which the threads would otherwise settle by timing). */
static int names_mark(pmb_names *t, const char *name, size_t nl)
{
    int fresh = 1;
    pthread_mutex_lock(&t->mu);
    size_t node = 0;
    for (size_t i = 0, c = 0; i <= nl; i++) {
        if (i < nl && name[i] != '/')
            continue;
        if (i - c > NAME_MAX)
            break; /* the file system refuses it */
        size_t k = names_child(t, node, name + c, i - c);
        if (i == nl) {
            if (k && t->type[k] != 'd')
                fresh = 0;
            else if (k)
                t->type[k] = 'f';
            else
                names_add(t, node, name + c, i - c, 'f');
            break;
        }
        node = k ? k : names_add(t, node, name + c, i - c, 'd');
        c = i + 1;
    }
    pthread_mutex_unlock(&t->mu);
    return fresh;
}

#define REPEATED "the package holds a file or symlink of that name twice"

void pmb_names_free(pmb_names *t)
{
    pthread_mutex_destroy(&t->mu);
    free(t->gen);
    free(t->parent);
    free(t->off);
    free(t->len);
    free(t->type);
    free(t->pool);
    free(t->slot);
    free(t);
}

/* A full node: how much room is missing, from the bytes the tree already
 * holds and pmb_tree_need (lower bound: a file takes whole pages). */
static __thread uint64_t tree_bytes;

static int add_bytes(const char *path, const struct stat *st, int flag, struct FTW *f)
{
    (void)path;
    (void)f;
    if (flag == FTW_F && S_ISREG(st->st_mode))
        tree_bytes += (uint64_t)st->st_size;
    return 0;
}

static void no_space(pmb_unpacker *u, const char *name) __attribute__((noreturn));
static void no_space(pmb_unpacker *u, const char *name)
{
    char more[96] = "";
    struct statvfs sv;
    tree_bytes = 0;
    if (pmb_tree_need && nftw(u->root, add_bytes, 16, FTW_PHYS) == 0 && statvfs(u->root, &sv) == 0) {
        uint64_t have = tree_bytes + (uint64_t)sv.f_bavail * (uint64_t)sv.f_frsize;
        if (pmb_tree_need > have)
            snprintf(more, sizeof more, "; needs at least %.1f MB more",
                     (double)(pmb_tree_need - have) / 1e6 + 0.05);
    }
    errno = ENOSPC;
    /* the launcher's users choose PYTHON_MPI_CHROOT; python-mpi-bcast's
     * (unpack, verify: --pmb-unpack, no MPI) choose a destination */
    UFAIL(u, "no space left in %s while writing %s%s; %s", u->root, name, more,
          pmb_mpi_up ? "set PYTHON_MPI_CHROOT to a directory with more room"
                     : "free space there or choose a destination with more room");
}

/* An unpacker into the directory root, or with root NULL one that checks
 * (check mode: every rule, each member placed in `names` instead of a tree). */
pmb_unpacker *pmb_unpacker_new(const char *root, const pmb_manifest *m, pmb_names *names)
{
    pmb_unpacker *u = pmb_xcalloc(1, sizeof *u);
    u->m = m;
    u->sha_first = pmb_unpack_verify || !root;
    if (root) {
        u->made = names;
    } else {
        u->names = names;
        names->cur++;
    }
    u->rootfd = -1;
    if (root) {
        snprintf(u->root, sizeof u->root, "%s", root);
        u->rootfd = open(root, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (u->rootfd < 0)
            pmb_die("cannot open %s: %s", root, strerror(errno));
    }
    u->zd = ZSTD_createDStream();
    if (!u->zd)
        pmb_die("out of memory (zstd)");
    u->zout_size = ZSTD_DStreamOutSize();
    if (u->zout_size < (1u << 20))
        u->zout_size = 1u << 20;
    u->zout = pmb_xmalloc(u->zout_size);
    u->ext = pmb_xmalloc(PMB_MAX_PAX);
    u->fd = -1;
    u->pdirfd = -1;
    u->shard = -1;
    u->split = -1;
    return u;
}

/* ---- names -------------------------------------------------------------- */

/* A name for messages: at most 200 bytes, control bytes as '?'. */
static const char *shown(const char *s, size_t n, char *buf, size_t cap)
{
    size_t k = 0;
    for (size_t i = 0; i < n && k + 4 < cap && i < 200; i++)
        buf[k++] = ((unsigned char)s[i] < 0x20 || s[i] == 0x7f) ? '?' : s[i];
    if (n > 200 && k + 4 < cap) {
        memcpy(buf + k, "...", 3);
        k += 3;
    }
    buf[k] = 0;
    return buf;
}

/* Open (creating when missing) the directory holding `name`, walking from
 * the root without following any symlink.  Returns a cached fd. */
static int parent_fd(pmb_unpacker *u, const char *name, const char **leaf)
{
    const char *slash = strrchr(name, '/');
    if (!slash) {
        *leaf = name;
        return u->rootfd;
    }
    *leaf = slash + 1;
    size_t dl = (size_t)(slash - name);
    if (u->pdirfd >= 0 && strlen(u->pdir) == dl && !memcmp(u->pdir, name, dl))
        return u->pdirfd;
    if (u->pdirfd >= 0)
        close(u->pdirfd);
    u->pdirfd = -1;
    char dir[PATH_MAX];
    memcpy(dir, name, dl);
    dir[dl] = 0;
#ifdef SYS_openat2
    static int no_openat2;
    if (!no_openat2) {
        struct { uint64_t flags, mode, resolve; } how = {
            O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0, 0x08 /* RESOLVE_BENEATH */ | 0x04 /* NO_SYMLINKS */};
        long fd = syscall(SYS_openat2, u->rootfd, dir, &how, sizeof how);
        if (fd >= 0) {
            u->pdirfd = (int)fd;
            memcpy(u->pdir, dir, dl + 1);
            return u->pdirfd;
        }
        if (errno == ENOSYS || errno == EPERM)
            no_openat2 = 1; /* old kernel (RHEL 8) or seccomp: walk */
    }
#endif
    int fd = u->rootfd;
    char *comp = dir;
    for (;;) {
        char *s = strchr(comp, '/');
        if (s)
            *s = 0;
        int nfd = -1;
        for (int tries = 0; tries < 8 && nfd < 0; tries++) {
            nfd = openat(fd, comp, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
            if (nfd >= 0)
                break;
            if (errno == ENOENT) {
                if (mkdirat(fd, comp, 0755) && errno != EEXIST)
                    UFAIL(u, "cannot create directory %s/%s: %s", u->root, dir, strerror(errno));
                continue;
            }
            char b[256];
            if (errno == ELOOP || errno == ENOTDIR)
                UFAIL(u, "refusing archive member '%s' (its parent '%s' is a symlink or a file, "
                      "not a directory)", shown(name, strlen(name), b, sizeof b), dir);
            UFAIL(u, "cannot open directory %s/%s: %s", u->root, dir, strerror(errno));
        }
        if (nfd < 0)
            UFAIL(u, "cannot create directory %s/%s", u->root, dir);
        if (fd != u->rootfd)
            close(fd);
        fd = nfd;
        if (!s)
            break;
        *s = '/';
        comp = s + 1;
    }
    u->pdirfd = fd;
    memcpy(u->pdir, name, dl);
    u->pdir[dl] = 0;
    return fd;
}

/* Make room for a new file or link `leaf` in `pfd`: an entry of that name
 * left by an earlier layer (or a repeated member) is removed, unless it is
 * a directory. */
static void clear_leaf(pmb_unpacker *u, int pfd, const char *leaf, const char *name)
{
    struct stat st;
    if (fstatat(pfd, leaf, &st, AT_SYMLINK_NOFOLLOW))
        return; /* gone already */
    char b[256];
    if (S_ISDIR(st.st_mode))
        UFAIL(u, "refusing archive member '%s' (a directory of that name exists)",
              shown(name, strlen(name), b, sizeof b));
    if (unlinkat(pfd, leaf, 0) && errno != ENOENT)
        UFAIL(u, "cannot replace %s/%s: %s", u->root, name, strerror(errno));
}

/* ---- tar members -------------------------------------------------------- */

/* Strict octal field: optional leading spaces, digits, then NULs/spaces.
 * Base-256 (GNU) and anything else: -1. */
static int octal(const unsigned char *p, size_t n, uint64_t *out)
{
    size_t i = 0;
    while (i < n && p[i] == ' ')
        i++;
    if (i == n || p[i] < '0' || p[i] > '7')
        return -1;
    uint64_t v = 0;
    for (; i < n && p[i] >= '0' && p[i] <= '7'; i++)
        v = v * 8 + (uint64_t)(p[i] - '0'); /* at most 12 digits: no overflow */
    for (; i < n; i++)
        if (p[i] != 0 && p[i] != ' ')
            return -1;
    *out = v;
    return 0;
}

static void reset_pax(pmb_unpacker *u)
{
    free(u->pax_path);
    free(u->pax_link);
    u->pax_path = u->pax_link = NULL;
    u->have_pax = u->pax_has_size = 0;
}

static void finish_file(pmb_unpacker *u)
{
    u->open_file = 0;
    if (u->names) {
        u->split = -1;
        return;
    }
    if (u->split >= 0) { /* mode and times once every piece is in (pmb_split_finish) */
        u->split = -1;
        if (u->fd >= 0 && close(u->fd))
            UFAIL(u, "cannot write %s/%s: %s", u->root, u->name, strerror(errno));
        u->fd = -1;
        return;
    }
    if (fchmod(u->fd, u->mode))
        UFAIL(u, "cannot set mode of %s: %s", u->name, strerror(errno));
    struct timespec ts[2] = {{u->mtime, 0}, {u->mtime, 0}};
    if (futimens(u->fd, ts))
        UFAIL(u, "cannot set times of %s: %s", u->name, strerror(errno));
    if (close(u->fd))
        UFAIL(u, "cannot write %s/%s: %s", u->root, u->name, strerror(errno));
    u->fd = -1;
}

/* The header's checksum, magic and numbers (the size a pax header gave
 * wins over the header's). */
static void read_header(pmb_unpacker *u, uint64_t *size, uint64_t *mode, uint64_t *mtime)
{
    const unsigned char *h = u->hdr;
    uint64_t sum = 0, want;
    for (int i = 0; i < 512; i++)
        sum += (i >= 148 && i < 156) ? ' ' : h[i];
    if (octal(h + 148, 8, &want) || want != sum)
        UFAIL(u, "corrupt archive in shard %d (tar header checksum mismatch)", u->shard);
    if (memcmp(h + 257, "ustar\0" "00", 8))
        UFAIL(u, "corrupt archive in shard %d (not a POSIX ustar header)", u->shard);
    if (octal(h + 124, 12, size) || octal(h + 100, 8, mode) || octal(h + 136, 12, mtime))
        UFAIL(u, "corrupt archive in shard %d (bad number in a tar header)", u->shard);
    if (u->pax_has_size)
        *size = u->pax_size;
}

/* A pax header: its records follow as the member's data (finish_pax). */
static void begin_pax(pmb_unpacker *u, uint64_t size)
{
    if (u->have_pax)
        UFAIL(u, "corrupt archive in shard %d (two pax headers in a row)", u->shard);
    if (size > PMB_MAX_PAX || size == 0)
        UFAIL(u, "corrupt archive in shard %d (pax header of %llu bytes)", u->shard,
              (unsigned long long)size);
    u->have_pax = 1;
    u->ext_len = 0;
    u->remaining = size;
    u->pad = (512 - size % 512) % 512;
    u->state = ST_PAX;
}

/* The member's name (the pax path, else prefix/name) into name[PATH_MAX];
 * its length. */
static size_t member_name(pmb_unpacker *u, char type, char *name)
{
    const unsigned char *h = u->hdr;
    char b[256];
    size_t nl;
    if (u->pax_path) {
        nl = u->pax_path_len;
        if (nl > PATH_MAX - 1)
            UFAIL(u, "refusing archive member '%s' (path longer than 4095 bytes)",
                  shown(u->pax_path, nl, b, sizeof b));
        memcpy(name, u->pax_path, nl);
    } else {
        size_t pl = strnlen((const char *)h + 345, 155), bl = strnlen((const char *)h, 100);
        nl = 0;
        if (pl) {
            memcpy(name, h + 345, pl);
            name[pl] = '/';
            nl = pl + 1;
        }
        memcpy(name + nl, h, bl);
        nl += bl;
    }
    name[nl] = 0;
    if (type == '5' && nl > 1 && name[nl - 1] == '/')
        name[--nl] = 0;
    return nl;
}

/* What the tree accepts: files, directories and symlinks, each with a
 * contained path, a link target only on a symlink, data only in a file. */
static void check_member(pmb_unpacker *u, char type, const char *name, size_t nl, size_t ll,
                         uint64_t size)
{
    char b[256];
    if (type != '0' && type != '5' && type != '2')
        UFAIL(u, "refusing archive member '%s' of unsupported type '%s%c'",
              shown(name, nl, b, sizeof b), type ? "" : "\\", type ? type : '0');
    const char *why = pmb_path_problem(name, nl);
    if (why)
        UFAIL(u, "refusing archive member '%s' (%s)", shown(name, nl, b, sizeof b), why);
    if (type != '2' && ll)
        UFAIL(u, "refusing archive member '%s' (a link target on a %s)", shown(name, nl, b, sizeof b),
              type == '5' ? "directory" : "file");
    if (type != '0' && size)
        UFAIL(u, "refusing archive member '%s' (a %s with data)", shown(name, nl, b, sizeof b),
              type == '5' ? "directory" : "symlink");
}

static void make_dir(pmb_unpacker *u, int pfd, const char *leaf, const char *name, size_t nl)
{
    char b[256];
    int dfd = -1;
    for (int tries = 0; tries < 8 && dfd < 0; tries++) {
        if (mkdirat(pfd, leaf, 0700) && errno != EEXIST)
            UFAIL(u, "cannot create directory %s/%s: %s", u->root, name, strerror(errno));
        dfd = openat(pfd, leaf, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (dfd < 0 && (errno == ELOOP || errno == ENOTDIR))
            UFAIL(u, "refusing archive member '%s' (a file or symlink of that name exists)",
                  shown(name, nl, b, sizeof b));
    }
    if (dfd < 0)
        UFAIL(u, "cannot open directory %s/%s: %s", u->root, name, strerror(errno));
    if (fchmod(dfd, u->mode | 0700))
        UFAIL(u, "cannot set mode of %s/%s: %s", u->root, name, strerror(errno));
    close(dfd);
}

static void make_symlink(pmb_unpacker *u, int pfd, const char *leaf, const char *name, size_t nl,
                         const char *link, size_t ll)
{
    const char *why = pmb_link_problem(name, link, ll);
    if (why) {
        char b[256], b2[256];
        UFAIL(u, "refusing symlink %s -> %s (points outside the tree: %s)",
              shown(name, nl, b, sizeof b), shown(link, ll, b2, sizeof b2), why);
    }
    if (u->made && !names_mark(u->made, name, nl)) {
        char b[256];
        UFAIL(u, "refusing archive member '%s' (" REPEATED ")", shown(name, nl, b, sizeof b));
    }
    int ok = 0;
    for (int tries = 0; tries < 8 && !ok; tries++) {
        ok = !symlinkat(link, pfd, leaf);
        if (!ok && errno != EEXIST)
            UFAIL(u, "cannot create symlink %s/%s: %s", u->root, name, strerror(errno));
        if (!ok)
            clear_leaf(u, pfd, leaf, name);
    }
    if (!ok)
        UFAIL(u, "cannot create symlink %s/%s", u->root, name);
}

/* A split file (pmb_split_create made it, empty, before the package's
 * shards): opened for its piece, never created, never through a link. */
static void open_piece(pmb_unpacker *u, int pfd, const char *leaf, const char *name)
{
    char b[256];
    struct stat st;
    u->fd = openat(pfd, leaf, O_WRONLY | O_NOFOLLOW | O_CLOEXEC);
    if (u->fd < 0 && (errno == ELOOP || errno == EISDIR))
        UFAIL(u, "refusing archive member '%s' (the split file is not a regular file)",
              shown(name, strlen(name), b, sizeof b));
    if (u->fd < 0)
        UFAIL(u, "cannot open %s/%s: %s", u->root, name, strerror(errno));
    if (fstat(u->fd, &st) || !S_ISREG(st.st_mode))
        UFAIL(u, "refusing archive member '%s' (the split file is not a regular file)",
              shown(name, strlen(name), b, sizeof b));
}

/* a regular file: created empty, its data follows (ST_DATA) */
static void begin_file(pmb_unpacker *u, int pfd, const char *leaf, const char *name,
                       uint64_t size)
{
    if (u->made && !names_mark(u->made, name, strlen(name))) {
        char b[256];
        UFAIL(u, "refusing archive member '%s' (" REPEATED ")",
              shown(name, strlen(name), b, sizeof b));
    }
    if (u->split >= 0 && !u->names)
        open_piece(u, pfd, leaf, name);
    for (int tries = 0; tries < 8 && u->fd < 0 && !u->names; tries++) {
        u->fd = openat(pfd, leaf, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
        if (u->fd >= 0)
            break;
        if (errno == ENOSPC)
            no_space(u, name);
        if (errno != EEXIST)
            UFAIL(u, "cannot create %s/%s: %s", u->root, name, strerror(errno));
        clear_leaf(u, pfd, leaf, name);
    }
    if (u->fd < 0 && !u->names)
        UFAIL(u, "cannot create %s/%s", u->root, name);
    u->open_file = 1;
    u->files++;
    u->shard_files++;
    u->remaining = size;
    u->pad = (512 - size % 512) % 512;
    u->state = ST_DATA;
    if (!size)
        finish_file(u);
}

/* Check mode: what creating the member would meet (the walk of parent_fd,
 * clear_leaf, make_dir, make_symlink, begin_file), with u->names as the
 * tree: the same refusals, in the same words. */
static void place_name(pmb_unpacker *u, char type, const char *name, size_t nl,
                       const char *link, size_t ll)
{
    char b[256];
    pmb_names *t = u->names;
    /* the parent: the last member's (parent_fd's cache), else found from the root */
    size_t dl = nl;
    while (dl && name[dl - 1] != '/')
        dl--;
    size_t parent = 0, c = 0;
    if (dl && u->last_dir_len == dl && !memcmp(u->last_dir, name, dl)) {
        parent = u->last_dir_node;
        c = dl;
    }
    for (size_t i = c; i <= nl; i++) {
        if (i < nl && name[i] != '/')
            continue;
        if (i - c > NAME_MAX)
            UFAIL(u, "refusing archive member '%s' (file name too long: a path component of "
                  "more than %d bytes)", shown(name, nl, b, sizeof b), NAME_MAX);
        if (i == nl)
            break;
        size_t k = names_child(t, parent, name + c, i - c);
        if (!k) {
            k = names_add(t, parent, name + c, i - c, 'd');
        } else if (t->type[k] != 'd') {
            char dir[PATH_MAX];
            memcpy(dir, name, i);
            dir[i] = 0;
            UFAIL(u, "refusing archive member '%s' (its parent '%s' is a symlink or a file, "
                  "not a directory)", shown(name, nl, b, sizeof b), dir);
        }
        parent = k;
        c = i + 1;
    }
    if (dl && (u->last_dir_len != dl || parent != u->last_dir_node)) {
        memcpy(u->last_dir, name, dl); /* a directory's node is never retyped */
        u->last_dir_len = dl;
        u->last_dir_node = parent;
    }
    const char *leaf = name + dl;
    size_t k = names_child(t, parent, leaf, nl - dl);
    int was = k ? t->type[k] : 0;
    int now = type == '5' ? 'd' : type == '2' ? 'l' : 'f';
    if (type == '5') {
        if (was && was != 'd')
            UFAIL(u, "refusing archive member '%s' (a file or symlink of that name exists)",
                  shown(name, nl, b, sizeof b));
    } else {
        if (type == '2') {
            const char *why = pmb_link_problem(name, link, ll);
            if (why) {
                char b2[256];
                UFAIL(u, "refusing symlink %s -> %s (points outside the tree: %s)",
                      shown(name, nl, b, sizeof b), shown(link, ll, b2, sizeof b2), why);
            }
        }
        if (was == 'd')
            UFAIL(u, "refusing archive member '%s' (a directory of that name exists)",
                  shown(name, nl, b, sizeof b));
        if (was && t->gen[k] == t->cur)
            UFAIL(u, "refusing archive member '%s' (" REPEATED ")", shown(name, nl, b, sizeof b));
    }
    if (k) {
        t->type[k] = (unsigned char)now;
        t->gen[k] = t->cur;
    } else {
        names_add(t, parent, leaf, nl - dl, now);
    }
}

/* A tar header is complete in u->hdr: check it, create the member. */
static void begin_member(pmb_unpacker *u)
{
    const unsigned char *h = u->hdr;
    char type = (char)h[156];
    uint64_t size, mode, mtime;
    read_header(u, &size, &mode, &mtime);
    u->remaining = 0;
    u->pad = 0;
    if (type == 'x') {
        begin_pax(u, size);
        return;
    }
    /* the member's name and link target */
    char name[PATH_MAX];
    size_t nl = member_name(u, type, name);
    const char *link = u->pax_link;
    size_t ll = u->pax_link_len;
    char ulink[101];
    if (!link) {
        ll = strnlen((const char *)h + 157, 100);
        memcpy(ulink, h + 157, ll);
        ulink[ll] = 0;
        link = ulink;
    }
    check_member(u, type, name, nl, ll, size);
    u->mode = (unsigned)mode & 0777;
    u->mtime = (int64_t)mtime;
    u->split = u->m->nsplits ? pmb_find_split(u->m, name) : -1;
    if (u->split >= 0) { /* the header of a split file: as the manifest says, last in its shard */
        const pmb_split *sp = &u->m->splits[u->split];
        if (type != '0' || u->shard != sp->head || size != sp->size || u->mode != sp->mode ||
            mtime != sp->mtime) {
            char b[256];
            UFAIL(u, "refusing archive member '%s' (not the file the manifest splits under that "
                  "name)", shown(name, nl, b, sizeof b));
        }
        u->wpos = 0;
    }
    memcpy(u->name, name, nl + 1);
    const char *leaf = name;
    int pfd = -1;
    if (u->names)
        place_name(u, type, name, nl, link, ll);
    else
        pfd = parent_fd(u, name, &leaf);
    if (type == '5') {
        if (!u->names)
            make_dir(u, pfd, leaf, name, nl);
    } else if (type == '2') {
        if (!u->names)
            make_symlink(u, pfd, leaf, name, nl, link, ll);
    } else {
        begin_file(u, pfd, leaf, name, size);
    }
    reset_pax(u);
    if (!u->open_file)
        u->state = ST_HEADER;
}

/* pax records "LEN key=value\n", strictly: only the keys a POSIX writer
 * puts there for plain files, each at most once. */
static void finish_pax(pmb_unpacker *u)
{
    size_t i = 0;
    int seen_path = 0, seen_link = 0;
    while (i < u->ext_len) {
        const char *rec = u->ext + i;
        size_t avail = u->ext_len - i, d = 0, len = 0;
        while (d < avail && d < 8 && rec[d] >= '0' && rec[d] <= '9')
            len = len * 10 + (size_t)(rec[d++] - '0');
        if (!d || d == 8 || (d > 1 && rec[0] == '0') || d >= avail || rec[d] != ' ' ||
            len > avail || len < d + 4 || rec[len - 1] != '\n')
            UFAIL(u, "corrupt archive in shard %d (bad pax record)", u->shard);
        const char *key = rec + d + 1, *end = rec + len - 1;
        const char *eq = memchr(key, '=', (size_t)(end - key));
        if (!eq || eq == key)
            UFAIL(u, "corrupt archive in shard %d (bad pax record)", u->shard);
        size_t kl = (size_t)(eq - key), vl = (size_t)(end - eq - 1);
        const char *val = eq + 1;
#define KEY(s) (kl == sizeof(s) - 1 && !memcmp(key, s, kl))
        if (KEY("path") || KEY("linkpath")) {
            int is_path = KEY("path");
            if (is_path ? seen_path++ : seen_link++)
                UFAIL(u, "corrupt archive in shard %d (repeated pax record)", u->shard);
            char *v = pmb_xmalloc(vl + 1);
            memcpy(v, val, vl);
            v[vl] = 0;
            if (is_path) { u->pax_path = v; u->pax_path_len = vl; }
            else { u->pax_link = v; u->pax_link_len = vl; }
        } else if (KEY("size")) {
            uint64_t v = 0;
            if (u->pax_has_size || !vl || vl > 18 || (vl > 1 && val[0] == '0'))
                UFAIL(u, "corrupt archive in shard %d (bad pax size)", u->shard);
            for (size_t k = 0; k < vl; k++) {
                if (val[k] < '0' || val[k] > '9')
                    UFAIL(u, "corrupt archive in shard %d (bad pax size)", u->shard);
                v = v * 10 + (uint64_t)(val[k] - '0');
            }
            u->pax_size = v;
            u->pax_has_size = 1;
        } else if (!(KEY("mtime") || KEY("atime") || KEY("ctime") || KEY("uid") || KEY("gid") ||
                     KEY("uname") || KEY("gname") || KEY("hdrcharset") || KEY("comment"))) {
            char b[64];
            UFAIL(u, "corrupt archive in shard %d (unsupported pax record '%s')", u->shard,
                  shown(key, kl, b, sizeof b));
        }
#undef KEY
        i += len;
    }
}

static void tar_feed(pmb_unpacker *u, const unsigned char *p, size_t n)
{
    const pmb_shard *sh = &u->m->shards[u->shard];
    if (n > sh->usize - u->decoded)
        UFAIL(u, "corrupt package: shard %d unpacks to more than the %llu bytes the manifest "
              "says", u->shard, (unsigned long long)sh->usize);
    u->decoded += n;
    if (u->tail) { /* the archive's end: zero blocks only */
        for (size_t i = 0; i < n; i++)
            if (p[i])
                UFAIL(u, "corrupt package: the archive's end blocks are not zero");
        return;
    }
    while (n) {
        if (u->state == ST_HEADER) {
            size_t take = 512 - u->hdr_have < n ? 512 - u->hdr_have : n;
            memcpy(u->hdr + u->hdr_have, p, take);
            u->hdr_have += take;
            p += take;
            n -= take;
            if (u->hdr_have < 512)
                return;
            u->hdr_have = 0;
            int zero = 1;
            for (int i = 0; i < 512 && zero; i++)
                zero = u->hdr[i] == 0;
            if (zero)
                UFAIL(u, "corrupt archive in shard %d (zero block between members)", u->shard);
            begin_member(u);
            continue;
        }
        if (u->remaining) {
            size_t take = u->remaining < n ? (size_t)u->remaining : n;
            if (u->state == ST_DATA && u->split >= 0) {
                if (!u->names && u->fd < 0) { /* a piece that begins the shard */
                    const char *leaf;
                    int pfd = parent_fd(u, u->name, &leaf);
                    open_piece(u, pfd, leaf, u->name);
                }
                if (!u->names && pmb_pwrite_all(u->fd, p, take, u->wpos)) {
                    if (errno == ENOSPC)
                        no_space(u, u->name);
                    UFAIL(u, "cannot write %s/%s: %s", u->root, u->name, strerror(errno));
                }
                u->wpos += take;
                u->bytes += take;
            } else if (u->state == ST_DATA) {
                if (!u->names && pmb_write_all(u->fd, p, take)) {
                    if (errno == ENOSPC)
                        no_space(u, u->name);
                    UFAIL(u, "cannot write %s/%s: %s", u->root, u->name, strerror(errno));
                }
                u->bytes += take;
            } else {
                memcpy(u->ext + u->ext_len, p, take); /* size <= PMB_MAX_PAX, checked */
                u->ext_len += take;
            }
            u->remaining -= take;
            p += take;
            n -= take;
            if (u->remaining)
                continue;
            if (u->state == ST_DATA)
                finish_file(u);
            else
                finish_pax(u);
        }
        if (u->pad) {
            size_t take = u->pad < n ? (size_t)u->pad : n;
            u->pad -= take;
            p += take;
            n -= take;
            if (u->pad)
                continue;
        }
        u->state = ST_HEADER;
    }
}

/* ---- shards ------------------------------------------------------------- */

static void shard_begin(pmb_unpacker *u, int s)
{
    size_t r = ZSTD_initDStream(u->zd);
    if (ZSTD_isError(r))
        UFAIL(u, "zstd: %s", ZSTD_getErrorName(r));
    u->shard = s;
    u->tail = s == u->m->nshards - 1;
    u->fed = u->decoded = u->shard_files = 0;
    u->fhd_have = u->frame_done = 0;
    pmb_sha256_init(&u->sha);
    u->state = ST_HEADER;
    u->hdr_have = 0;
    int k = u->m->shard_part[s];
    if (k >= 0) { /* the shard begins inside a split file (opened when its data comes) */
        const pmb_part *pt = &u->m->parts[k];
        const pmb_split *sp = &u->m->splits[pt->split];
        u->split = pt->split;
        u->wpos = pt->offset;
        u->remaining = sp->size - pt->offset;
        u->pad = (512 - sp->size % 512) % 512;
        u->state = ST_DATA;
        u->open_file = 1;
        u->mode = sp->mode;
        u->mtime = (int64_t)sp->mtime;
        snprintf(u->name, sizeof u->name, "%s", sp->path);
    }
}

/* The shard's bytes have all arrived: its SHA-256 first (verify's order:
 * before any failure found inside it, deferred until now), then the end of
 * its frame, its size and files. */
static void shard_end(pmb_unpacker *u)
{
    const pmb_shard *sh = &u->m->shards[u->shard];
    if (!u->sha_first && u->fhd_have < 5)
        UFAIL(u, "corrupt package: shard %d is not a zstd frame", u->shard);
    unsigned char digest[32];
    pmb_sha256_final(&u->sha, digest);
    if (memcmp(digest, sh->sha, 32)) {
        if (u->sha_first) /* in verify's words */
            pmb_die("%s: corrupt package (shard %d fails its SHA-256 check)", u->m->file,
                    u->shard);
        UFAIL(u, "shard %d does not match its SHA-256 in the manifest (the package was altered "
              "or damaged); copy or pack it again", u->shard);
    }
    if (u->deferred[0])
        pmb_die("package '%s': %s", u->m->file, u->deferred);
    if (u->fhd_have < 5)
        UFAIL(u, "corrupt package: shard %d is not a zstd frame", u->shard);
    /* flush what the decoder still holds */
    for (int guard = 0; !u->frame_done; guard++) {
        ZSTD_outBuffer out = {u->zout, u->zout_size, 0};
        ZSTD_inBuffer none = {NULL, 0, 0};
        size_t r = ZSTD_decompressStream(u->zd, &out, &none);
        if (ZSTD_isError(r))
            UFAIL(u, "corrupt package: shard %d fails its check (zstd: %s); copy or pack it "
                  "again", u->shard, ZSTD_getErrorName(r));
        tar_feed(u, u->zout, out.pos);
        if (r == 0)
            u->frame_done = 1;
        else if (out.pos == 0 || guard > 1000000)
            UFAIL(u, "corrupt package: shard %d is cut short (its zstd frame does not end "
                  "where the manifest says)", u->shard);
    }
    if (u->decoded != sh->usize)
        UFAIL(u, "corrupt package: shard %d unpacks to %llu bytes, the manifest says %llu",
              u->shard, (unsigned long long)u->decoded, (unsigned long long)sh->usize);
    int next = u->shard + 1 < u->m->nshards ? u->m->shard_part[u->shard + 1] : -1;
    if (next >= 0 && u->open_file && u->state == ST_DATA && u->split >= 0 && u->remaining &&
        u->m->parts[next].split == u->split &&
        u->m->parts[next].offset == u->m->splits[u->split].size - u->remaining) {
        finish_file(u); /* its piece is in: the next shard's owner writes on */
        u->state = ST_HEADER;
        u->remaining = u->pad = 0;
    } else if (next >= 0 && u->state == ST_HEADER && !u->hdr_have && !u->have_pax &&
               !u->open_file) {
        UFAIL(u, "corrupt package: shard %d ends between members, but the manifest says shard "
              "%d begins inside a file", u->shard, u->shard + 1);
    }
    if (u->state != ST_HEADER || u->hdr_have || u->have_pax || u->open_file)
        UFAIL(u, "corrupt package: shard %d ends inside an archive member", u->shard);
    if (u->shard_files != sh->nfiles)
        UFAIL(u, "corrupt package: shard %d holds %llu files, the manifest says %llu", u->shard,
              (unsigned long long)u->shard_files, (unsigned long long)sh->nfiles);
    u->shard = -1;
    u->shards_done++;
}

/* n bytes of shard s (in order), hashed and decoded. */
static void decode_piece(pmb_unpacker *u, int s, const unsigned char *data, size_t n)
{
    /* the frame header: zstd magic and the content-checksum flag */
    for (size_t i = 0; i < n && u->fhd_have < 5; i++) {
        u->fhd[u->fhd_have++] = data[i];
        if (u->fhd_have == 5) {
            static const unsigned char magic[4] = {0x28, 0xb5, 0x2f, 0xfd};
            if (memcmp(u->fhd, magic, 4))
                UFAIL(u, "corrupt package: shard %d is not a zstd frame", s);
            if (!(u->fhd[4] & 0x04))
                UFAIL(u, "corrupt package: shard %d has no checksum (not made by python-mpi-bcast "
                      "pack)", s);
        }
    }
    /* zstd reads the frame in slices, each hashed just before it reads it
     * (while the slice is in cache) */
    for (size_t at = 0; at < n;) {
        size_t k = n - at < PMB_HASH_SLICE ? n - at : PMB_HASH_SLICE;
        pmb_sha256_update(&u->sha, data + at, k);
        u->piece_hashed = at + k;
        ZSTD_inBuffer in = {data + at, k, 0};
        while (in.pos < in.size) {
            if (u->frame_done)
                UFAIL(u, "corrupt package: shard %d holds data after its zstd frame", s);
            ZSTD_outBuffer out = {u->zout, u->zout_size, 0};
            size_t before = in.pos;
            size_t r = ZSTD_decompressStream(u->zd, &out, &in);
            if (ZSTD_isError(r))
                UFAIL(u, "corrupt package: shard %d fails its check (zstd: %s); copy or pack it "
                      "again", s, ZSTD_getErrorName(r));
            tar_feed(u, u->zout, out.pos);
            if (r == 0)
                u->frame_done = 1;
            else if (in.pos == before && out.pos == 0)
                UFAIL(u, "corrupt package: shard %d makes the zstd decoder stall", s);
            u->since_poke += out.pos;
            if (poke_fn && u->since_poke >= (1u << 20)) {
                u->since_poke = 0;
                poke_fn();
            }
        }
        at += k;
    }
}

/* n bytes of shard s (in order); the shard ends when all csize arrived.
 * With sha_first a failure while decoding is kept (ufail) and the rest of
 * the shard is only hashed: shard_end reports the SHA-256 first. */
static void shard_data(pmb_unpacker *u, int s, const unsigned char *data, size_t n)
{
    if (u->shard != s)
        shard_begin(u, s);
    const pmb_shard *sh = &u->m->shards[s];
    u->fed += n;
    u->piece_hashed = 0;
    if (!u->sha_first) {
        decode_piece(u, s, data, n);
    } else if (!u->deferred[0]) {
        if (setjmp(u->jb) == 0) {
            u->armed = 1;
            decode_piece(u, s, data, n);
            u->armed = 0;
        }
    }
    if (u->deferred[0] && u->piece_hashed < n) {
        pmb_sha256_update(&u->sha, data + u->piece_hashed, n - u->piece_hashed);
        u->piece_hashed = n;
    }
    if (u->fed == sh->csize)
        shard_end(u);
}

/* Bytes [offset, offset + len) of the payload, in order: feed the parts
 * that belong to this rank's shards (owner[s] == me; all when owner is NULL). */
void pmb_unpacker_feed(pmb_unpacker *u, const unsigned char *buf, uint64_t offset, size_t len,
                       const int *owner, int me)
{
    const pmb_manifest *m = u->m;
    uint64_t end = offset + len;
    /* shards are contiguous and sorted: binary search the first overlap */
    int lo = 0, hi = m->nshards - 1;
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (m->shards[mid].offset + m->shards[mid].csize <= offset)
            lo = mid + 1;
        else
            hi = mid;
    }
    for (int s = lo; s < m->nshards && m->shards[s].offset < end; s++) {
        if (owner && owner[s] != me)
            continue;
        const pmb_shard *sh = &m->shards[s];
        uint64_t a = sh->offset > offset ? sh->offset : offset;
        uint64_t b = sh->offset + sh->csize < end ? sh->offset + sh->csize : end;
        if (a < b)
            shard_data(u, s, buf + (a - offset), (size_t)(b - a));
    }
}

int pmb_unpacker_shard(const pmb_unpacker *u) { return u ? u->shard : -1; }

void pmb_unpacker_finish(pmb_unpacker *u, uint64_t *files, uint64_t *bytes)
{
    if (u->shard >= 0)
        UFAIL(u, "truncated package data (shard %d incomplete)", u->shard);
    *files = u->files;
    *bytes = u->bytes;
    ZSTD_freeDStream(u->zd);
    if (u->pdirfd >= 0)
        close(u->pdirfd);
    if (u->rootfd >= 0)
        close(u->rootfd);
    reset_pax(u);
    free(u->zout);
    free(u->ext);
    free(u);
}

void pmb_check_totals(const pmb_manifest *m, uint64_t files, uint64_t bytes)
{
    if (files != m->files || bytes != m->unpacked_size)
        pmb_die("package '%s' is corrupt (unpacked %llu files / %llu bytes, manifest says "
                "%llu / %llu)", m->file, (unsigned long long)files, (unsigned long long)bytes,
                (unsigned long long)m->files, (unsigned long long)m->unpacked_size);
}

/* ---- split files -------------------------------------------------------- */

/* An unpacker that only walks the unpacked tree of `m` under `root` (its
 * parent_fd and clear_leaf: never through a link): split files, prefixes. */
static void walk_open(pmb_unpacker *w, const char *root, const pmb_manifest *m)
{
    memset(w, 0, sizeof *w);
    w->m = m;
    w->split = -1;
    w->pdirfd = -1;
    snprintf(w->root, sizeof w->root, "%s", root);
    w->rootfd = open(root, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (w->rootfd < 0)
        pmb_die("package '%s': cannot open %s: %s", m->file, root, strerror(errno));
}

static void walk_close(pmb_unpacker *w)
{
    if (w->pdirfd >= 0)
        close(w->pdirfd);
    close(w->rootfd);
}

/* Before the shards of a package that splits files are unpacked (by one
 * process of the node, the others waiting): each split file created empty
 * as begin_file creates a file (real parent directories, an earlier
 * layer's entry of that name replaced, never through a link), so that the
 * threads and ranks writing its pieces only open it (open_piece), each
 * writing its own range [offset, offset + piece) with pwrite. */
void pmb_split_create(const char *root, const pmb_manifest *m)
{
    if (!m->nsplits)
        return;
    pmb_unpacker walk;
    walk_open(&walk, root, m);
    for (int i = 0; i < m->nsplits; i++) {
        const char *name = m->splits[i].path, *leaf;
        int pfd = parent_fd(&walk, name, &leaf), fd = -1;
        for (int tries = 0; tries < 8 && fd < 0; tries++) {
            fd = openat(pfd, leaf, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
            if (fd >= 0)
                break;
            if (errno == ENOSPC)
                no_space(&walk, name);
            if (errno != EEXIST)
                pmb_die("package '%s': cannot create %s/%s: %s", m->file, root, name,
                        strerror(errno));
            clear_leaf(&walk, pfd, leaf, name);
        }
        if (fd < 0 || close(fd))
            pmb_die("package '%s': cannot create %s/%s", m->file, root, name);
    }
    walk_close(&walk);
}

/* Every piece of every split file is in (the node's unpack of the package
 * is done and checked): each must have its full size (the pieces' ranges
 * chain without a gap, shard_end); then its mode and times. */
void pmb_split_finish(const char *root, const pmb_manifest *m)
{
    if (!m->nsplits)
        return;
    pmb_unpacker walk;
    walk_open(&walk, root, m);
    for (int i = 0; i < m->nsplits; i++) {
        const pmb_split *sp = &m->splits[i];
        const char *leaf;
        int pfd = parent_fd(&walk, sp->path, &leaf);
        int fd = openat(pfd, leaf, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
        struct stat st;
        if (fd < 0 || fstat(fd, &st) || !S_ISREG(st.st_mode) || (uint64_t)st.st_size != sp->size)
            pmb_die("package '%s': the split file %s is not complete after unpacking", m->file,
                    sp->path);
        struct timespec ts[2] = {{(time_t)sp->mtime, 0}, {(time_t)sp->mtime, 0}};
        if (fchmod(fd, sp->mode))
            pmb_die("package '%s': cannot set mode of %s/%s: %s", m->file, root, sp->path,
                    strerror(errno));
        if (futimens(fd, ts))
            pmb_die("package '%s': cannot set times of %s/%s: %s", m->file, root, sp->path,
                    strerror(errno));
        close(fd);
    }
    walk_close(&walk);
}

/* ---- prefixes ----------------------------------------------------------- */

/* The final path as it must be written inside a Python string literal (a
 * prefix-bearing text file whose name ends in ".py", e.g. _sysconfigdata:
 * its paths are quoted literals): backslash, both quotes and control bytes
 * escaped, so a tree path with a quote in it stays valid Python.  The same
 * rule as fixup.write_final_paths (relocate.py_literal_body).  Returns a
 * malloc'd string. */
static char *py_literal_body(const char *s, size_t *len)
{
    size_t n = strlen(s);
    char *out = pmb_xmalloc(4 * n + 1), *o = out;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '\\' || c == '\'' || c == '"') {
            *o++ = '\\';
            *o++ = (char)c;
        } else if (c < 0x20 || c == 0x7f) {
            o += sprintf(o, "\\x%02x", c);
        } else {
            *o++ = (char)c;
        }
    }
    *o = 0;
    *len = (size_t)(o - out);
    return out;
}

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && !strcmp(s + n - k, suffix);
}

/* Replace the recorded placeholder by the final tree path in every
 * prefix-bearing file of this package (text: plain replace, the path
 * escaped for a string literal in a ".py" file; binary: inside
 * NUL-terminated strings, padded with NULs, only when the new path fits).
 * Called right after the package's own layer is unpacked; each listed path
 * must then be a regular file, reached without following a symlink. */
void pmb_patch_prefixes(const char *root, const char *final_root, const pmb_manifest *m)
{
    const char *const raw_root = final_root;
    size_t raw_len = strlen(raw_root);
    size_t py_len;
    char *py_root = py_literal_body(raw_root, &py_len);
    pmb_unpacker walk;
    walk_open(&walk, root, m);
    for (int i = 0; i < m->nprefix; i++) {
        const pmb_prefix *pf = &m->prefix[i];
        size_t olen = strlen(pf->placeholder);
        int py = !pf->binary && ends_with(pf->path, ".py");
        final_root = py ? py_root : raw_root;
        size_t nlen = py ? py_len : raw_len;
        if (pf->binary && nlen > olen) {
            /* the tree is <chroot>/env-<32 hex digits>: 37 bytes more than the chroot */
            if (!pmb_mpi_up) /* python-mpi-bcast unpack: the tree is DEST itself */
                pmb_die("package '%s': %s can hold a path of at most %zu bytes (its recorded "
                        "placeholder), but %s has %zu; choose a destination whose path is at "
                        "most %zu bytes long", m->file, pf->path, olen, final_root, nlen, olen);
            pmb_die("package '%s': %s can hold a path of at most %zu bytes (its recorded "
                    "placeholder), but the staged tree %s has %zu; set PYTHON_MPI_CHROOT to a "
                    "path of at most %zu bytes", m->file, pf->path, olen, final_root, nlen,
                    olen > 37 ? olen - 37 : 0);
        }
        const char *leaf;
        int pfd = parent_fd(&walk, pf->path, &leaf);
        struct stat st, rd;
        if (fstatat(pfd, leaf, &st, AT_SYMLINK_NOFOLLOW) || !S_ISREG(st.st_mode))
            pmb_die("package '%s': corrupt manifest (prefix file '%s' is not a regular file of "
                    "the package)", m->file, pf->path);
        /* a file its owner cannot read (mode 000, 0200) is read all the same, as check
         * mode accepts it and root reads it: the patched copy gets st's mode back */
        if (!(st.st_mode & S_IRUSR) && fchmodat(pfd, leaf, (st.st_mode & 07777) | S_IRUSR, 0))
            pmb_die("cannot make %s/%s readable to patch its prefix: %s", root, pf->path,
                    strerror(errno));
        int fd = openat(pfd, leaf, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0 || fstat(fd, &rd) || !S_ISREG(rd.st_mode) || rd.st_ino != st.st_ino)
            pmb_die("package '%s': corrupt manifest (prefix file '%s' is not a regular file of "
                    "the package)", m->file, pf->path);
        size_t size = (size_t)rd.st_size;
        char *data = pmb_xmalloc(size + 1);
        if (pmb_read_full(fd, data, size) < size)
            pmb_die("cannot read %s/%s while patching prefixes", root, pf->path);
        close(fd);
        size_t cap = size;
        if (!pf->binary && nlen > olen) { /* exact size: count the hits first */
            size_t hits = 0;
            for (char *p = data; (p = memmem(p, size - (size_t)(p - data), pf->placeholder, olen));
                 p += olen)
                hits++;
            cap = size + hits * (nlen - olen);
        }
        char *out = pmb_xmalloc(cap + 1);
        size_t o = 0, j = 0;
        while (j < size) {
            char *hit = memmem(data + j, size - j, pf->placeholder, olen);
            if (!hit) {
                memcpy(out + o, data + j, size - j);
                o += size - j;
                break;
            }
            size_t pre = (size_t)(hit - (data + j));
            memcpy(out + o, data + j, pre);
            o += pre;
            j += pre;
            if (!pf->binary) {
                memcpy(out + o, final_root, nlen);
                o += nlen;
                j += olen;
            } else {
                /* the C string starting at hit: replace, shift its tail, pad */
                char *end = memchr(hit, 0, size - j);
                size_t slen = end ? (size_t)(end - hit) : size - j;
                size_t k = 0, w = 0;
                char *s = out + o;
                while (k < slen) {
                    if (k + olen <= slen && !memcmp(hit + k, pf->placeholder, olen)) {
                        memcpy(s + w, final_root, nlen);
                        w += nlen;
                        k += olen;
                    } else {
                        s[w++] = hit[k++];
                    }
                }
                memset(s + w, 0, slen - w);
                o += slen;
                j += slen;
            }
        }
        char tmp[64];
        snprintf(tmp, sizeof tmp, ".pmb-patch.%ld.tmp", (long)getpid());
        if (unlinkat(pfd, tmp, 0) && errno != ENOENT)
            pmb_die("cannot remove %s/%s: %s", root, tmp, strerror(errno));
        int wfd = openat(pfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
        if (wfd < 0)
            pmb_die("cannot write %s/%s: %s", root, tmp, strerror(errno));
        if (pmb_write_all(wfd, out, o))
            pmb_die("cannot write %s: %s", tmp, strerror(errno));
        if (fchmod(wfd, st.st_mode & 0777))
            pmb_die("cannot set mode of %s: %s", tmp, strerror(errno));
        if (close(wfd) || renameat(pfd, tmp, pfd, leaf))
            pmb_die("cannot replace %s/%s: %s", root, pf->path, strerror(errno));
        free(data);
        free(out);
    }
    walk_close(&walk);
    free(py_root);
}

/* Check mode's pmb_patch_prefixes: each prefix line must name a regular
 * file of the tree `names` describes, below real directories (the same
 * refusals; the length of the final path is the destination's matter). */
void pmb_check_prefixes(const pmb_names *names, const pmb_manifest *m)
{
    for (int i = 0; i < m->nprefix; i++) {
        const char *path = m->prefix[i].path;
        size_t n = strlen(path);
        size_t node = 0;
        for (size_t k = 0, c = 0; k <= n; k++) {
            if (k < n && path[k] != '/')
                continue;
            node = k - c > NAME_MAX ? 0 : names_child(names, node, path + c, k - c);
            c = k + 1;
            if (!node || k == n)
                break; /* missing: so is the file */
            if (names->type[node] != 'd') {
                char b[256];
                pmb_die("package '%s': refusing archive member '%s' (its parent '%.*s' is a "
                        "symlink or a file, not a directory)", m->file,
                        shown(path, n, b, sizeof b), (int)k, path);
            }
        }
        if (!node || names->type[node] != 'f')
            pmb_die("package '%s': corrupt manifest (prefix file '%s' is not a regular file of "
                    "the package)", m->file, path);
    }
}

/* A tree built from an earlier tree (stage.c): the files m's prefixes name
 * hold old_root where the placeholder was; with new_root (of the same
 * length) in its place they are what pmb_patch_prefixes writes for
 * new_root.  `root`'s files are copies (never the earlier tree's inodes):
 * they are rewritten in place.  A file a later layer replaced by a link
 * is skipped (it holds no placeholder). */
void pmb_repatch_prefixes(const char *root, const char *old_root, const char *new_root,
                          const pmb_manifest *m)
{
    size_t ol = strlen(old_root), nl = strlen(new_root), opl, npl;
    char *opy = py_literal_body(old_root, &opl), *npy = py_literal_body(new_root, &npl);
    if (ol != nl || opl != npl)
        pmb_die("cannot build %s from %s: their paths differ in length", new_root, old_root);
    for (int i = 0; i < m->nprefix; i++) {
        const pmb_prefix *pf = &m->prefix[i];
        int py = !pf->binary && ends_with(pf->path, ".py");
        const char *from = py ? opy : old_root, *to = py ? npy : new_root;
        size_t len = py ? opl : ol;
        char path[PATH_MAX];
        snprintf(path, sizeof path, "%s/%s", root, pf->path);
        int fd = open(path, O_RDWR | O_NOFOLLOW | O_CLOEXEC);
        struct stat st;
        if (fd < 0 && (errno == ELOOP || errno == ENOENT))
            continue;
        if (fd < 0 || fstat(fd, &st))
            pmb_die("cannot open %s to patch its prefix: %s", path, strerror(errno));
        if (!S_ISREG(st.st_mode)) {
            close(fd);
            continue;
        }
        size_t size = (size_t)st.st_size;
        char *data = pmb_xmalloc(size + 1);
        if (pmb_pread_full(fd, data, size, 0) < size)
            pmb_die("cannot read %s while patching prefixes", path);
        int changed = 0;
        for (char *p = data; len && (p = memmem(p, size - (size_t)(p - data), from, len)); p += len) {
            memcpy(p, to, len);
            changed = 1;
        }
        if (changed && pmb_pwrite_all(fd, data, size, 0))
            pmb_die("cannot write %s while patching prefixes: %s", path, strerror(errno));
        if (close(fd))
            pmb_die("cannot write %s while patching prefixes: %s", path, strerror(errno));
        free(data);
    }
    free(opy);
    free(npy);
}

static int rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb; (void)ftw;
    if (flag == FTW_DP)
        return rmdir(path);
    return unlink(path);
}

int pmb_rmtree(const char *path)
{
    return nftw(path, rm_one, 32, FTW_DEPTH | FTW_PHYS);
}

/* ---- python-mpi --pmb-unpack DEST FINAL PKG... ---------------------------- */
