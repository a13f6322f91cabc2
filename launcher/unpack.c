/* Unpack a package's payload (zstd frames of tar members) into a directory.
 *
 * Streaming: bytes arrive in chunks of any size (pmb_unpacker_feed); the zstd
 * stream decoder hands decompressed bytes to a small tar state machine that
 * writes files as their data comes in.  Members with absolute paths or '..',
 * and symlinks that leave the tree, are refused. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>
#include <zstd.h>

#include "pmb.h"

enum { ST_HEADER, ST_DATA, ST_PAX, ST_LONGNAME, ST_LONGLINK, ST_SKIP, ST_END };

struct pmb_unpacker {
    const pmb_manifest *m;
    char root[PATH_MAX];
    char final_root[PATH_MAX];
    int rootfd;
    ZSTD_DStream *zd;
    unsigned char *zout;
    size_t zout_size;
    /* tar state */
    int state;
    unsigned char hdr[512];
    size_t hdr_have;
    uint64_t remaining, pad;
    int fd;
    char name[PATH_MAX];
    unsigned mode;
    int64_t mtime;
    char *ext;                /* pax / GNU long name payload */
    size_t ext_len, ext_cap;
    char *pax_path, *pax_link, *long_name, *long_link;
    int pax_has_size;
    uint64_t pax_size;
    int zero_blocks;
    uint64_t files, bytes, since_poke;
};

static void (*poke_fn)(void);

void pmb_set_poke(void (*fn)(void)) { poke_fn = fn; }

#define UFAIL(u, ...) do { \
        char msg_[1024]; snprintf(msg_, sizeof msg_, __VA_ARGS__); \
        pmb_die("package '%s': %s", (u)->m->file, msg_); } while (0)

pmb_unpacker *pmb_unpacker_new(const char *root, const char *final_root, const pmb_manifest *m)
{
    pmb_unpacker *u = calloc(1, sizeof *u);
    if (!u)
        pmb_die("out of memory");
    u->m = m;
    snprintf(u->root, sizeof u->root, "%s", root);
    snprintf(u->final_root, sizeof u->final_root, "%s", final_root);
    u->rootfd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (u->rootfd < 0)
        pmb_die("cannot open node directory %s: %s", root, strerror(errno));
    u->zd = ZSTD_createDStream();
    if (!u->zd)
        pmb_die("out of memory (zstd)");
    ZSTD_initDStream(u->zd);
    u->zout_size = 1u << 20;
    u->zout = pmb_xmalloc(u->zout_size);
    u->fd = -1;
    u->state = ST_HEADER;
    return u;
}

static uint64_t parse_num(pmb_unpacker *u, const unsigned char *p, size_t n)
{
    if (p[0] & 0x80) { /* base-256 (GNU) */
        uint64_t v = p[0] & 0x7f;
        for (size_t i = 1; i < n; i++)
            v = (v << 8) | p[i];
        return v;
    }
    uint64_t v = 0;
    size_t i = 0;
    while (i < n && (p[i] == ' ' || p[i] == 0)) i++;
    for (; i < n && p[i] >= '0' && p[i] <= '7'; i++)
        v = v * 8 + (uint64_t)(p[i] - '0');
    (void)u;
    return v;
}

static int safe_name(const char *name)
{
    if (!*name || name[0] == '/')
        return 0;
    const char *p = name;
    while (*p) {
        const char *s = strchr(p, '/');
        size_t len = s ? (size_t)(s - p) : strlen(p);
        if (len == 2 && p[0] == '.' && p[1] == '.')
            return 0;
        if (!s)
            break;
        p = s + 1;
    }
    return 1;
}

/* mkdir -p for the parents of name, relative to rootfd */
static void make_parents(pmb_unpacker *u, const char *name)
{
    char tmp[PATH_MAX];
    snprintf(tmp, sizeof tmp, "%s", name);
    for (char *s = strchr(tmp, '/'); s; s = strchr(s + 1, '/')) {
        *s = 0;
        if (mkdirat(u->rootfd, tmp, 0755) && errno != EEXIST)
            UFAIL(u, "cannot create directory %s/%s: %s", u->root, tmp, strerror(errno));
        *s = '/';
    }
}

/* Does a symlink at NAME with target LINK stay inside the tree?  Judged from
 * the link's physical parent, so chains of links cannot climb out. */
static int link_inside(pmb_unpacker *u, const char *name, const char *link)
{
    if (link[0] == '/')
        return 0;
    char parent[PATH_MAX], real_parent[PATH_MAX], real_root[PATH_MAX];
    snprintf(parent, sizeof parent, "%s/%s", u->root, name);
    char *slash = strrchr(parent, '/');
    *slash = 0;
    if (!realpath(parent, real_parent) || !realpath(u->root, real_root))
        return 0;
    size_t rl = strlen(real_root);
    if (strncmp(real_parent, real_root, rl) || (real_parent[rl] && real_parent[rl] != '/'))
        return 0;
    /* depth of the parent below the root, then walk the link's components */
    int depth = 0;
    for (const char *p = real_parent + rl; *p; p++)
        depth += *p == '/';
    const char *p = link;
    while (*p) {
        const char *s = strchr(p, '/');
        size_t len = s ? (size_t)(s - p) : strlen(p);
        if (len == 2 && p[0] == '.' && p[1] == '.') {
            if (--depth < 0)
                return 0;
        } else if (len && !(len == 1 && p[0] == '.')) {
            depth++;
        }
        if (!s)
            break;
        p = s + 1;
    }
    return 1;
}

/* Create (or truncate) a regular file of the tree, never through a symlink. */
static int create_member(pmb_unpacker *u, const char *name)
{
    return openat(u->rootfd, name, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
}

static void begin_member(pmb_unpacker *u)
{
    const unsigned char *h = u->hdr;
    char type = (char)h[156];
    /* checksum */
    unsigned sum = 0;
    for (int i = 0; i < 512; i++)
        sum += (i >= 148 && i < 156) ? ' ' : h[i];
    if (parse_num(u, h + 148, 8) != sum)
        UFAIL(u, "corrupt archive (tar header checksum mismatch); repack it");
    uint64_t size = u->pax_has_size ? u->pax_size : parse_num(u, h + 124, 12);
    char name[PATH_MAX];
    if (u->pax_path) {
        snprintf(name, sizeof name, "%s", u->pax_path);
    } else if (u->long_name) {
        snprintf(name, sizeof name, "%s", u->long_name);
    } else {
        char n[101], pre[156];
        memcpy(n, h, 100); n[100] = 0;
        memcpy(pre, h + 345, 155); pre[155] = 0;
        if (!memcmp(h + 257, "ustar", 5) && pre[0])
            snprintf(name, sizeof name, "%s/%s", pre, n);
        else
            snprintf(name, sizeof name, "%s", n);
    }
    char link[PATH_MAX];
    if (u->pax_link)
        snprintf(link, sizeof link, "%s", u->pax_link);
    else if (u->long_link)
        snprintf(link, sizeof link, "%s", u->long_link);
    else {
        memcpy(link, h + 157, 100);
        link[100] = 0;
    }
    free(u->pax_path); free(u->pax_link); free(u->long_name); free(u->long_link);
    u->pax_path = u->pax_link = u->long_name = u->long_link = NULL;
    u->pax_has_size = 0;

    size_t nl = strlen(name);
    while (nl > 1 && name[nl - 1] == '/')
        name[--nl] = 0;
    while (!strncmp(name, "./", 2))
        memmove(name, name + 2, strlen(name + 2) + 1);
    if (!safe_name(name))
        UFAIL(u, "refusing archive member '%s' (absolute path or '..')", name);
    u->mode = (unsigned)parse_num(u, h + 100, 8) & 07777;
    u->mtime = (int64_t)parse_num(u, h + 136, 12);
    snprintf(u->name, sizeof u->name, "%s", name);
    u->remaining = 0;
    u->pad = 0;

    switch (type) {
    case '5': {
        int r = mkdirat(u->rootfd, name, (u->mode | 0700) & 07777);
        if (r && errno == ENOENT) { /* parents not there yet (another shard's) */
            make_parents(u, name);
            r = mkdirat(u->rootfd, name, (u->mode | 0700) & 07777);
        }
        if (r && errno != EEXIST)
            UFAIL(u, "cannot create directory %s/%s: %s", u->root, name, strerror(errno));
        u->state = ST_HEADER;
        return;
    }
    case '2':
        if (!link_inside(u, name, link)) {
            make_parents(u, name);
            if (!link_inside(u, name, link))
                UFAIL(u, "refusing symlink %s -> %s (points outside the tree)", name, link);
        }
        make_parents(u, name);
        unlinkat(u->rootfd, name, 0);
        if (symlinkat(link, u->rootfd, name))
            UFAIL(u, "cannot create symlink %s/%s: %s", u->root, name, strerror(errno));
        u->state = ST_HEADER;
        return;
    case '0':
    case '\0':
    case '7':
        u->fd = create_member(u, name);
        if (u->fd < 0 && errno == ENOENT) { /* parents not there yet (another shard's) */
            make_parents(u, name);
            u->fd = create_member(u, name);
        }
        if (u->fd < 0 && (errno == ELOOP || errno == EISDIR || errno == ETXTBSY)) {
            unlinkat(u->rootfd, name, 0); /* a link or file of an earlier layer */
            u->fd = create_member(u, name);
        }
        if (u->fd < 0) {
            if (errno == ENOSPC)
                UFAIL(u, "no space left in %s while writing %s; set PYTHON_MPI_CHROOT to a "
                      "directory with more room", u->root, name);
            UFAIL(u, "cannot create %s/%s: %s", u->root, name, strerror(errno));
        }
        u->remaining = size;
        u->pad = (512 - size % 512) % 512;
        u->files++;
        u->state = size ? ST_DATA : ST_HEADER;
        if (!size) {
            fchmod(u->fd, u->mode);
            close(u->fd);
            u->fd = -1;
        }
        return;
    case 'x':
    case 'L':
    case 'K':
        u->ext_len = 0;
        u->remaining = size;
        u->pad = (512 - size % 512) % 512;
        if (size > (16u << 20))
            UFAIL(u, "corrupt archive (extended header of %llu bytes)", (unsigned long long)size);
        u->state = type == 'x' ? ST_PAX : type == 'L' ? ST_LONGNAME : ST_LONGLINK;
        if (!size)
            u->state = ST_HEADER;
        return;
    case 'g':
        u->remaining = size;
        u->pad = (512 - size % 512) % 512;
        u->state = size ? ST_SKIP : ST_HEADER;
        return;
    default:
        UFAIL(u, "refusing archive member '%s' of unsupported type '%c'", name, type);
    }
}

static void finish_ext(pmb_unpacker *u, int kind)
{
    if (kind == ST_LONGNAME || kind == ST_LONGLINK) {
        char *s = pmb_xmalloc(u->ext_len + 1);
        memcpy(s, u->ext, u->ext_len);
        s[u->ext_len] = 0;
        if (kind == ST_LONGNAME) { free(u->long_name); u->long_name = s; }
        else { free(u->long_link); u->long_link = s; }
        return;
    }
    /* pax records: "LEN key=value\n" */
    size_t i = 0;
    while (i < u->ext_len) {
        char *rec = u->ext + i;
        char *end;
        unsigned long len = strtoul(rec, &end, 10);
        if (!len || end == rec || *end != ' ' || i + len > u->ext_len || rec[len - 1] != '\n')
            UFAIL(u, "corrupt archive (bad pax header)");
        char *key = end + 1;
        char *eq = memchr(key, '=', (size_t)(rec + len - key));
        if (!eq)
            UFAIL(u, "corrupt archive (bad pax record)");
        size_t klen = (size_t)(eq - key), vlen = (size_t)(rec + len - 1 - (eq + 1));
        char *val = pmb_xmalloc(vlen + 1);
        memcpy(val, eq + 1, vlen);
        val[vlen] = 0;
        if (klen == 4 && !memcmp(key, "path", 4)) { free(u->pax_path); u->pax_path = val; }
        else if (klen == 8 && !memcmp(key, "linkpath", 8)) { free(u->pax_link); u->pax_link = val; }
        else if (klen == 4 && !memcmp(key, "size", 4)) {
            u->pax_size = strtoull(val, NULL, 10);
            u->pax_has_size = 1;
            free(val);
        } else free(val);
        i += len;
    }
}

static void tar_feed(pmb_unpacker *u, const unsigned char *p, size_t n)
{
    while (n) {
        if (u->state == ST_END)
            return; /* trailing zero padding after the end blocks */
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
            if (zero) {
                if (++u->zero_blocks == 2)
                    u->state = ST_END;
                continue;
            }
            u->zero_blocks = 0;
            begin_member(u);
            continue;
        }
        /* data (file, extended header, skipped) then padding */
        if (u->remaining) {
            size_t take = u->remaining < n ? (size_t)u->remaining : n;
            if (u->state == ST_DATA) {
                size_t off = 0;
                while (off < take) {
                    ssize_t w = write(u->fd, p + off, take - off);
                    if (w < 0) {
                        if (errno == EINTR)
                            continue;
                        if (errno == ENOSPC)
                            UFAIL(u, "no space left in %s while writing %s; set PYTHON_MPI_CHROOT "
                                  "to a directory with more room", u->root, u->name);
                        UFAIL(u, "cannot write %s/%s: %s", u->root, u->name, strerror(errno));
                    }
                    off += (size_t)w;
                }
                u->bytes += take;
            } else if (u->state != ST_SKIP) {
                if (u->ext_len + take > u->ext_cap) {
                    u->ext_cap = (u->ext_len + take) * 2;
                    u->ext = realloc(u->ext, u->ext_cap);
                    if (!u->ext)
                        pmb_die("out of memory");
                }
                memcpy(u->ext + u->ext_len, p, take);
                u->ext_len += take;
            }
            u->remaining -= take;
            p += take;
            n -= take;
            if (u->remaining)
                continue;
            if (u->state == ST_DATA) {
                if (fchmod(u->fd, u->mode))
                    UFAIL(u, "cannot set mode of %s: %s", u->name, strerror(errno));
                struct timespec ts[2] = {{u->mtime, 0}, {u->mtime, 0}};
                futimens(u->fd, ts);
                if (close(u->fd))
                    UFAIL(u, "cannot write %s/%s: %s", u->root, u->name, strerror(errno));
                u->fd = -1;
            } else if (u->state == ST_PAX || u->state == ST_LONGNAME || u->state == ST_LONGLINK) {
                finish_ext(u, u->state);
            }
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

void pmb_unpacker_feed(pmb_unpacker *u, const unsigned char *data, size_t n)
{
    ZSTD_inBuffer in = {data, n, 0};
    while (in.pos < in.size) {
        ZSTD_outBuffer out = {u->zout, u->zout_size, 0};
        size_t r = ZSTD_decompressStream(u->zd, &out, &in);
        if (ZSTD_isError(r))
            UFAIL(u, "corrupt package data (zstd: %s); copy or pack it again", ZSTD_getErrorName(r));
        tar_feed(u, u->zout, out.pos);
        u->since_poke += out.pos;
        if (poke_fn && u->since_poke >= (1u << 20)) {
            u->since_poke = 0;
            poke_fn();
        }
    }
    /* drain output the decoder still holds for this input */
    for (;;) {
        ZSTD_outBuffer out = {u->zout, u->zout_size, 0};
        ZSTD_inBuffer none = {NULL, 0, 0};
        size_t r = ZSTD_decompressStream(u->zd, &out, &none);
        if (ZSTD_isError(r))
            UFAIL(u, "corrupt package data (zstd: %s)", ZSTD_getErrorName(r));
        tar_feed(u, u->zout, out.pos);
        if (out.pos < out.size)
            break;
    }
}

/* End of this rank's part of a package.  With several unpacking ranks per
 * node each sees only its shards: it must stop at a member boundary, and the
 * caller sums the counts and checks that some rank saw the archive's end. */
void pmb_unpacker_finish(pmb_unpacker *u, uint64_t *files, uint64_t *bytes, int *saw_end)
{
    int at_boundary = (u->state == ST_HEADER && u->hdr_have == 0) || u->state == ST_END;
    if (!at_boundary || u->fd >= 0)
        UFAIL(u, "truncated package data (a shard ends inside an archive member)");
    *files = u->files;
    *bytes = u->bytes;
    *saw_end = u->state == ST_END;
    ZSTD_freeDStream(u->zd);
    close(u->rootfd);
    free(u->zout);
    free(u->ext);
    free(u);
}

/* Replace the recorded placeholder by the final tree path in every
 * prefix-bearing file (text: plain replace; binary: inside NUL-terminated
 * strings, padded with NULs, only when the new path fits). */
void pmb_patch_prefixes(const char *root, const char *final_root, const pmb_manifest *m)
{
    size_t nlen = strlen(final_root);
    for (int i = 0; i < m->nprefix; i++) {
        const pmb_prefix *pf = &m->prefix[i];
        size_t olen = strlen(pf->placeholder);
        if (!olen)
            continue;
        if (pf->binary && nlen > olen) {
            /* the tree is <chroot>/env-<32 hex digits>: 37 bytes more than the chroot */
            pmb_die("package '%s': %s can hold a path of at most %zu bytes (its recorded "
                    "placeholder), but the staged tree %s has %zu; set PYTHON_MPI_CHROOT to a "
                    "path of at most %zu bytes", m->file, pf->path, olen, final_root, nlen,
                    olen > 37 ? olen - 37 : 0);
        }
        char path[PATH_MAX];
        snprintf(path, sizeof path, "%s/%s", root, pf->path);
        int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0)
            continue; /* replaced by a later layer */
        struct stat st;
        if (fstat(fd, &st) || !S_ISREG(st.st_mode)) {
            close(fd);
            continue;
        }
        size_t size = (size_t)st.st_size;
        char *data = pmb_xmalloc(size + 1);
        size_t got = 0;
        while (got < size) {
            ssize_t r = read(fd, data + got, size - got);
            if (r <= 0)
                pmb_die("cannot read %s while patching prefixes", path);
            got += (size_t)r;
        }
        close(fd);
        size_t cap = pf->binary ? size : size + (nlen > olen ? (nlen - olen) * (size / olen + 1) : 0);
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
        char tmp[PATH_MAX + 16];
        snprintf(tmp, sizeof tmp, "%s.pmb-patch", path);
        int wfd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, st.st_mode & 07777);
        if (wfd < 0)
            pmb_die("cannot write %s: %s", tmp, strerror(errno));
        size_t off = 0;
        while (off < o) {
            ssize_t w = write(wfd, out + off, o - off);
            if (w < 0) {
                if (errno == EINTR)
                    continue;
                pmb_die("cannot write %s: %s", tmp, strerror(errno));
            }
            off += (size_t)w;
        }
        fchmod(wfd, st.st_mode & 07777);
        if (close(wfd) || rename(tmp, path))
            pmb_die("cannot replace %s: %s", path, strerror(errno));
        free(data);
        free(out);
    }
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
