/* Package manifests: a zstd skippable frame at the start of the file, text
 * lines "key value" (format described in python_mpi_bcast/pkgformat.py). */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "pmb.h"

static int hexval(int c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

void pmb_percent_decode(char *s)
{
    char *o = s;
    for (char *p = s; *p; p++) {
        if (*p == '%' && hexval(p[1]) >= 0 && hexval(p[2]) >= 0) {
            *o++ = (char)(hexval(p[1]) * 16 + hexval(p[2]));
            p += 2;
        } else {
            *o++ = *p;
        }
    }
    *o = 0;
}

static int parse_u64(const char *s, uint64_t *out)
{
    char *end;
    if (!s || !*s)
        return -1;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (*end || errno)
        return -1;
    *out = v;
    return 0;
}

static int parse_hash(const char *s, unsigned char out[32])
{
    if (!s || strlen(s) != 64)
        return -1;
    for (int i = 0; i < 32; i++) {
        int hi = hexval(s[2 * i]), lo = hexval(s[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return -1;
        out[i] = (unsigned char)(hi * 16 + lo);
    }
    return 0;
}

#define FAIL(...) do { snprintf(err, errlen, __VA_ARGS__); return -1; } while (0)

/* Parse manifest text in place (the buffer is kept and referenced). */
int pmb_manifest_parse(pmb_manifest *m, char *text, size_t len, char *err, size_t errlen)
{
    char *file = m->file;
    memset(m, 0, sizeof *m);
    m->file = file;
    m->text = pmb_xmalloc(len + 1);
    memcpy(m->text, text, len);
    m->text[len] = 0;
    m->text_len = len;
    char *work = pmb_xmalloc(len + 1);
    memcpy(work, text, len);
    work[len] = 0;
    if (memchr(work, 0, len))
        FAIL("corrupt manifest (NUL byte)");
    char *save = NULL;
    char *line = strtok_r(work, "\n", &save);
    if (!line || strncmp(line, "python-mpi-bcast-package ", 25))
        FAIL("not a python-mpi-bcast package (bad manifest header)");
    if (atoi(line + 25) != PMB_FORMAT_VERSION)
        FAIL("package format version %s is not supported (this launcher reads version %d); "
             "repack it with a matching python-mpi-bcast", line + 25, PMB_FORMAT_VERSION);
    int declared = -1, ended = 0, have_hash = 0;
    int cap_s = 0, cap_p = 0;
    while ((line = strtok_r(NULL, "\n", &save))) {
        char *f[8] = {0};
        int nf = 0;
        char *s2 = NULL;
        for (char *t = strtok_r(line, " ", &s2); t && nf < 8; t = strtok_r(NULL, " ", &s2))
            f[nf++] = t;
        if (!nf)
            continue;
        if (ended)
            FAIL("corrupt manifest (text after 'end')");
        if (!strcmp(f[0], "end")) {
            ended = 1;
        } else if (!strcmp(f[0], "shards") && nf == 2) {
            declared = atoi(f[1]);
        } else if (!strcmp(f[0], "shard") && nf == 6) {
            if (m->nshards == cap_s) {
                cap_s = cap_s ? 2 * cap_s : 64;
                m->shards = realloc(m->shards, sizeof(pmb_shard) * (size_t)cap_s);
                if (!m->shards) FAIL("out of memory");
            }
            pmb_shard *sh = &m->shards[m->nshards++];
            if (parse_u64(f[1], &sh->offset) || parse_u64(f[2], &sh->csize) ||
                parse_u64(f[3], &sh->usize) || parse_u64(f[4], &sh->nfiles) || parse_hash(f[5], sh->sha))
                FAIL("corrupt manifest (bad shard line)");
        } else if (!strcmp(f[0], "prefix") && nf == 4) {
            if (m->nprefix == cap_p) {
                cap_p = cap_p ? 2 * cap_p : 16;
                m->prefix = realloc(m->prefix, sizeof(pmb_prefix) * (size_t)cap_p);
                if (!m->prefix) FAIL("out of memory");
            }
            pmb_prefix *p = &m->prefix[m->nprefix++];
            p->binary = !strcmp(f[1], "binary");
            p->path = pmb_xstrdup(f[2]);
            p->placeholder = pmb_xstrdup(f[3]);
            pmb_percent_decode(p->path);
            pmb_percent_decode(p->placeholder);
            if (p->path[0] == '/' || strstr(p->path, ".."))
                FAIL("corrupt manifest (prefix file path '%s')", p->path);
        } else if (nf == 2) {
            char *v = pmb_xstrdup(f[1]);
            pmb_percent_decode(v);
            if (!strcmp(f[0], "name")) m->name = v;
            else if (!strcmp(f[0], "kind")) m->kind = v;
            else if (!strcmp(f[0], "python")) m->python = v;
            else if (!strcmp(f[0], "abi")) m->abi = v;
            else if (!strcmp(f[0], "libpython")) m->libpython = v;
            else if (!strcmp(f[0], "executable")) m->executable = v;
            else if (!strcmp(f[0], "site_dir")) m->site_dir = v;
            else if (!strcmp(f[0], "unpacked_size")) { if (parse_u64(v, &m->unpacked_size)) FAIL("corrupt manifest (unpacked_size)"); }
            else if (!strcmp(f[0], "files")) { if (parse_u64(v, &m->files)) FAIL("corrupt manifest (files)"); }
            else if (!strcmp(f[0], "payload_size")) { if (parse_u64(v, &m->payload_size)) FAIL("corrupt manifest (payload_size)"); }
            else if (!strcmp(f[0], "content_hash")) { if (parse_hash(v, m->content_hash)) FAIL("corrupt manifest (content_hash)"); have_hash = 1; }
            else free(v);
        }
    }
    free(work);
    if (!ended || declared != m->nshards || m->nshards < 1 || !have_hash || !m->kind)
        FAIL("corrupt or truncated manifest");
    if (strcmp(m->kind, "interpreter") && strcmp(m->kind, "environment") && strcmp(m->kind, "directory"))
        FAIL("unknown package kind '%s'", m->kind);
    /* the shard table must be contiguous, cover the payload and match the content hash */
    uint64_t off = 0;
    pmb_sha256 h;
    pmb_sha256_init(&h);
    for (int i = 0; i < m->nshards; i++) {
        if (m->shards[i].offset != off)
            FAIL("corrupt manifest (shard %d is not contiguous)", i);
        off += m->shards[i].csize;
        pmb_sha256_update(&h, m->shards[i].sha, 32);
    }
    if (off != m->payload_size)
        FAIL("corrupt manifest (shards cover %llu bytes, payload is %llu)",
             (unsigned long long)off, (unsigned long long)m->payload_size);
    unsigned char d[32];
    pmb_sha256_final(&h, d);
    if (memcmp(d, m->content_hash, 32))
        FAIL("corrupt manifest (shard table does not match the content hash)");
    return 0;
}

static ssize_t read_full(int fd, void *buf, size_t n)
{
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, (char *)buf + got, n - got);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        if (r == 0)
            break;
        got += (size_t)r;
    }
    return (ssize_t)got;
}

/* Rank 0: open DIR/FILE, read and parse its manifest; leave the file open
 * at the start of the payload. */
void pmb_manifest_read_file(pmb_manifest *m, const char *dir, const char *file, int *fd_out)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT)
            pmb_die("package '%s' not found in %s", file, dir);
        if (errno == EACCES)
            pmb_die("package '%s' in %s is not readable (permission denied)", file, dir);
        pmb_die("package '%s': cannot open %s: %s", file, path, strerror(errno));
    }
    struct stat st;
    if (fstat(fd, &st) || !S_ISREG(st.st_mode))
        pmb_die("package '%s': %s is not a regular file", file, path);
    unsigned char head[8];
    ssize_t r = read_full(fd, head, 8);
    if (r < 0)
        pmb_die("package '%s': cannot read %s: %s", file, path, strerror(errno));
    uint32_t magic = (uint32_t)head[0] | (uint32_t)head[1] << 8 | (uint32_t)head[2] << 16 | (uint32_t)head[3] << 24;
    uint32_t size = (uint32_t)head[4] | (uint32_t)head[5] << 8 | (uint32_t)head[6] << 16 | (uint32_t)head[7] << 24;
    if (r < 8 || magic != PMB_SKIPPABLE_MAGIC)
        pmb_die("package '%s' is not a python-mpi-bcast package (no manifest; make packages "
                "with 'python-mpi-bcast pack')", file);
    if (size > PMB_MAX_MANIFEST)
        pmb_die("package '%s' is corrupt (manifest of %u bytes)", file, size);
    char *text = pmb_xmalloc(size + 1);
    if (read_full(fd, text, size) != (ssize_t)size)
        pmb_die("package '%s' is truncated (manifest cut short)", file);
    char err[512];
    m->file = (char *)file;
    if (pmb_manifest_parse(m, text, size, err, sizeof err))
        pmb_die("package '%s': %s", file, err);
    free(text);
    m->payload_start = 8 + (uint64_t)size;
    if ((uint64_t)st.st_size != m->payload_start + m->payload_size)
        pmb_die("package '%s' is truncated or damaged: expected %llu bytes, the file has %llu; "
                "copy or pack it again", file,
                (unsigned long long)(m->payload_start + m->payload_size), (unsigned long long)st.st_size);
    *fd_out = fd;
}
