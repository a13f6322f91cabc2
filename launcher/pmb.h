/* python-mpi: stage packaged Python environments over MPI, then run them.
 *
 * The files are layers; a file calls only into the layers below it, each
 * through that layer's header, so a call across layers is a visible
 * #include (tests/codebase/test_layers.py builds the files and checks their calls):
 *
 *   main.c      the pipeline: init MPI, read the manifests, stage, start
 *   tools.c     the helper modes (--pmb-info, --pmb-unpack, --pmb-manifest,
 *               --pmb-exec-check, --pmb-cleanup-tree)
 *   start.c     start.h     run the staged interpreter (embed / exec)
 *   stage.c     stage.h     MPI distribution, node directories
 *   nodes.c     nodes.h     holds on staged trees, their owners, reclaiming
 *   mpilib.c    mpilib.h    mpi4py finds the launcher's MPI library
 *   comm.c      comm.h      communicators and waiting on MPI without spinning
 *   threads.c   threads.h   the unpacking threads and their shares of shards
 *   unpack.c    unpack.h    zstd + tar into the node directory
 *   manifest.c  manifest.h  package headers;  config.c  config.h  settings
 *   zstd-shim/  <zstd.h>    libzstd loaded at run time (no headers needed)
 *   sha256.c    sha256.h    SHA-256 (SHA-NI when the CPU has it)
 *   util.c      pmb.h       (this file) the types and state every layer
 *               shares, errors, I/O loops, back-off, allocation
 *   own.c       own.h       the program's view of MPI (also in exec_shim.c)
 *
 * Every symbol carries the pmb_ prefix. */
#ifndef PMB_H
#define PMB_H

#include <mpi.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define PMB_SKIPPABLE_MAGIC 0x184D2A5Bu
#define PMB_MAX_MANIFEST (64u << 20)
#define PMB_FORMAT_VERSION 3 /* the newest read; version 2: no part lines */

enum pmb_mode { PMB_MODE_EMBED, PMB_MODE_EXEC, PMB_MODE_STAGE_ONLY };

typedef struct {
    uint64_t offset, csize, usize, nfiles;
    unsigned char sha[32];
} pmb_shard;

typedef struct {
    int binary;
    char *path;
    char *placeholder;
} pmb_prefix;

/* "part SHARD OFFSET SIZE MODE MTIME PATH": shard SHARD begins OFFSET bytes
 * into the data of a file split across shards (split: its index) */
typedef struct {
    int shard, split;
    uint64_t offset;
} pmb_part;

/* a regular file whose data runs across shards: its header is in shard
 * head, its last byte in shard last */
typedef struct {
    char *path;
    uint64_t size, mtime;
    unsigned mode;
    int head, last;
} pmb_split;

typedef struct {
    char *file;            /* the name as given in PYTHON_MPI_PACKAGES */
    char *name, *kind, *python, *abi, *libpython, *executable, *site_dir;
    uint64_t unpacked_size, files, payload_size, payload_start;
    unsigned char content_hash[32];
    unsigned char tree_key[32]; /* what this layer makes of a tree (manifest.c) */
    int nshards;
    pmb_shard *shards;
    int nprefix;
    pmb_prefix *prefix;
    int nparts, nsplits;
    pmb_part *parts;
    int *shard_part;       /* per shard: its part (index into parts) or -1 */
    pmb_split *splits;     /* in the manifest's order */
    int *split_order;      /* splits sorted by path */
    char *text;            /* the manifest text as read (broadcast to all ranks) */
    size_t text_len;
} pmb_manifest;

typedef struct {
    char *pkgroot;
    char **packages;
    int npackages;
    char *chroot;          /* may hold %n (node index), %h (host name) */
    int verbose;
    enum pmb_mode mode;
    int cleanup;
    uint64_t chunk;
    int nbuf;
    int unpack_ranks;      /* ranks per node that unpack (0: all) */
    int tree_arg;          /* argv[tree_arg] is relative to the staged tree (0: none) */
    int chunk_set;         /* PYTHON_MPI_CHUNK was given */
    int threads;           /* PYTHON_MPI_THREADS: cap on threads per rank (0: auto) */
} pmb_config;

typedef struct {
    int world_rank, world_size;
    int node_rank, node_size, node_index, nnodes;
    MPI_Comm node, leaders;  /* leaders == MPI_COMM_NULL on non-leaders */
} pmb_comms;

/* global state used by error reporting and the exit handler */
extern pmb_comms pmb_c;
extern pmb_config pmb_cfg;
extern int pmb_mpi_up;
extern int pmb_collective_phase; /* every rank runs the same step: rank 0 reports errors */
extern int pmb_thread_level;     /* what MPI_Init_thread provided */
/* set in unpacking worker threads: pmb_die there records the message and
 * ends the thread instead of calling MPI (threads.c sets it) */
extern __thread void (*pmb_thread_die)(const char *msg);

/* util.c; errors: one line "python-mpi: HOST (rank R): ...", then MPI_Abort (or exit) */
const char *pmb_host(void);
void pmb_die(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
void pmb_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
double pmb_now(void);
void pmb_backoff(long *ns, long max);
void pmb_abort_grace(void);
void *pmb_xmalloc(size_t n);
void *pmb_xcalloc(size_t n, size_t size);
void *pmb_xrealloc(void *p, size_t n);
char *pmb_xstrdup(const char *s);
size_t pmb_read_full(int fd, void *buf, size_t n);
size_t pmb_pread_full(int fd, void *buf, size_t n, uint64_t off);
int pmb_write_all(int fd, const void *buf, size_t n);
int pmb_pwrite_all(int fd, const void *buf, size_t n, uint64_t off);

#endif
