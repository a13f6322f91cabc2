/* Configuration from PYTHON_MPI_* environment variables.  Bad values are
 * reported (by rank 0) and stop the job; nothing is silently ignored. */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"

int pmb_parse_size(const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (end == s || errno)
        return -1;
    uint64_t mult = 1;
    switch (tolower((unsigned char)*end)) {
    case 'k': mult = 1ull << 10; end++; break;
    case 'm': mult = 1ull << 20; end++; break;
    case 'g': mult = 1ull << 30; end++; break;
    default: break;
    }
    if (*end == 'i' || *end == 'I')
        end++;
    if (*end == 'b' || *end == 'B')
        end++;
    if (*end)
        return -1;
    *out = (uint64_t)v * mult;
    return 0;
}

static int parse_bool(const char *name, const char *v)
{
    if (!v || !*v || !strcmp(v, "0") || !strcasecmp(v, "no") || !strcasecmp(v, "false") ||
        !strcasecmp(v, "off"))
        return 0;
    if (!strcmp(v, "1") || !strcasecmp(v, "yes") || !strcasecmp(v, "true") || !strcasecmp(v, "on"))
        return 1;
    pmb_die("%s='%s' is not a valid value; use 0 or 1", name, v);
}

/* An integer setting from lo to hi: *out is left alone when the variable is
 * unset or empty; any other value out of range stops the job with
 * "NAME='VALUE' <complaint>". */
static void env_int(const char *name, long lo, long hi, const char *complaint, int *out)
{
    const char *v = getenv(name);
    if (!v || !*v)
        return;
    char *end;
    long n = strtol(v, &end, 10);
    if (*end || n < lo || n > hi)
        pmb_die("%s='%s' %s", name, v, complaint);
    *out = (int)n;
}

/* The settings `python-mpi --pmb-unpack` reads too (it has no MPI). */
void pmb_config_threads(pmb_config *cfg)
{
    env_int("PYTHON_MPI_VERBOSE", 0, 9, "is not a valid value; use 0, 1, 2 or 3", &cfg->verbose);
    env_int("PYTHON_MPI_THREADS", 0, 1024,
            "is not valid; use 0 (one per CPU the rank may run on, the default) or a number of "
            "threads per rank from 1 to 1024", &cfg->threads);
}

void pmb_config_read(pmb_config *cfg)
{
    const char *v;
    memset(cfg, 0, sizeof *cfg);
    cfg->chunk = 16ull << 20;
    cfg->nbuf = 3;
    pmb_config_threads(cfg);

    v = getenv("PYTHON_MPI_MODE");
    if (!v || !*v || !strcmp(v, "embed"))
        cfg->mode = PMB_MODE_EMBED;
    else if (!strcmp(v, "exec"))
        cfg->mode = PMB_MODE_EXEC;
    else if (!strcmp(v, "stage-only"))
        cfg->mode = PMB_MODE_STAGE_ONLY;
    else
        pmb_die("PYTHON_MPI_MODE='%s' is not a valid mode; use embed, exec or stage-only", v);

    cfg->cleanup = parse_bool("PYTHON_MPI_CLEANUP", getenv("PYTHON_MPI_CLEANUP"));

    v = getenv("PYTHON_MPI_CHUNK");
    if (v && *v) {
        if (pmb_parse_size(v, &cfg->chunk) || cfg->chunk < (64u << 10) || cfg->chunk > (1ull << 30))
            pmb_die("PYTHON_MPI_CHUNK='%s' is not a valid size; use 64k to 1G, e.g. 16M", v);
        cfg->chunk_set = 1;
    }

    env_int("PYTHON_MPI_UNPACK_RANKS", 0, 4096,
            "is not valid; use 0 (all ranks of a node) or a number of ranks per node",
            &cfg->unpack_ranks);
    /* set by 'python-mpi-bcast run --with-dir' */
    env_int("PYTHON_MPI_TREE_ARG", 1, 1000000,
            "is not valid; use the index (1 or more) of the argument that names a path inside "
            "the staged tree", &cfg->tree_arg);

    v = getenv("PYTHON_MPI_PKGROOT");
    if (!v || !*v)
        pmb_die("PYTHON_MPI_PKGROOT is not set; set it to the directory that holds your "
                "packages (made by 'python-mpi-bcast pack')");
    cfg->pkgroot = pmb_xstrdup(v);

    v = getenv("PYTHON_MPI_PACKAGES");
    if (!v || !*v)
        pmb_die("PYTHON_MPI_PACKAGES is not set; set it to a colon-separated list of "
                "package files in %s, interpreter first (e.g. python-3.11.tar.zst:myenv.tar.zst)",
                cfg->pkgroot);
    char *list = pmb_xstrdup(v);
    int n = 1;
    for (char *p = list; *p; p++)
        n += *p == ':';
    cfg->packages = pmb_xmalloc(sizeof(char *) * (size_t)n);
    char *save = NULL;
    for (char *tok = strtok_r(list, ":", &save); tok; tok = strtok_r(NULL, ":", &save)) {
        if (strstr(tok, "..") || tok[0] == '/')
            pmb_die("PYTHON_MPI_PACKAGES entry '%s' must be a file name inside "
                    "PYTHON_MPI_PKGROOT (%s), not a path", tok, cfg->pkgroot);
        cfg->packages[cfg->npackages++] = tok;
    }
    if (cfg->npackages == 0)
        pmb_die("PYTHON_MPI_PACKAGES='%s' names no package", v);

    v = getenv("PYTHON_MPI_CHROOT");
    if (v && *v) {
        if (v[0] != '/')
            pmb_die("PYTHON_MPI_CHROOT='%s' must be an absolute path (e.g. /dev/shm/$SLURM_JOB_ID)", v);
        cfg->chroot = pmb_xstrdup(v);
    } else {
        char buf[256];
        const char *job = getenv("SLURM_JOB_ID");
        snprintf(buf, sizeof buf, "/dev/shm/python-mpi.%u%s%s", (unsigned)geteuid(), job ? "." : "",
                 job ? job : "");
        cfg->chroot = pmb_xstrdup(buf);
    }
    for (const char *p = cfg->chroot; *p; p++)
        if (*p == '%' && p[1] != 'n' && p[1] != 'h' && p[1] != '%')
            pmb_die("PYTHON_MPI_CHROOT='%s': unknown placeholder '%%%c' (use %%n for the node "
                    "index, %%h for the host name)", cfg->chroot, p[1] ? p[1] : ' ');
}

char *pmb_expand_chroot(const char *pattern, int node_index)
{
    char host[256] = "";
    gethostname(host, sizeof host - 1);
    size_t cap = strlen(pattern) + strlen(host) * 4 + 64, len = 0;
    char *out = pmb_xmalloc(cap);
    for (const char *p = pattern; *p; p++) {
        if (*p == '%' && p[1] == 'n') {
            len += (size_t)snprintf(out + len, cap - len, "%d", node_index);
            p++;
        } else if (*p == '%' && p[1] == 'h') {
            len += (size_t)snprintf(out + len, cap - len, "%s", host);
            p++;
        } else if (*p == '%' && p[1] == '%') {
            out[len++] = '%';
            p++;
        } else {
            out[len++] = *p;
        }
        if (len + 32 >= cap) {
            cap *= 2;
            out = pmb_xrealloc(out, cap);
        }
    }
    out[len] = 0;
    while (len > 1 && out[len - 1] == '/')
        out[--len] = 0;
    return out;
}
