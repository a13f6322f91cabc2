/* Who uses a staged tree, and giving node memory back when nobody does.
 *
 * Holds: every rank that runs from a tree keeps a shared flock on the
 * tree's stamp (env-<id>/.pmb-ready) on a descriptor without O_CLOEXEC, so
 * the hold lives as long as the rank's interpreter (embed) or survives
 * execv (exec), and children that inherit it hold it too.  Whoever removes
 * a tree (PYTHON_MPI_CLEANUP, a later start reclaiming, `clean`) first
 * takes the exclusive form without blocking: a tree in use is never
 * removed.  Removal renames the tree to a temporary name first, so a step
 * never sees half of a tree under its ready name.
 *
 * Owners: each tree's jobs are recorded beside it, in .pmb-jobs-env-<id>
 * (beside, not in it: a tree is never written once it is ready)
 * (one line per job: "slurm JOBID", "pbs JOBID" or "none" outside a batch
 * system).  A tree nobody holds whose jobs are all over is reclaimed by the
 * next start on the node, in any node directory of this user
 * (they are listed in /dev/shm/.python-mpi-<uid>.nodes, one empty file per
 * node directory, named after its path, which is also that directory's lock).
 * A job is running on this node while a process of this user has its id in
 * SLURM_JOB_ID / PBS_JOBID (or Slurm's job cgroup exists): no query to the
 * batch system.  Outside a batch system there is no job end: a tree is
 * reclaimed once nobody holds it and it was not used for PMB_PLAIN_KEEP.
 * Partial trees (.env-<id>.XXXXXX) are reclaimed when nobody holds the
 * staging lock .pmb-lock-<id> (its holder is the step that unpacks). */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "mpilib.h"
#include "nodes.h"
#include "unpack.h"

#define PMB_PLAIN_KEEP (24 * 3600) /* seconds a tree outside a batch job stays unused */
#define PMB_REGISTRY_PARENT "/dev/shm"

static int hold_fd = -1;

void pmb_job_key(char *out, size_t len)
{
    const char *v;
    if ((v = getenv("SLURM_JOB_ID")) && *v && !strchr(v, '\n'))
        snprintf(out, len, "slurm %s", v);
    else if ((v = getenv("PBS_JOBID")) && *v && !strchr(v, '\n'))
        snprintf(out, len, "pbs %s", v);
    else
        snprintf(out, len, "none");
}

/* Open `path` and lock it (LOCK_SH/LOCK_EX, maybe | LOCK_NB); the file must
 * still be the one under that name afterwards.  fd, or -1 (errno: ENOENT
 * gone or replaced, EWOULDBLOCK held). */
static int lock_file(const char *path, int how, int flags)
{
    int fd = open(path, flags | O_NOFOLLOW, 0600);
    if (fd < 0)
        return -1;
    if (flock(fd, how)) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    struct stat a, b;
    if (fstat(fd, &a) || stat(path, &b) || a.st_ino != b.st_ino || a.st_dev != b.st_dev) {
        close(fd);
        errno = ENOENT;
        return -1;
    }
    return fd;
}

int pmb_hold_take(const char *tree)
{
    char stamp[PATH_MAX];
    snprintf(stamp, sizeof stamp, "%s/.pmb-ready", tree);
    int fd = lock_file(stamp, LOCK_SH, O_RDONLY); /* no O_CLOEXEC: survives execv */
    if (fd < 0)
        return -1;
    pmb_hold_release();
    hold_fd = fd;
    return 0;
}

int pmb_hold_fd(void)
{
    return hold_fd;
}

void pmb_hold_release(void)
{
    if (hold_fd >= 0)
        close(hold_fd);
    hold_fd = -1;
}

/* A file beside `tree` about it: <dir>/.pmb-<what>-<tree name> */
static void beside(const char *tree, const char *what, char *out, size_t len)
{
    const char *slash = strrchr(tree, '/');
    if (slash)
        snprintf(out, len, "%.*s/.pmb-%s-%s", (int)(slash - tree), tree, what, slash + 1);
    else
        snprintf(out, len, ".pmb-%s-%s", what, tree);
}

/* the jobs that used a tree */
static void jobs_file(const char *tree, char *out, size_t len)
{
    beside(tree, "jobs", out, len);
}

/* Add this job to the tree's owners (a tree without a jobs file is left
 * alone) and mark it used now. */
void pmb_tree_record_job(const char *tree)
{
    char path[PATH_MAX + 16], key[256], line[260], buf[8192];
    jobs_file(tree, path, sizeof path);
    int fd = open(path, O_RDWR | O_APPEND | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return;
    pmb_job_key(key, sizeof key);
    int n = snprintf(line, sizeof line, "%s\n", key);
    ssize_t r = pread(fd, buf, sizeof buf - 1, 0);
    buf[r > 0 ? r : 0] = 0;
    int found = !strncmp(buf, line, (size_t)n);
    for (char *p = buf; !found && (p = strchr(p, '\n')); p++)
        found = !strncmp(p + 1, line, (size_t)n);
    if (!found && write(fd, line, (size_t)n) != n && pmb_cfg.verbose)
        pmb_log("%s (rank %d): cannot write %s: %s", pmb_host(), pmb_c.world_rank, path,
                strerror(errno));
    futimens(fd, NULL); /* last use: the rule outside a batch system */
    close(fd);
}

/* Write the first owner of a tree being staged (before it is renamed into
 * place; a jobs file a removed tree of that name left is replaced). */
void pmb_tree_init_jobs(const char *tree)
{
    char path[PATH_MAX + 16], key[256];
    jobs_file(tree, path, sizeof path);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0)
        pmb_die("cannot write %s: %s", path, strerror(errno));
    pmb_job_key(key, sizeof key);
    size_t n = strlen(key);
    key[n++] = '\n';
    if (write(fd, key, n) != (ssize_t)n || close(fd))
        pmb_die("cannot write %s: %s", path, strerror(errno));
}

/* One line of a layers record: "<tree key> <kind>\n" (the key covers the
 * layer's content and prefix lines, manifest.c); its length. */
#define LAYER_LINE 128
static size_t layer_line(const pmb_manifest *m, char out[LAYER_LINE])
{
    size_t w = 0;
    for (int k = 0; k < 32; k++)
        w += (size_t)snprintf(out + w, LAYER_LINE - w, "%02x", m->tree_key[k]);
    return w + (size_t)snprintf(out + w, LAYER_LINE - w, " %s\n", m->kind);
}

/* The layers a tree holds, in order (beside it, .pmb-layers-<tree name>:
 * "<tree key> <kind>" per line), written before the tree is renamed
 * into place (one a removed tree of that name left is replaced). */
void pmb_tree_init_layers(const char *tree, const pmb_manifest *ms, int n)
{
    char path[PATH_MAX + 16];
    beside(tree, "layers", path, sizeof path);
    FILE *f = fopen(path, "we");
    if (!f)
        pmb_die("cannot write %s: %s", path, strerror(errno));
    char line[LAYER_LINE];
    for (int i = 0; i < n; i++)
        fwrite(line, 1, layer_line(&ms[i], line), f);
    if (fclose(f))
        pmb_die("cannot write %s: %s", path, strerror(errno));
}

/* The first len-1 bytes of a small record file, NUL-ended; 0 if it cannot
 * be opened (a link is not followed). */
static int read_record(const char *file, char *buf, size_t len)
{
    int fd = open(file, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t r = read(fd, buf, len - 1);
    close(fd);
    buf[r > 0 ? r : 0] = 0;
    return 1;
}

static int has_line(const char *file, const char *line)
{
    char buf[8192];
    if (!read_record(file, buf, sizeof buf))
        return 0;
    size_t n = strlen(line);
    for (char *p = buf; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL)
        if (!strncmp(p, line, n) && (p[n] == '\n' || !p[n]))
            return 1;
    return 0;
}

static void tree_name_dir(const char *tree, char *dir, size_t len);
static const char *tree_name_id(const char *name);

/* The layers record every layer of ms but the last would have, in `want`
 * (its length returned). */
static size_t base_layers_text(const pmb_manifest *ms, int n, char *want, size_t len)
{
    size_t w = 0;
    want[0] = 0;
    for (int i = 0; i < n - 1 && w + LAYER_LINE < len; i++)
        w += layer_line(&ms[i], want + w);
    return w;
}

/* Whether `path`'s layers record holds the first w bytes `want` (the same
 * first layers), then exactly one directory layer. */
static int same_base(const char *path, const char *want, size_t w)
{
    char file[PATH_MAX + 320], buf[8192];
    beside(path, "layers", file, sizeof file);
    if (!read_record(file, buf, sizeof buf) || strncmp(buf, want, w))
        return 0;
    const char *last = buf + w, *nl = strchr(last, '\n');
    return nl && !nl[1] && nl - last >= 10 && !strncmp(nl - 10, " directory", 10);
}

/* One job keeps one tree per node: after `tree` is ready, an earlier tree
 * of this job in the same node directory that differs only in its last
 * layer, a directory layer in both (an edit under `run --with-dir`), goes
 * when nobody holds it. */
void pmb_remove_superseded(const char *tree, const pmb_manifest *ms, int n)
{
    if (n < 2 || strcmp(ms[n - 1].kind, "directory"))
        return;
    char dir[PATH_MAX], want[8192], key[256];
    tree_name_dir(tree, dir, sizeof dir);
    size_t w = base_layers_text(ms, n, want, sizeof want);
    pmb_job_key(key, sizeof key);
    DIR *d = opendir(dir);
    struct dirent *e;
    while (d && (e = readdir(d))) {
        char path[PATH_MAX + 300], file[PATH_MAX + 320];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        if (!tree_name_id(e->d_name) || !strcmp(path, tree))
            continue;
        jobs_file(path, file, sizeof file);
        if (!has_line(file, key))
            continue;
        if (!same_base(path, want, w))
            continue;
        if (pmb_tree_remove(path) == PMB_TREE_REMOVED && pmb_cfg.verbose)
            pmb_log("rank %d (node %d): removed %s (these layers before the last one changed)",
                    pmb_c.world_rank, pmb_c.node_index, path);
    }
    if (d)
        closedir(d);
}

/* ---- the base of a tree: every layer but a last directory layer ---------
 * A tree whose last layer is a directory (run --with-dir) has, beside it,
 * .pmb-base-<tree name>: what the tree held before that layer was
 * unpacked, one record per entry, "<type> <mode> <inode> <ctime> <path>\0"
 * (type d, f or l; depth first, a directory before its entries).  A later
 * staging with the same first layers and another directory layer copies
 * those entries from this tree (files and links only if still the same
 * inode and ctime: the directory layer did not replace them) and receives
 * only the new directory layer. */
static FILE *base_out;
static size_t base_root_len;

static int base_entry(const char *path, const struct stat *st, int flag, struct FTW *f)
{
    (void)flag;
    if (f->level == 0)
        return 0;
    char type = S_ISDIR(st->st_mode) ? 'd' : S_ISLNK(st->st_mode) ? 'l' : S_ISREG(st->st_mode) ? 'f' : 0;
    if (!type)
        return 1;
    fprintf(base_out, "%c %o %llu %lld.%09ld %s", type, (unsigned)(st->st_mode & 07777),
            (unsigned long long)st->st_ino, (long long)st->st_ctim.tv_sec,
            (long)st->st_ctim.tv_nsec, path + base_root_len + 1);
    fputc(0, base_out);
    return 0;
}

void pmb_tree_write_base(const char *now, const char *tree)
{
    char path[PATH_MAX + 16];
    beside(tree, "base", path, sizeof path);
    base_out = fopen(path, "we");
    if (!base_out)
        pmb_die("cannot write %s: %s", path, strerror(errno));
    base_root_len = strlen(now);
    int rc = nftw(now, base_entry, 16, FTW_PHYS);
    if (fclose(base_out) || rc)
        pmb_die("cannot write %s: %s", path, rc == 1 ? "an entry that is no file, link or "
                "directory" : strerror(errno));
    base_out = NULL;
}

void pmb_tree_base_file(const char *tree, char *out, size_t len)
{
    beside(tree, "base", out, len);
}

/* Whether `path` (a tree name in the node directory) has the first n-1
 * layers of ms, then one directory layer, and its base record. */
int pmb_tree_is_base_of(const char *path, const pmb_manifest *ms, int n)
{
    char want[8192], file[PATH_MAX + 16];
    const char *slash = strrchr(path, '/');
    if (n < 2 || strcmp(ms[n - 1].kind, "directory") || !tree_name_id(slash ? slash + 1 : path))
        return 0;
    size_t w = base_layers_text(ms, n, want, sizeof want);
    beside(path, "base", file, sizeof file);
    return same_base(path, want, w) && access(file, R_OK) == 0;
}

/* A second, shared hold on another tree (the base a tree is built from):
 * its descriptor, or -1. */
int pmb_hold_other(const char *tree)
{
    char stamp[PATH_MAX];
    snprintf(stamp, sizeof stamp, "%s/.pmb-ready", tree);
    return lock_file(stamp, LOCK_SH | LOCK_NB, O_RDONLY | O_CLOEXEC);
}

static void tree_name_dir(const char *tree, char *dir, size_t len)
{
    snprintf(dir, len, "%s", tree);
    char *slash = strrchr(dir, '/');
    if (slash)
        *slash = 0;
}

/* 32 hex digits of a tree name env-<id>[.<k>] (or NULL) */
static const char *tree_name_id(const char *name)
{
    if (strncmp(name, "env-", 4))
        return NULL;
    size_t n = strspn(name + 4, "0123456789abcdef");
    if (n != 32)
        return NULL;
    const char *rest = name + 36;
    if (*rest == 0 || (*rest == '.' && rest[1] && strspn(rest + 1, "0123456789") == strlen(rest + 1)))
        return name + 4;
    return NULL;
}

/* Move `tree` to a partial-tree name and delete it; the caller made sure
 * nobody uses it.  0, or -1 with errno. */
static int remove_tree_now(const char *tree)
{
    char dir[PATH_MAX], tmp[PATH_MAX];
    snprintf(dir, sizeof dir, "%s", tree);
    char *slash = strrchr(dir, '/');
    if (!slash)
        return errno = EINVAL, -1;
    *slash = 0;
    const char *id = tree_name_id(slash + 1);
    snprintf(tmp, sizeof tmp, "%s/.env-%.32s.XXXXXX", dir, id ? id : "00000000000000000000000000000000");
    if (!mkdtemp(tmp))
        return -1;
    if (rename(tree, tmp)) {
        int e = errno;
        rmdir(tmp);
        return errno = e, -1;
    }
    char file[PATH_MAX + 16];
    pmb_mpi_record_remove(tree); /* its MPI record, jobs, layers and base files go with it */
    beside(tree, "jobs", file, sizeof file);
    unlink(file);
    beside(tree, "layers", file, sizeof file);
    unlink(file);
    beside(tree, "base", file, sizeof file);
    unlink(file);
    pmb_rmtree(tmp);
    return 0;
}

int pmb_tree_remove(const char *tree)
{
    char stamp[PATH_MAX];
    snprintf(stamp, sizeof stamp, "%s/.pmb-ready", tree);
    int fd = lock_file(stamp, LOCK_EX | LOCK_NB, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno == EWOULDBLOCK ? PMB_TREE_HELD : PMB_TREE_UNKNOWN;
    int rc = remove_tree_now(tree) ? PMB_TREE_FAILED : PMB_TREE_REMOVED;
    close(fd);
    return rc;
}

/* ---- is a job still running on this node? ------------------------------ */

static char *live_env;   /* "\nSLURM_JOB_ID=1\nPBS_JOBID=2.x\n..." of this user's processes */
static size_t live_len, live_cap;

static void live_add(const char *s, size_t n)
{
    if (live_len + n + 2 > live_cap) {
        live_cap = (live_len + n + 2) * 2;
        live_env = pmb_xrealloc(live_env, live_cap);
    }
    memcpy(live_env + live_len, s, n);
    live_len += n;
    live_env[live_len++] = '\n';
    live_env[live_len] = 0;
}

static void scan_processes(void)
{
    if (live_env)
        return;
    live_add("", 0);
    DIR *d = opendir("/proc");
    if (!d)
        return;
    static char buf[1 << 18];
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] < '0' || e->d_name[0] > '9')
            continue;
        char path[64];
        struct stat st;
        snprintf(path, sizeof path, "/proc/%s", e->d_name);
        if (stat(path, &st) || st.st_uid != geteuid())
            continue;
        snprintf(path, sizeof path, "/proc/%s/environ", e->d_name);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            continue;
        size_t got = pmb_read_full(fd, buf, sizeof buf - 1);
        close(fd);
        buf[got] = 0;
        for (size_t i = 0; i < got; i += strlen(buf + i) + 1)
            if (!strncmp(buf + i, "SLURM_JOB_ID=", 13) || !strncmp(buf + i, "PBS_JOBID=", 10))
                live_add(buf + i, strlen(buf + i));
    }
    closedir(d);
}

static int job_live(const char *line)
{
    char want[300];
    struct stat st;
    if (!strncmp(line, "slurm ", 6)) {
        const char *id = line + 6;
        char cg[PATH_MAX];
        /* Slurm's job cgroup (v2, then v1) exists while the job has this node */
        snprintf(cg, sizeof cg, "/sys/fs/cgroup/system.slice/slurmstepd.scope/job_%s", id);
        if (stat(cg, &st) == 0)
            return 1;
        const char *ctl[] = {"freezer", "cpuset", "memory"};
        for (int i = 0; i < 3; i++) {
            snprintf(cg, sizeof cg, "/sys/fs/cgroup/%s/slurm/uid_%u/job_%s", ctl[i],
                     (unsigned)geteuid(), id);
            if (stat(cg, &st) == 0)
                return 1;
        }
        snprintf(want, sizeof want, "\nSLURM_JOB_ID=%s\n", id);
    } else if (!strncmp(line, "pbs ", 4)) {
        snprintf(want, sizeof want, "\nPBS_JOBID=%s\n", line + 4);
    } else {
        return -1; /* not a batch job */
    }
    scan_processes();
    return strstr(live_env, want) != NULL;
}

/* Whether every job that used `tree` is over (no job file: unknown, keep). */
static int jobs_over(const char *tree)
{
    char path[PATH_MAX], buf[8192];
    jobs_file(tree, path, sizeof path);
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return 0;
    struct stat st;
    ssize_t r = read(fd, buf, sizeof buf - 1);
    int ok = fstat(fd, &st) == 0;
    close(fd);
    if (r <= 0 || !ok)
        return 0;
    buf[r] = 0;
    char *save = NULL;
    for (char *ln = strtok_r(buf, "\n", &save); ln; ln = strtok_r(NULL, "\n", &save)) {
        int live = job_live(ln);
        if (live == 1)
            return 0;
        if (live < 0 && time(NULL) - st.st_mtime < PMB_PLAIN_KEEP)
            return 0;
    }
    return 1;
}

/* A damaged tree: removed if nobody holds it; without its stamp nobody can
 * tell, so only once its jobs are over. */
int pmb_tree_remove_damaged(const char *tree)
{
    int rc = pmb_tree_remove(tree);
    if (rc == PMB_TREE_UNKNOWN && jobs_over(tree))
        rc = remove_tree_now(tree) ? PMB_TREE_FAILED : PMB_TREE_REMOVED;
    return rc;
}

/* ---- node directories of this user, and reclaiming them ---------------- */

/* /dev/shm/.python-mpi-<uid>.nodes/<dir, '/' written %2F, '%' %25>, or 0
 * if there is no safe place for it (then nothing is registered there). */
static int registry_path(const char *dir, char *reg, size_t rlen, char *entry, size_t elen)
{
    snprintf(reg, rlen, PMB_REGISTRY_PARENT "/.python-mpi-%u.nodes", (unsigned)geteuid());
    if (mkdir(reg, 0700) && errno != EEXIST)
        return 0;
    struct stat st;
    if (lstat(reg, &st) || !S_ISDIR(st.st_mode) || st.st_uid != geteuid() || (st.st_mode & 077))
        return 0;
    size_t n = (size_t)snprintf(entry, elen, "%s/", reg), start = n;
    for (const char *p = dir; *p; p++) {
        if (n + 4 >= elen)
            return 0;
        if (*p == '/' || *p == '%')
            n += (size_t)snprintf(entry + n, elen - n, "%%%02X", (unsigned char)*p);
        else
            entry[n++] = *p;
    }
    entry[n] = 0;
    return n - start <= 255;
}

/* the directory a registry entry name stands for */
static void registry_decode(const char *name, char *out, size_t len)
{
    size_t n = 0;
    for (const char *p = name; *p && n + 1 < len; p++) {
        unsigned v;
        if (*p == '%' && sscanf(p + 1, "%2X", &v) == 1) {
            out[n++] = (char)v;
            p += 2;
        } else {
            out[n++] = *p;
        }
    }
    out[n] = 0;
}

int pmb_registry_lock(const char *dir)
{
    char reg[PATH_MAX], entry[PATH_MAX];
    if (!registry_path(dir, reg, sizeof reg, entry, sizeof entry))
        return -1;
    for (int i = 0; i < 100; i++) {
        int fd = lock_file(entry, LOCK_EX, O_RDWR | O_CREAT | O_CLOEXEC);
        if (fd >= 0)
            return fd;
        if (errno != ENOENT)
            return -1;
    }
    return -1;
}

void pmb_registry_unlock(int fd)
{
    if (fd >= 0)
        close(fd);
}

/* Forget `dir` once it is gone or empty (caller holds its registry lock). */
static void drop_if_empty(const char *dir)
{
    char reg[PATH_MAX], entry[PATH_MAX];
    if (rmdir(dir) && errno != ENOENT)
        return;
    if (registry_path(dir, reg, sizeof reg, entry, sizeof entry))
        unlink(entry);
}

/* Reclaim what is over in node directory `dir`; trees of id `keep` are the
 * caller's (it judges those itself).  Returns bytes of trees removed. */
static void reclaim_dir(const char *dir, const char *keep, int *ntrees)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *e;
    char path[PATH_MAX + 300];
    while ((e = readdir(d))) {
        const char *n = e->d_name;
        snprintf(path, sizeof path, "%s/%s", dir, n);
        struct stat st;
        if (n[0] == '.' && (!n[1] || (n[1] == '.' && !n[2])))
            continue;
        if (lstat(path, &st) || st.st_uid != geteuid())
            continue;
        const char *id = tree_name_id(n);
        if (id && S_ISDIR(st.st_mode)) {
            if (keep && !strncmp(id, keep, 32))
                continue;
            if (!jobs_over(path))
                continue;
            int rc = pmb_tree_remove_damaged(path); /* its jobs are over: stamp or not */
            if (rc == PMB_TREE_REMOVED) {
                (*ntrees)++;
                if (pmb_cfg.verbose >= 2)
                    pmb_log("rank %d (node %d): removed %s (its jobs are over)", pmb_c.world_rank,
                            pmb_c.node_index, path);
            }
        } else if ((!strncmp(n, ".env-", 5) && strlen(n) == 5 + 32 + 7 && S_ISDIR(st.st_mode)) ||
                   (!strncmp(n, ".pmb-chunks-", 12) && strlen(n) == 12 + 32 + 7 &&
                    S_ISREG(st.st_mode))) {
            /* a partial tree, or the staging buffers (stage.c) of one: gone
             * when nobody holds the staging lock of its id */
            const char *tid = n[1] == 'e' ? n + 5 : n + 12;
            char lock[PATH_MAX + 64];
            snprintf(lock, sizeof lock, "%s/.pmb-lock-%.32s", dir, tid);
            int fd = lock_file(lock, LOCK_EX | LOCK_NB, O_RDWR | O_CLOEXEC);
            if (fd < 0 && errno == EWOULDBLOCK)
                continue;
            pmb_rmtree(path);
            if (fd >= 0) {
                unlink(lock);
                close(fd);
            }
        } else if (!strncmp(n, ".pmb-lock-", 10) && S_ISREG(st.st_mode)) {
            int fd = lock_file(path, LOCK_EX | LOCK_NB, O_RDWR | O_CLOEXEC);
            if (fd >= 0) {
                unlink(path);
                close(fd);
            }
        } else if (S_ISREG(st.st_mode) &&
                   ((!strncmp(n, ".pmb-mpi-", 9) && tree_name_id(n + 9)) ||
                    (!strncmp(n, ".pmb-jobs-", 10) && tree_name_id(n + 10)) ||
                    (!strncmp(n, ".pmb-layers-", 12) && tree_name_id(n + 12)) ||
                    (!strncmp(n, ".pmb-base-", 10) && tree_name_id(n + 10)))) {
            /* the MPI record (mpilib.c), jobs, layers or base file of a tree that is gone */
            char tree[PATH_MAX + 300];
            snprintf(tree, sizeof tree, "%s/%s", dir, strchr(n + 5, '-') + 1);
            if (access(tree, F_OK) && errno == ENOENT)
                unlink(path);
        } else if (!strncmp(n, ".pmb-chunks.", 12) && S_ISREG(st.st_mode) &&
                   time(NULL) - st.st_mtime > 600) {
            unlink(path); /* staging buffers named by an earlier launcher (no id in the name) */
        }
    }
    closedir(d);
}

void pmb_reclaim(const char *dir, const char *keep)
{
    char reg[PATH_MAX], entry[PATH_MAX];
    int ntrees = 0;
    double t0 = pmb_now();
    reclaim_dir(dir, keep, &ntrees); /* the caller holds this one's registry lock */
    if (registry_path(dir, reg, sizeof reg, entry, sizeof entry)) {
        const char *own = strrchr(entry, '/') + 1;
        DIR *d = opendir(reg);
        struct dirent *e;
        while (d && (e = readdir(d))) {
            if (e->d_name[0] == '.' || !strcmp(e->d_name, own))
                continue;
            char ent[PATH_MAX + 300], nd[PATH_MAX];
            snprintf(ent, sizeof ent, "%s/%s", reg, e->d_name);
            registry_decode(e->d_name, nd, sizeof nd);
            int fd = lock_file(ent, LOCK_EX | LOCK_NB, O_RDWR | O_CLOEXEC);
            if (fd < 0)
                continue; /* a start or a clean-up is working there */
            struct stat st;
            if (lstat(nd, &st) && errno == ENOENT) {
                unlink(ent);
            } else if (nd[0] == '/' && S_ISDIR(st.st_mode) && st.st_uid == geteuid()) {
                reclaim_dir(nd, NULL, &ntrees);
                drop_if_empty(nd);
            }
            close(fd);
        }
        if (d)
            closedir(d);
    }
    if (pmb_cfg.verbose >= 2 && ntrees)
        pmb_log("rank %d (node %d): reclaimed %d tree(s) of jobs that are over in %.3f s",
                pmb_c.world_rank, pmb_c.node_index, ntrees, pmb_now() - t0);
}

/* PYTHON_MPI_CLEANUP=1 at exit, on the node leader after every rank of the
 * node released its hold: remove the tree unless another step holds it. */
void pmb_cleanup_tree(const char *tree)
{
    char dir[PATH_MAX], host[256] = "";
    snprintf(dir, sizeof dir, "%s", tree);
    char *slash = strrchr(dir, '/');
    if (!slash || slash == dir)
        return;
    *slash = 0;
    int reg = pmb_registry_lock(dir);
    int rc = pmb_tree_remove(tree);
    gethostname(host, sizeof host - 1);
    if (rc == PMB_TREE_HELD)
        fprintf(stderr, "python-mpi: %s (rank %d): keeping %s: another job step on this node "
                "runs from it\n", host, pmb_c.world_rank, tree);
    else if (rc != PMB_TREE_REMOVED && pmb_cfg.verbose)
        fprintf(stderr, "python-mpi: %s (rank %d): could not remove %s: %s\n", host,
                pmb_c.world_rank, tree, strerror(errno));
    if (rc == PMB_TREE_REMOVED) {
        int n = 0;
        reclaim_dir(dir, NULL, &n); /* what killed steps of this job left */
        drop_if_empty(dir);
    }
    pmb_registry_unlock(reg);
}
