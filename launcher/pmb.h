/* python-mpi: stage packaged Python environments over MPI, then run them.
 *
 * Files by phase: config.c (environment variables), manifest.c (package
 * headers), stage.c (MPI distribution and node directories), unpack.c
 * (zstd + tar into the node directory), start.c (embed / exec), mpilib.c
 * (mpi4py finds the launcher's MPI library), threads.c (unpacking threads),
 * main.c (the pipeline); util.c
 * has the helpers they all use.
 * Every symbol carries the pmb_ prefix. */
#ifndef PMB_H
#define PMB_H

#include <mpi.h>
#include <stddef.h>
#include <stdint.h>

#define PMB_SKIPPABLE_MAGIC 0x184D2A5Bu
#define PMB_MAX_MANIFEST (64u << 20)
#define PMB_FORMAT_VERSION 2

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

typedef struct {
    char *file;            /* the name as given in PYTHON_MPI_PACKAGES */
    char *name, *kind, *python, *abi, *libpython, *executable, *site_dir;
    uint64_t unpacked_size, files, payload_size, payload_start;
    unsigned char content_hash[32];
    int nshards;
    pmb_shard *shards;
    int nprefix;
    pmb_prefix *prefix;
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
 * ends the thread instead of calling MPI (threads.c) */
extern __thread void (*pmb_thread_die)(const char *msg);
/* unpacked bytes of every layer going into the tree being written (0:
 * unknown): how much more room a full node needs (unpack.c) */
extern uint64_t pmb_tree_need;

/* util.c; errors: one line "python-mpi: HOST (rank R): ...", then MPI_Abort (or exit) */
const char *pmb_host(void);
void pmb_die(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
void pmb_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
double pmb_now(void);
void pmb_abort_grace(void);
void *pmb_xmalloc(size_t n);
char *pmb_xstrdup(const char *s);

/* config.c */
void pmb_config_read(pmb_config *cfg);
void pmb_config_threads(pmb_config *cfg);
int pmb_parse_size(const char *s, uint64_t *out);
char *pmb_expand_chroot(const char *pattern, int node_index);

/* manifest.c: the format's rules (pkgformat.py applies the same) */
int pmb_manifest_parse(pmb_manifest *m, const char *text, size_t len, char *err, size_t errlen);
void pmb_manifest_read_file(pmb_manifest *m, const char *dir, const char *file, int *fd_out);
const char *pmb_path_problem(const char *path, size_t len);
const char *pmb_link_problem(const char *name, const char *target, size_t len);
int pmb_manifest_main(int argc, char **argv);

/* unpack.c: every shard one checksummed zstd frame of whole tar members;
 * writes never leave the tree (see the comment at the top of unpack.c) */
typedef struct pmb_unpacker pmb_unpacker;
pmb_unpacker *pmb_unpacker_new(const char *root, const pmb_manifest *m);
void pmb_unpacker_feed(pmb_unpacker *u, const unsigned char *buf, uint64_t offset, size_t len,
                       const int *owner, int me);
void pmb_unpacker_finish(pmb_unpacker *u, uint64_t *files, uint64_t *bytes);
int pmb_unpacker_shard(const pmb_unpacker *u);
void pmb_assign_shards(const pmb_manifest *m, int nw, int *owner);
void pmb_check_totals(const pmb_manifest *m, uint64_t files, uint64_t bytes);
void pmb_patch_prefixes(const char *root, const char *final_root, const pmb_manifest *m);
void pmb_set_poke(void (*fn)(void));
int pmb_rmtree(const char *path);
void pmb_repatch_prefixes(const char *root, const char *old_root, const char *new_root,
                          const pmb_manifest *m);
int pmb_unpack_main(int argc, char **argv);

/* threads.c: a pool of threads unpacks one package from a ring of chunks;
 * only the caller's thread calls MPI */
typedef struct pmb_pool pmb_pool;
pmb_pool *pmb_pool_new(const char *root, const pmb_manifest *m, const int *owner, int first,
                       int nthreads, const unsigned char *base, uint64_t chunk, int nbuf,
                       int inline_mode);
void pmb_pool_publish(pmb_pool *p, uint64_t n);
uint64_t pmb_pool_done(pmb_pool *p);
void pmb_pool_wait(pmb_pool *p, long ns);
void pmb_pool_check(pmb_pool *p);
void pmb_pool_finish(pmb_pool *p, uint64_t *files, uint64_t *bytes);
int pmb_threads_for(MPI_Comm comm);
int pmb_threads_local(void);

/* stage.c */
void pmb_comms_init(pmb_comms *c);
char *pmb_stage(pmb_manifest *ms, int n, int *fds, double *timings);
void pmb_wait(MPI_Request *req);
void pmb_node_barrier(void);

/* nodes.c: holds on staged trees, their owners, giving node memory back */
enum { PMB_TREE_REMOVED, PMB_TREE_HELD, PMB_TREE_UNKNOWN, PMB_TREE_FAILED };
void pmb_job_key(char *out, size_t len);
int pmb_hold_take(const char *tree);
void pmb_hold_release(void);
int pmb_hold_fd(void);
void pmb_tree_record_job(const char *tree);
void pmb_tree_init_jobs(const char *tree);
void pmb_tree_init_layers(const char *tree, const pmb_manifest *ms, int n);
void pmb_remove_superseded(const char *tree, const pmb_manifest *ms, int n);
void pmb_tree_write_base(const char *now, const char *tree);
void pmb_tree_base_file(const char *tree, char *out, size_t len);
int pmb_tree_is_base_of(const char *path, const pmb_manifest *ms, int n);
int pmb_hold_other(const char *tree);
int pmb_tree_remove(const char *tree);
int pmb_tree_remove_damaged(const char *tree);
int pmb_registry_lock(const char *dir);
void pmb_registry_unlock(int fd);
void pmb_reclaim(const char *dir, const char *keep);
void pmb_cleanup_tree(const char *tree);

/* start.c */
int pmb_start_embed(const char *tree, const pmb_manifest *interp, int argc, char **argv)
    __attribute__((noreturn));
int pmb_start_exec(const char *tree, const pmb_manifest *interp, int argc, char **argv)
    __attribute__((noreturn));
void pmb_install_exit_handler(const char *tree);
int pmb_exec_supported(char *why, size_t len);
int pmb_exec_supported_by(const char *version, char *why, size_t len);
int pmb_exec_check_main(int argc, char **argv);

/* mpilib.c */
const char *pmb_mpi_family(void);
const char *pmb_mpi_library_path(void);
int pmb_mpi4py_check(const char *tree, const pmb_manifest *ms, int n);
void pmb_mpi4py_prepare(const char *tree, const pmb_manifest *ms, int n);
const char *pmb_mpi4py_plan(const char *lib);
void pmb_mpi_record_write(const char *tree, const pmb_manifest *ms, int n);
void pmb_mpi_record_remove(const char *tree);

#endif
