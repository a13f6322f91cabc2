/* Threads that unpack: every core a rank may run on decodes shards.
 *
 * A pool unpacks one package.  Its worker threads read the chunks the
 * caller's thread publishes (the ring of nbuf buffers stage.c fills) and
 * each feeds the shards it owns into its own pmb_unpacker.  Only the thread
 * that created the pool ever calls MPI: workers decompress and create files,
 * nothing else, so MPI_THREAD_FUNNELED is all the launcher needs; with
 * MPI_THREAD_SINGLE the pool runs its one worker inline in the caller's
 * thread (no other thread exists then).
 *
 * Errors in a worker: pmb_die must not call MPI there.  It records the
 * message (with the shard it was decoding) and ends the thread; the
 * others go on until no shard below the lowest failing one is left to
 * fail (they have fed every byte before it), then pmb_pool_check (or
 * pmb_pool_finish), in the caller's thread, stops them and dies with the
 * message of the lowest failing shard: each worker takes its shards in
 * order, so every lower shard was unpacked without error, and the message
 * is the one a single thread would have given.  The caller checks while it
 * moves chunks, so a node that cannot unpack (its memory full) ends the
 * job at once, with its own message, instead of after the broadcast.
 *
 * A failed worker holds no buffer: pmb_pool_done skips it, so when every
 * worker has failed it returns all chunks.  That says which buffers no
 * worker reads, never that an MPI operation writing into one has ended:
 * the caller must not reuse a buffer before its own request completes. */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "comm.h"
#include "threads.h"
#include "unpack.h"


typedef struct pmb_worker {
    struct pmb_pool *pool;
    pthread_t tid;
    int index;              /* global worker index: the owner[] value of its shards */
    pmb_unpacker *u;
    uint64_t done;          /* chunks finished */
    int failed, fail_shard;
    char msg[2048];
    uint64_t files, bytes;
    double busy, start, end;
} pmb_worker;

struct pmb_pool {
    const pmb_manifest *m;
    const int *owner;
    const unsigned char *base;
    uint64_t chunk, nchunks;
    int nbuf, nthreads, inline_mode;
    int stop;               /* the caller gave up: workers end at the next chunk */
    pthread_mutex_t mu;
    pthread_cond_t more, progress;
    uint64_t ready;         /* chunks [0, ready) are in their buffers */
    pmb_worker *w;
    pmb_names *made;        /* the files and links this layer made (a name twice: refused) */
};

static __thread pmb_worker *self;

static void worker_die(const char *msg)
{
    pmb_worker *w = self;
    snprintf(w->msg, sizeof w->msg, "%s", msg);
    pthread_mutex_lock(&w->pool->mu);
    w->failed = 1;
    w->fail_shard = pmb_unpacker_shard(w->u);
    w->done = UINT64_MAX; /* holds no buffer any more */
    w->end = pmb_now();
    pthread_cond_broadcast(&w->pool->progress);
    pthread_mutex_unlock(&w->pool->mu);
    pthread_exit(NULL);
}

static size_t chunk_len(const pmb_pool *p, uint64_t k)
{
    uint64_t total = p->m->payload_size;
    return (size_t)((k + 1) * p->chunk > total ? total - k * p->chunk : p->chunk);
}

static void feed_chunk(pmb_pool *p, pmb_worker *w, uint64_t k)
{
    double t0 = pmb_now();
    pmb_unpacker_feed(w->u, p->base + (k % (uint64_t)p->nbuf) * p->chunk, k * p->chunk,
                      chunk_len(p, k), p->owner, w->index);
    w->busy += pmb_now() - t0;
}

static void *worker_main(void *arg)
{
    pmb_worker *w = arg;
    pmb_pool *p = w->pool;
    self = w;
    pmb_thread_die = worker_die;
    w->start = pmb_now();
    for (uint64_t k = 0; k < p->nchunks; k++) {
        pthread_mutex_lock(&p->mu);
        while (p->ready <= k && !p->stop)
            pthread_cond_wait(&p->more, &p->mu);
        int stop = p->stop;
        pthread_mutex_unlock(&p->mu);
        if (stop) {
            w->end = pmb_now();
            return NULL; /* pmb_pool_check frees what this worker holds */
        }
        feed_chunk(p, w, k);
        pthread_mutex_lock(&p->mu);
        w->done = k + 1;
        pthread_cond_broadcast(&p->progress);
        pthread_mutex_unlock(&p->mu);
    }
    double t0 = pmb_now();
    pmb_unpacker_finish(w->u, &w->files, &w->bytes);
    w->u = NULL;
    w->busy += pmb_now() - t0;
    w->end = pmb_now();
    return NULL;
}

pmb_pool *pmb_pool_new(const char *root, const pmb_manifest *m, const int *owner, int first,
                       int nthreads, const unsigned char *base, uint64_t chunk, int nbuf,
                       int inline_mode)
{
    pmb_pool *p = pmb_xcalloc(1, sizeof *p);
    p->m = m;
    p->owner = owner;
    p->base = base;
    p->chunk = chunk;
    p->nbuf = nbuf;
    p->nchunks = (m->payload_size + chunk - 1) / chunk;
    p->inline_mode = inline_mode;
    p->nthreads = inline_mode ? 1 : nthreads;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->more, NULL);
    pthread_cond_init(&p->progress, NULL);
    p->w = pmb_xcalloc((size_t)p->nthreads, sizeof *p->w);
    p->made = pmb_names_new();
    for (int t = 0; t < p->nthreads; t++) {
        pmb_worker *w = &p->w[t];
        w->pool = p;
        w->index = first + t;
        w->u = pmb_unpacker_new(root, m, p->made);
        w->fail_shard = -1;
    }
    if (inline_mode) {
        p->w[0].start = pmb_now();
        return p;
    }
    for (int t = 0; t < p->nthreads; t++) {
        int rc = pthread_create(&p->w[t].tid, NULL, worker_main, &p->w[t]);
        if (rc)
            pmb_die("cannot start an unpacking thread: %s; set PYTHON_MPI_THREADS=1", strerror(rc));
    }
    return p;
}

/* Chunks [0, n) are in their buffers. */
void pmb_pool_publish(pmb_pool *p, uint64_t n)
{
    if (p->inline_mode) {
        while (p->ready < n) {
            feed_chunk(p, &p->w[0], p->ready);
            p->w[0].done = ++p->ready;
        }
        return;
    }
    pthread_mutex_lock(&p->mu);
    p->ready = n;
    pthread_cond_broadcast(&p->more);
    pthread_mutex_unlock(&p->mu);
}

/* Chunks every worker is done with (their buffers may be reused). */
uint64_t pmb_pool_done(pmb_pool *p)
{
    uint64_t d = UINT64_MAX;
    if (!p->inline_mode)
        pthread_mutex_lock(&p->mu);
    for (int t = 0; t < p->nthreads; t++)
        if (p->w[t].done < d)
            d = p->w[t].done;
    if (!p->inline_mode)
        pthread_mutex_unlock(&p->mu);
    return d > p->nchunks ? p->nchunks : d;
}

/* Sleep until a worker finishes a chunk, at most ns nanoseconds. */
void pmb_pool_wait(pmb_pool *p, long ns)
{
    if (p->inline_mode) {
        struct timespec ts = {0, ns};
        nanosleep(&ts, NULL);
        return;
    }
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_nsec += ns;
    if (until.tv_nsec >= 1000000000) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000;
    }
    pthread_mutex_lock(&p->mu);
    pthread_cond_timedwait(&p->progress, &p->mu, &until);
    pthread_mutex_unlock(&p->mu);
}

/* The failed worker with the lowest failing shard, or NULL (mutex held or
 * workers joined). */
static const pmb_worker *lowest_failure(const pmb_pool *p)
{
    const pmb_worker *bad = NULL;
    for (int t = 0; t < p->nthreads; t++) {
        const pmb_worker *w = &p->w[t];
        if (w->failed && (!bad || (unsigned)w->fail_shard < (unsigned)bad->fail_shard))
            bad = w; /* -1 (between shards) sorts last */
    }
    return bad;
}

/* In the caller's thread, while it moves chunks: when a worker has failed
 * and no lower shard can fail any more (every other worker has fed every
 * byte before the failing shard, or failed too), stop the pool and die
 * with the failure's message.  Otherwise return at once. */
void pmb_pool_check(pmb_pool *p)
{
    if (p->inline_mode)
        return; /* there a failure dies in this thread, where it happens */
    pthread_mutex_lock(&p->mu);
    const pmb_worker *bad = lowest_failure(p);
    int settled = bad != NULL;
    if (bad) {
        uint64_t before = bad->fail_shard >= 0 ? p->m->shards[bad->fail_shard].offset
                                               : p->m->payload_size;
        for (int t = 0; t < p->nthreads && settled; t++) {
            const pmb_worker *w = &p->w[t];
            if (!w->failed && w->done < p->nchunks && w->done * p->chunk < before)
                settled = 0;
        }
    }
    if (settled) {
        p->stop = 1;
        pthread_cond_broadcast(&p->more);
    }
    pthread_mutex_unlock(&p->mu);
    if (!settled)
        return;
    for (int t = 0; t < p->nthreads; t++)
        pthread_join(p->w[t].tid, NULL);
    pmb_die("%s", lowest_failure(p)->msg); /* one still running may have failed lower */
}

/* Join the workers; files and bytes they created.  A failed worker: die
 * with the message of the lowest failing shard. */
void pmb_pool_finish(pmb_pool *p, uint64_t *files, uint64_t *bytes)
{
    if (p->inline_mode) {
        pmb_unpacker_finish(p->w[0].u, &p->w[0].files, &p->w[0].bytes);
        p->w[0].end = pmb_now();
    } else {
        for (int t = 0; t < p->nthreads; t++)
            pthread_join(p->w[t].tid, NULL);
    }
    const pmb_worker *bad = lowest_failure(p);
    *files = *bytes = 0;
    for (int t = 0; t < p->nthreads; t++) {
        *files += p->w[t].files;
        *bytes += p->w[t].bytes;
    }
    if (bad)
        pmb_die("%s", bad->msg);
    if (pmb_cfg.verbose >= 3)
        for (int t = 0; t < p->nthreads; t++)
            pmb_log("rank %d (node %d): package '%s' thread %d/%d: %llu files, %.1f MB, busy "
                    "%.3f s of %.3f s", pmb_c.world_rank, pmb_c.node_index, p->m->file, t + 1,
                    p->nthreads, (unsigned long long)p->w[t].files, p->w[t].bytes / 1e6,
                    p->w[t].busy, p->w[t].end - p->w[t].start);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->more);
    pthread_cond_destroy(&p->progress);
    pmb_names_free(p->made);
    free(p->w);
    free(p);
}

/* ---- how many threads ------------------------------------------------------ */

static int affinity_cpus(cpu_set_t *set)
{
    CPU_ZERO(set);
    if (sched_getaffinity(0, sizeof *set, set)) {
        /* more CPUs than a cpu_set_t holds (EINVAL): count the online ones */
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        for (long c = 0; c < n && c < CPU_SETSIZE; c++)
            CPU_SET((int)c, set);
    }
    return CPU_COUNT(set);
}

/* Threads for this rank from the CPUs the unpacking ranks of `comm` may run
 * on: each CPU counts 1/k for each of the k ranks whose affinity includes it;
 * rounded, at least 1, at most PYTHON_MPI_THREADS when set.  Collective on
 * comm (main thread). */
int pmb_threads_for(MPI_Comm comm)
{
    int size, rank;
    MPI_Comm_size(comm, &size);
    MPI_Comm_rank(comm, &rank);
    cpu_set_t mine;
    int ncpu = affinity_cpus(&mine);
    cpu_set_t *all = pmb_xmalloc(sizeof(cpu_set_t) * (size_t)size);
    MPI_Request r;
    MPI_Iallgather(&mine, (int)sizeof mine, MPI_BYTE, all, (int)sizeof mine, MPI_BYTE, comm, &r);
    pmb_wait(&r);
    double share = 0;
    for (int c = 0; c < CPU_SETSIZE; c++) {
        if (!CPU_ISSET(c, &mine))
            continue;
        int k = 0;
        for (int i = 0; i < size; i++)
            k += CPU_ISSET(c, &all[i]) ? 1 : 0;
        share += 1.0 / (k ? k : 1);
    }
    free(all);
    int n = (int)(share + 0.5);
    if (n < 1)
        n = 1;
    int cap = pmb_cfg.threads;
    if (cap > 0 && n > cap)
        n = cap;
    if (pmb_thread_level < MPI_THREAD_FUNNELED)
        n = 1; /* no thread but this one may exist */
    if (pmb_cfg.verbose >= 3)
        pmb_log("rank %d (node %d): unpacking with %d thread(s): affinity %d CPU(s), share "
                "%.2f, PYTHON_MPI_THREADS=%d, MPI thread level %d", pmb_c.world_rank,
                pmb_c.node_index, n, ncpu, share, cap, pmb_thread_level);
    return n;
}

/* Threads for `python-mpi --pmb-unpack` (no MPI): the affinity's CPUs. */
int pmb_threads_local(void)
{
    cpu_set_t mine;
    int n = affinity_cpus(&mine);
    if (n < 1)
        n = 1;
    if (pmb_cfg.threads > 0 && n > pmb_cfg.threads)
        n = pmb_cfg.threads;
    if (pmb_cfg.verbose >= 3)
        pmb_log("unpacking with %d thread(s) (affinity %d CPU(s))", n, affinity_cpus(&mine));
    return n;
}

/* Give each of nw unpacking workers (threads of the unpacking ranks) a set
 * of shards with about the same cost (largest first, each to the least
 * loaded worker).  Cost: unpacked bytes plus PMB_FILE_COST per file (creating
 * a file, setting its mode and times costs about as much as writing 8 KiB:
 * measured per thread on /dev/shm, 2.5 ms per MB and 25 us per file). */
#define PMB_FILE_COST 8192u
static uint64_t shard_cost(const pmb_shard *sh)
{
    uint64_t f = sh->nfiles > UINT64_MAX / 2 / PMB_FILE_COST ? UINT64_MAX / 2 : sh->nfiles * PMB_FILE_COST;
    return sh->usize > UINT64_MAX / 2 - f ? UINT64_MAX / 2 : sh->usize + f;
}

void pmb_assign_shards(const pmb_manifest *m, int nw, int *owner)
{
    int n = m->nshards;
    int *order = pmb_xmalloc(sizeof(int) * (size_t)n);
    uint64_t *load = pmb_xcalloc((size_t)nw, sizeof *load);
    for (int i = 0; i < n; i++)
        order[i] = i;
    for (int i = 1; i < n; i++) { /* insertion sort by cost, descending (n is small) */
        int v = order[i], j = i - 1;
        while (j >= 0 && shard_cost(&m->shards[order[j]]) < shard_cost(&m->shards[v])) {
            order[j + 1] = order[j];
            j--;
        }
        order[j + 1] = v;
    }
    for (int i = 0; i < n; i++) {
        int best = 0;
        for (int w = 1; w < nw; w++)
            if (load[w] < load[best])
                best = w;
        owner[order[i]] = best;
        load[best] += shard_cost(&m->shards[order[i]]) + 1;
    }
    free(order);
    free(load);
}
