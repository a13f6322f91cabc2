/* Staging: rank 0 reads each package once, MPI carries the bytes to one
 * leader per node, leaders unpack into a private temporary directory and
 * rename it into place when every package is complete and verified.
 *
 * Waiting ranks never spin: they test a request and sleep (a spinning node
 * barrier made staging 10x slower on an oversubscribed node). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "pmb.h"

void pmb_comms_init(pmb_comms *c)
{
    MPI_Comm_rank(MPI_COMM_WORLD, &c->world_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &c->world_size);
    if (MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &c->node) != MPI_SUCCESS)
        pmb_die("MPI_Comm_split_type failed");
    MPI_Comm_rank(c->node, &c->node_rank);
    MPI_Comm_size(c->node, &c->node_size);
    MPI_Comm_split(MPI_COMM_WORLD, c->node_rank == 0 ? 0 : MPI_UNDEFINED, c->world_rank, &c->leaders);
    int idx = 0, nn = 0;
    if (c->leaders != MPI_COMM_NULL) {
        MPI_Comm_rank(c->leaders, &idx);
        MPI_Comm_size(c->leaders, &nn);
    }
    int pair[2] = {idx, nn};
    MPI_Bcast(pair, 2, MPI_INT, 0, c->node);
    c->node_index = pair[0];
    c->nnodes = pair[1];
}

/* Wait for a request without burning the core: test, then sleep a little
 * longer each time (up to 1 ms). */
void pmb_wait(MPI_Request *req)
{
    long ns = 1000;
    for (;;) {
        int done = 0;
        MPI_Test(req, &done, MPI_STATUS_IGNORE);
        if (done)
            return;
        struct timespec ts = {0, ns};
        nanosleep(&ts, NULL);
        if (ns < 1000000)
            ns *= 2;
    }
}

void pmb_node_barrier(void)
{
    MPI_Request r;
    MPI_Ibarrier(pmb_c.node, &r);
    pmb_wait(&r);
}

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
    check_owned_dir(dir, "node directory");
}

static void check_space(const char *dir, uint64_t need, uint64_t files)
{
    struct statvfs sv;
    if (statvfs(dir, &sv))
        pmb_die("cannot stat filesystem of %s: %s", dir, strerror(errno));
    if (pmb_cfg.mode != PMB_MODE_STAGE_ONLY && (sv.f_flag & ST_NOEXEC))
        pmb_die("node directory %s is on a noexec mount; set PYTHON_MPI_CHROOT to a directory "
                "on a filesystem mounted with exec", dir);
    uint64_t avail = (uint64_t)sv.f_bavail * (uint64_t)sv.f_frsize;
    uint64_t want = need + files * 4096 / 2 + (1u << 20);
    if (avail < want)
        pmb_die("node directory %s has %.1f MB free, the packages need %.1f MB unpacked; free "
                "space or set PYTHON_MPI_CHROOT elsewhere", dir, avail / 1e6, want / 1e6);
}

/* ---- the broadcast pipeline ------------------------------------------ */

static MPI_Request *poke_reqs;
static int poke_n;

static void poke(void)
{
    int flag;
    if (poke_n)
        MPI_Testall(poke_n, poke_reqs, &flag, MPI_STATUSES_IGNORE);
}

static void read_exact(int fd, unsigned char *buf, size_t n, const char *file)
{
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, buf + got, n - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            pmb_die("package '%s': read failed after %zu of %zu bytes: %s", file, got, n,
                    r < 0 ? strerror(errno) : "unexpected end of file (truncated?)");
        got += (size_t)r;
    }
}

/* Broadcast package PKG (rank 0 reads from fd) to the leaders; leaders with
 * an unpacker feed the bytes into it and check every shard's hash. */
static void bcast_package(pmb_manifest *m, int fd, pmb_unpacker *u, double *t)
{
    const uint64_t chunk = pmb_cfg.chunk, total = m->payload_size;
    const int nbuf = pmb_cfg.nbuf;
    uint64_t nchunks = (total + chunk - 1) / chunk;
    unsigned char *buf[8];
    MPI_Request req[8];
    for (int i = 0; i < nbuf; i++) {
        buf[i] = pmb_xmalloc(chunk);
        req[i] = MPI_REQUEST_NULL;
    }
    int root = pmb_c.world_rank == 0;
    if (root && lseek(fd, (off_t)m->payload_start, SEEK_SET) < 0)
        pmb_die("package '%s': seek failed: %s", m->file, strerror(errno));
    poke_reqs = req;
    poke_n = nbuf;
    pmb_set_poke(poke);

    pmb_sha256 sh;
    pmb_sha256_init(&sh);
    int shard = 0;
    uint64_t shard_left = m->shards[0].csize, pos = 0;

    uint64_t posted = 0;
#define POST(k) do { \
        uint64_t k_ = (k); int b_ = (int)(k_ % (uint64_t)nbuf); \
        size_t len_ = (size_t)((k_ + 1) * chunk > total ? total - k_ * chunk : chunk); \
        if (root) { double t0_ = pmb_now(); read_exact(fd, buf[b_], len_, m->file); t[0] += pmb_now() - t0_; } \
        MPI_Ibcast(buf[b_], (int)len_, MPI_BYTE, 0, pmb_c.leaders, &req[b_]); \
    } while (0)

    while (posted < nchunks && posted < (uint64_t)nbuf - 1)
        POST(posted++);
    for (uint64_t k = 0; k < nchunks; k++) {
        if (posted < nchunks)
            POST(posted++);
        int b = (int)(k % (uint64_t)nbuf);
        double t0 = pmb_now();
        pmb_wait(&req[b]);
        t[1] += pmb_now() - t0;
        size_t len = (size_t)((k + 1) * chunk > total ? total - k * chunk : chunk);
        if (!u)
            continue;
        t0 = pmb_now();
        /* hash shard by shard */
        size_t off = 0;
        while (off < len) {
            size_t take = shard_left < len - off ? (size_t)shard_left : len - off;
            pmb_sha256_update(&sh, buf[b] + off, take);
            off += take;
            shard_left -= take;
            pos += take;
            if (!shard_left) {
                unsigned char d[32];
                pmb_sha256_final(&sh, d);
                if (memcmp(d, m->shards[shard].sha, 32))
                    pmb_die("package '%s' is corrupt: shard %d fails its SHA-256 check; copy or "
                            "pack it again", m->file, shard);
                pmb_sha256_init(&sh);
                if (++shard < m->nshards)
                    shard_left = m->shards[shard].csize;
            }
        }
        pmb_unpacker_feed(u, buf[b], len);
        t[2] += pmb_now() - t0;
    }
#undef POST
    poke_n = 0;
    pmb_set_poke(NULL);
    for (int i = 0; i < nbuf; i++)
        free(buf[i]);
}

/* The tree directory name: a hash over the content hashes of all layers. */
static void tree_id(pmb_manifest *ms, int n, char out[33])
{
    pmb_sha256 h;
    unsigned char d[32];
    pmb_sha256_init(&h);
    for (int i = 0; i < n; i++)
        pmb_sha256_update(&h, ms[i].content_hash, 32);
    pmb_sha256_final(&h, d);
    pmb_hex(d, 16, out);
}

/* Stage all packages; return the path of the ready tree (same on all ranks
 * of a node).  timings: read, bcast-wait, unpack, total. */
char *pmb_stage(pmb_manifest *ms, int n, int *fds, double *timings)
{
    double t_start = pmb_now();
    char *chroot = pmb_expand_chroot(pmb_cfg.chroot, pmb_c.node_index);
    char id[33];
    tree_id(ms, n, id);
    size_t plen = strlen(chroot) + 64;
    char *tree = pmb_xmalloc(plen);
    snprintf(tree, plen, "%s/env-%s", chroot, id);

    int have = 1;
    uint64_t need = 0, files = 0;
    for (int i = 0; i < n; i++) {
        need += ms[i].unpacked_size;
        files += ms[i].files;
    }
    if (pmb_c.node_rank == 0) {
        make_node_dir(chroot);
        struct stat st;
        if (lstat(tree, &st) == 0) {
            check_owned_dir(tree, "staged tree");
        } else {
            have = 0;
            check_space(chroot, need, files);
        }
    }
    /* does every node already hold this exact tree?  (rank 0 is a leader) */
    int all_have = 1;
    if (pmb_c.leaders != MPI_COMM_NULL) {
        MPI_Request r;
        MPI_Iallreduce(&have, &all_have, 1, MPI_INT, MPI_MIN, pmb_c.leaders, &r);
        pmb_wait(&r);
    }
    timings[0] = timings[1] = timings[2] = 0;
    if (pmb_c.leaders != MPI_COMM_NULL && !all_have) {
        char tmp[PATH_MAX];
        pmb_unpacker *u = NULL;
        if (!have) {
            snprintf(tmp, sizeof tmp, "%s/.env-%s.XXXXXX", chroot, id);
            if (!mkdtemp(tmp))
                pmb_die("cannot create a temporary directory in %s: %s", chroot, strerror(errno));
        }
        double t0 = pmb_now();
        uint64_t nf = 0, nb = 0;
        for (int i = 0; i < n; i++) {
            if (!have)
                u = pmb_unpacker_new(tmp, tree, &ms[i]);
            bcast_package(&ms[i], pmb_c.world_rank == 0 ? fds[i] : -1, have ? NULL : u, timings);
            if (!have) {
                uint64_t f = 0, b = 0;
                pmb_unpacker_finish(u, &f, &b);
                nf += f;
                nb += b;
                pmb_patch_prefixes(tmp, tree, &ms[i]);
            }
        }
        if (!have) {
            if (chmod(tmp, 0700))
                pmb_die("cannot chmod %s: %s", tmp, strerror(errno));
            if (rename(tmp, tree)) {
                if (errno == EEXIST || errno == ENOTEMPTY) {
                    pmb_rmtree(tmp); /* someone else finished first: theirs is complete */
                } else {
                    pmb_die("cannot rename %s to %s: %s", tmp, tree, strerror(errno));
                }
            }
            if (pmb_cfg.verbose >= 2)
                pmb_log("rank %d (node %d): unpacked %d package(s), %llu files, %.1f MB in %.3f s into %s",
                        pmb_c.world_rank, pmb_c.node_index, n, (unsigned long long)nf, nb / 1e6,
                        pmb_now() - t0, tree);
        }
    } else if (pmb_c.node_rank == 0 && pmb_cfg.verbose >= 2) {
        pmb_log("rank %d (node %d): reusing %s", pmb_c.world_rank, pmb_c.node_index, tree);
    }
    pmb_node_barrier();
    int reused = all_have;
    MPI_Bcast(&reused, 1, MPI_INT, 0, pmb_c.node);
    timings[3] = pmb_now() - t_start;
    timings[4] = reused;
    free(chroot);
    return tree;
}
