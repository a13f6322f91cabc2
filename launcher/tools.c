/* python-mpi's helper modes: each is a main of its own that python-mpi
 * runs when its first argument names the mode (main.c).  None of them
 * stages; none but --pmb-info starts MPI.
 *
 *   --pmb-info              what python-mpi-bcast info shows
 *   --pmb-unpack [--verify] DEST FINAL PKG...   python-mpi-bcast
 *                           unpack/load (verify --into: --verify): the
 *                           launcher's unpacker without MPI
 *   --pmb-unpack --check PKG...   python-mpi-bcast verify: every check of
 *                           the unpacking, writing nothing
 *   --pmb-manifest FILE...  the tests hold the Python parser to this one
 *   --pmb-exec-check VERSION-STRING  the exec-mode rule, without MPI
 *   --pmb-sha256 IMPL PIECE FILE...  the tests hold sha256.c to hashlib
 *   --pmb-cleanup-tree TREE RANK     exec mode's clean-up (exec_shim.c) */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zstd.h> /* the system's, or launcher/zstd-shim/zstd.h */

#include "config.h"
#include "manifest.h"
#include "mpilib.h"
#include "nodes.h"
#include "sha256.h"
#include "start.h"
#include "threads.h"
#include "tools.h"
#include "unpack.h"

/* python-mpi --pmb-info: which MPI, which modes, where mpi4py finds MPI,
 * which libzstd (python-mpi-bcast info) */
int pmb_info_main(void)
{
#ifdef PMB_ZSTD_DLOPEN
    pmb_zstd_require();
#endif
    unsigned zv = ZSTD_versionNumber();
    int provided;
    /* PMPI_*, as main.c: MPI_Init_thread & co. are own.c's, the program's */
    PMPI_Init_thread(NULL, NULL, MPI_THREAD_MULTIPLE, &provided);
    char v[MPI_MAX_LIBRARY_VERSION_STRING];
    int n = 0;
    MPI_Get_library_version(v, &n);
    while (n > 0 && (v[n - 1] == '\n' || v[n - 1] == ' ' || v[n - 1] == 0))
        v[--n] = 0;
    char *nl = strchr(v, '\n');
    if (nl)
        *nl = 0;
    int major, minor;
    MPI_Get_version(&major, &minor);
    char why[256] = "";
    int exec_ok = pmb_exec_supported(why, sizeof why);
    printf("mpi_library: %s\n", v);
    printf("mpi_standard: %d.%d\n", major, minor);
    printf("thread_level: %s\n", provided == MPI_THREAD_MULTIPLE ? "multiple" :
           provided == MPI_THREAD_SERIALIZED ? "serialized" : provided == MPI_THREAD_FUNNELED ? "funneled" : "single");
    printf("modes: embed stage-only%s\n", exec_ok ? " exec" : "");
    if (!exec_ok)
        printf("exec_mode: unavailable (%s)\n", why);
    const char *lib = pmb_mpi_library_path();
    printf("mpi_abi: %s\n", pmb_mpi_family());
    if (lib)
        printf("mpi_file: %s\n", lib);
    printf("mpi4py: %s\n", pmb_mpi4py_plan(lib));
#ifdef PMB_ZSTD_DLOPEN
    printf("zstd: libzstd %u.%u.%u, loaded at run time from %s\n", zv / 10000, zv / 100 % 100,
           zv % 100, pmb_zstd_describe());
#elif defined(PMB_ZSTD_STATIC)
    printf("zstd: libzstd %u.%u.%u, linked statically\n", zv / 10000, zv / 100 % 100, zv % 100);
#else
    printf("zstd: libzstd %u.%u.%u, linked\n", zv / 10000, zv / 100 % 100, zv % 100);
#endif
    PMPI_Finalize();
    return 0;
}

/* --pmb-unpack --check PKG...: every check unpacking the packages in order
 * into one tree makes (frames, SHA-256, tar headers and paths, sizes,
 * files, totals, prefix lines), in one thread, creating nothing: the tree
 * is a table of names (unpack.c, check mode).  Memory: a chunk, the
 * decoder's window and the names. */
static int check_main(int argc, char **argv)
{
    const uint64_t chunk = 4u << 20;
    unsigned char *buf = pmb_xmalloc(chunk);
    pmb_names *names = pmb_names_new();
    pmb_unpack_verify = 1;
    for (int i = 0; i < argc; i++) {
        pmb_manifest m = {0};
        int fd;
        pmb_manifest_read_file(&m, NULL, argv[i], &fd);
        if (lseek(fd, (off_t)m.payload_start, SEEK_SET) < 0)
            pmb_die("package '%s': seek failed: %s", m.file, strerror(errno));
        pmb_unpacker *u = pmb_unpacker_new(NULL, &m, names);
        for (uint64_t off = 0; off < m.payload_size; off += chunk) {
            size_t want = m.payload_size - off < chunk ? (size_t)(m.payload_size - off) : chunk;
            if (pmb_read_full(fd, buf, want) < want)
                pmb_die("package '%s': read failed: %s", m.file,
                        errno ? strerror(errno) : "unexpected end of file");
            pmb_unpacker_feed(u, buf, off, want, NULL, 0);
        }
        uint64_t files, bytes;
        pmb_unpacker_finish(u, &files, &bytes);
        pmb_check_totals(&m, files, bytes);
        pmb_check_prefixes(names, &m);
        close(fd);
    }
    pmb_names_free(names);
    free(buf);
    return 0;
}

/* Unpack packages in order into the existing directory DEST, patching
 * prefixes for FINAL, without MPI: the reader behind `python-mpi-bcast
 * unpack`.  One line on stderr and exit status 1 on any problem. */
int pmb_unpack_main(int argc, char **argv)
{
    if (argc >= 1 && !strcmp(argv[0], "--check")) {
        if (argc < 2) {
            fprintf(stderr, "usage: python-mpi --pmb-unpack --check PKG...\n");
            return 2;
        }
        return check_main(argc - 1, argv + 1);
    }
    if (argc >= 1 && !strcmp(argv[0], "--verify")) {
        pmb_unpack_verify = 1;
        argc--;
        argv++;
    }
    if (argc < 3) {
        fprintf(stderr, "usage: python-mpi --pmb-unpack [--verify] DEST FINAL PKG...\n"
                        "       python-mpi --pmb-unpack --check PKG...\n");
        return 2;
    }
    const char *dest = argv[0], *final_root = argv[1];
    int n = argc - 2;
    pmb_manifest *ms = pmb_xcalloc((size_t)n, sizeof *ms);
    int *fds = pmb_xcalloc((size_t)n, sizeof *fds);
    for (int i = 0; i < n; i++)
        pmb_manifest_read_file(&ms[i], NULL, argv[2 + i], &fds[i]);
    /* the launcher's pipeline without MPI: this thread reads chunks into a
     * ring, the pool's threads unpack them (threads.c) */
    pmb_config_threads(&pmb_cfg);
    int nt = pmb_threads_local();
    const uint64_t chunk = 4u << 20;
    const int nbuf = 8;
    for (int i = 0; i < n; i++)
        pmb_tree_need += ms[i].unpacked_size;
    unsigned char *buf = pmb_xmalloc(chunk * nbuf);
    for (int i = 0; i < n; i++) {
        pmb_manifest *m = &ms[i];
        if (lseek(fds[i], (off_t)m->payload_start, SEEK_SET) < 0)
            pmb_die("package '%s': seek failed: %s", m->file, strerror(errno));
        pmb_split_create(dest, m);
        int *owner = pmb_xmalloc(sizeof(int) * (size_t)m->nshards);
        pmb_assign_shards(m, nt, owner);
        pmb_pool *pool = pmb_pool_new(dest, m, owner, 0, nt, buf, chunk, nbuf, nt == 1);
        uint64_t nchunks = (m->payload_size + chunk - 1) / chunk;
        for (uint64_t k = 0; k < nchunks; k++) {
            pmb_pool_check(pool); /* a failure ends the unpack now, not at the end */
            while (k >= nbuf && pmb_pool_done(pool) <= k - nbuf) {
                pmb_pool_wait(pool, 1000000);
                pmb_pool_check(pool);
            }
            uint64_t off = k * chunk;
            size_t want = m->payload_size - off < chunk ? (size_t)(m->payload_size - off) : chunk;
            unsigned char *b = buf + (k % nbuf) * chunk;
            if (pmb_read_full(fds[i], b, want) < want)
                pmb_die("package '%s': read failed: %s", m->file,
                        errno ? strerror(errno) : "unexpected end of file");
            pmb_pool_publish(pool, k + 1);
        }
        uint64_t files, bytes;
        pmb_pool_finish(pool, &files, &bytes);
        free(owner);
        pmb_check_totals(m, files, bytes);
        pmb_split_finish(dest, m);
        pmb_patch_prefixes(dest, final_root, m);
        close(fds[i]);
    }
    free(buf);
    return 0;
}

static void print_hex(const char *key, const char *v)
{
    printf(" %s=", key);
    for (const unsigned char *p = (const unsigned char *)(v ? v : ""); *p; p++)
        printf("%02x", *p);
}

/* python-mpi --pmb-manifest FILE...: parse each manifest (no MPI) and print
 * "OK" and the parsed fields, or "ERR" and the reason, one record per file.
 * Used by the tests to hold the Python parser to the same rules. */
int pmb_manifest_main(int argc, char **argv)
{
    for (int i = 0; i < argc; i++) {
        int fd = open(argv[i], O_RDONLY | O_CLOEXEC);
        unsigned char head[8];
        if (fd < 0 || pmb_read_full(fd, head, 8) != 8) {
            printf("ERR cannot read\n");
            if (fd >= 0)
                close(fd);
            continue;
        }
        uint32_t size = (uint32_t)head[4] | (uint32_t)head[5] << 8 | (uint32_t)head[6] << 16 | (uint32_t)head[7] << 24;
        if (size > PMB_MAX_MANIFEST) {
            printf("ERR too big\n");
            close(fd);
            continue;
        }
        unsigned char *body = pmb_xmalloc(size + 1);
        char err[512];
        size_t tlen;
        char *text = NULL;
        if (pmb_read_full(fd, body, size) != size)
            snprintf(err, sizeof err, "truncated");
        else
            text = pmb_manifest_decode(body, size, &tlen, err, sizeof err);
        close(fd);
        free(body);
        pmb_manifest m = {0};
        if (!text || pmb_manifest_parse(&m, text, tlen, err, sizeof err)) {
            printf("ERR %s\n", err);
            free(text);
            continue;
        }
        free(text);
        printf("OK");
        const char *keys[] = {"name", "kind", "python", "abi", "libpython", "executable", "site_dir"};
        const char *vals[] = {m.name, m.kind, m.python, m.abi, m.libpython, m.executable, m.site_dir};
        for (int k = 0; k < 7; k++)
            print_hex(keys[k], vals[k]);
        printf(" unpacked_size=%llu files=%llu payload_size=%llu shards=%d prefixes=%d\n",
               (unsigned long long)m.unpacked_size, (unsigned long long)m.files,
               (unsigned long long)m.payload_size, m.nshards, m.nprefix);
        for (int s = 0; s < m.nshards; s++)
            printf("shard %llu %llu %llu %llu\n", (unsigned long long)m.shards[s].offset,
                   (unsigned long long)m.shards[s].csize, (unsigned long long)m.shards[s].usize,
                   (unsigned long long)m.shards[s].nfiles);
        for (int p = 0; p < m.nparts; p++) {
            const pmb_split *sp = &m.splits[m.parts[p].split];
            printf("part %d %llu %llu %04o %llu", m.parts[p].shard,
                   (unsigned long long)m.parts[p].offset, (unsigned long long)sp->size, sp->mode,
                   (unsigned long long)sp->mtime);
            print_hex("path", sp->path);
            printf("\n");
        }
        for (int p = 0; p < m.nprefix; p++) {
            printf("prefix %s", m.prefix[p].binary ? "binary" : "text");
            print_hex("path", m.prefix[p].path);
            print_hex("placeholder", m.prefix[p].placeholder);
            printf("\n");
        }
    }
    fflush(stdout);
    return 0;
}

/* python-mpi --pmb-exec-check VERSION-STRING: start.c's exec-mode rule,
 * without MPI (the tests feed it the strings of MPIs that do not run here) */
int pmb_exec_check_main(int argc, char **argv)
{
    if (argc != 1) {
        fprintf(stderr, "usage: python-mpi --pmb-exec-check VERSION-STRING\n");
        return 2;
    }
    char why[256] = "";
    int ok = pmb_exec_supported_by(argv[0], why, sizeof why);
    printf("%s\n", ok ? "supported" : why);
    return 0;
}

int pmb_cleanup_tree_main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: python-mpi --pmb-cleanup-tree TREE RANK\n");
        return 2;
    }
    const char *v = getenv("PYTHON_MPI_VERBOSE");
    pmb_cfg.verbose = v && *v ? atoi(v) : 0;
    pmb_c.world_rank = atoi(argv[1]);
    pmb_cleanup_tree(argv[0]);
    return 0;
}

/* python-mpi --pmb-sha256 IMPL PIECE FILE...: each file's SHA-256 as
 * "IMPL HEX", with IMPL (auto, portable, sha-ni) the block function, fed in
 * pieces of 1 to PIECE bytes (0: in one piece), their sizes drawn from a
 * fixed sequence so that piece ends fall anywhere in a block.  Exit 3 when
 * IMPL is not available on this CPU or build. */
int pmb_sha256_main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: python-mpi --pmb-sha256 auto|portable|sha-ni PIECE FILE...\n");
        return 2;
    }
    if (strcmp(argv[0], "auto") && pmb_sha256_select(argv[0])) {
        printf("unavailable\n");
        return 3;
    }
    size_t piece = (size_t)strtoull(argv[1], NULL, 10);
    uint32_t lcg = 12345;
    for (int i = 2; i < argc; i++) {
        int fd = open(argv[i], O_RDONLY | O_CLOEXEC);
        struct stat st;
        if (fd < 0 || fstat(fd, &st))
            pmb_die("cannot open %s: %s", argv[i], strerror(errno));
        size_t n = (size_t)st.st_size;
        unsigned char *data = pmb_xmalloc(n + 1);
        if (pmb_read_full(fd, data, n) != n)
            pmb_die("cannot read %s", argv[i]);
        close(fd);
        pmb_sha256_ctx s;
        pmb_sha256_init(&s);
        size_t off = 0;
        do { /* (an empty file: one update of nothing) */
            size_t k = n - off;
            if (piece) {
                lcg = lcg * 1103515245u + 12345u;
                size_t want = 1 + (lcg >> 8) % piece;
                k = want < k ? want : k;
            }
            pmb_sha256_update(&s, data + off, k);
            off += k;
        } while (off < n);
        unsigned char d[32];
        pmb_sha256_final(&s, d);
        printf("%s ", pmb_sha256_impl());
        for (int k = 0; k < 32; k++)
            printf("%02x", d[k]);
        printf("\n");
        free(data);
    }
    fflush(stdout);
    return 0;
}
