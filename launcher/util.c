/* Helpers every phase of the launcher uses: the global state error
 * reporting needs, one-line errors that end the whole job (pmb_die), log
 * lines, the clock, the back-off of wait loops, full reads and writes and
 * checked allocation.  The bottom layer: it calls no other file of the
 * launcher (tests/codebase/test_layers.py). */
#define _GNU_SOURCE
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "pmb.h"

pmb_comms pmb_c = {0};
pmb_config pmb_cfg = {0};
int pmb_mpi_up = 0;
int pmb_collective_phase = 0;
int pmb_thread_level = MPI_THREAD_SINGLE;
__thread void (*pmb_thread_die)(const char *msg);

/* This node's name as its users know it (the host name up to the first
 * dot: what srun prints in "srun: error: n3: task 2: ..."). */
const char *pmb_host(void)
{
    static char host[256];
    if (!host[0]) {
        if (gethostname(host, sizeof host - 1) || !host[0])
            snprintf(host, sizeof host, "?");
        host[sizeof host - 1] = 0;
        char *dot = strchr(host, '.');
        if (dot && dot != host)
            *dot = 0;
    }
    return host;
}

/* Under MPI every error line starts "python-mpi: HOST (rank R): ", so the
 * first line of a job's error output says where and why (srun then reports
 * the ranks MPI_Abort ended as "Killed", exit code 137).  Without MPI
 * (python-mpi --pmb-unpack, read by python-mpi-bcast): "python-mpi: rank 0: ". */
void pmb_die(const char *fmt, ...)
{
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (pmb_thread_die)
        pmb_thread_die(msg); /* a worker thread: never calls MPI; does not return */
    if (pmb_mpi_up && pmb_collective_phase && pmb_c.world_rank != 0) {
        /* every rank sees the same bad setting: let rank 0 report it once
         * and abort the job; report it ourselves only if that never comes */
        struct timespec ts = {0, 100000000};
        for (int i = 0; i < 100; i++)
            nanosleep(&ts, NULL);
    }
    if (pmb_mpi_up)
        fprintf(stderr, "python-mpi: %s (rank %d): %s\n", pmb_host(), pmb_c.world_rank, msg);
    else
        fprintf(stderr, "python-mpi: rank %d: %s\n", pmb_c.world_rank, msg);
    fflush(stderr);
    if (pmb_mpi_up) {
        pmb_abort_grace();
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    exit(1);
}

void pmb_log(const char *fmt, ...)
{
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(stderr, "python-mpi: %s\n", msg);
    fflush(stderr);
}

/* Give the process manager a moment to forward what this rank just wrote
 * to stderr: hydra drops pending output of a process that calls MPI_Abort. */
void pmb_abort_grace(void)
{
    struct timespec ts = {0, 300000000};
    nanosleep(&ts, NULL);
}

/* Sleep *ns nanoseconds, then double *ns up to max: how every wait loop
 * that polls backs off. */
void pmb_backoff(long *ns, long max)
{
    struct timespec ts = {*ns / 1000000000, *ns % 1000000000};
    nanosleep(&ts, NULL);
    if (*ns < max)
        *ns *= 2;
}

double pmb_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

void *pmb_xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p)
        pmb_die("out of memory (%zu bytes)", n);
    return p;
}

char *pmb_xstrdup(const char *s)
{
    char *p = strdup(s);
    if (!p)
        pmb_die("out of memory");
    return p;
}

void *pmb_xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p)
        pmb_die("out of memory");
    return p;
}

void *pmb_xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (!q)
        pmb_die("out of memory (%zu bytes)", n);
    return q;
}

/* Read n bytes (retrying after signals), at offset off when at is set (the
 * file position then does not move): the bytes read. */
static size_t read_loop(int fd, void *buf, size_t n, int at, uint64_t off)
{
    size_t got = 0;
    errno = 0;
    while (got < n) {
        ssize_t r = at ? pread(fd, (char *)buf + got, n - got, (off_t)(off + got))
                       : read(fd, (char *)buf + got, n - got);
        if (r < 0 && errno == EINTR) {
            errno = 0;
            continue;
        }
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    return got;
}

/* Read n bytes (retrying after signals); the bytes read: n, or fewer with
 * errno 0 at the end of the file, errno set after an error. */
size_t pmb_read_full(int fd, void *buf, size_t n)
{
    return read_loop(fd, buf, n, 0, 0);
}

/* pmb_read_full at offset off (the file position does not move) */
size_t pmb_pread_full(int fd, void *buf, size_t n, uint64_t off)
{
    return read_loop(fd, buf, n, 1, off);
}

/* Write all n bytes (retrying after signals): 0, or -1 with errno set (EIO
 * when a write wrote nothing). */
int pmb_write_all(int fd, const void *buf, size_t n)
{
    const char *p = buf;
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            if (w == 0)
                errno = EIO;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* pmb_write_all at offset off (the file position does not move) */
int pmb_pwrite_all(int fd, const void *buf, size_t n, uint64_t off)
{
    const char *p = buf;
    while (n) {
        ssize_t w = pwrite(fd, p, n, (off_t)off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            if (w == 0)
                errno = EIO;
            return -1;
        }
        p += w;
        n -= (size_t)w;
        off += (uint64_t)w;
    }
    return 0;
}
