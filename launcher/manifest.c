/* Package manifests (format version 3, described in python_mpi_bcast/package/format.py;
 * version 2 has no part lines):
 * a zstd skippable frame at the start of the file holding one zstd frame
 * with a content checksum, which holds the manifest text, then padding
 * (0x00 bytes only; the payload starts after the skippable frame).  The text is
 * parsed strictly: every line known, every field checked, every size and
 * offset range-checked.  pkgformat.Manifest.from_text applies exactly the
 * same rules (tests/package/test_hostile.py runs both on one corpus). */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zstd.h>

#include "manifest.h"
#include "sha256.h"

#define PMB_MAX_U63 9223372036854775807ull
#define PMB_MAX_SHARDS (1 << 20)

/* ---- path rules (shared with unpack.c) ---------------------------------- */

/* A member path: relative, components non-empty and neither '.' nor '..',
 * no NUL, at most PATH_MAX - 1 bytes.  NULL if fine, else the reason. */
const char *pmb_path_problem(const char *p, size_t len)
{
    if (!len)
        return "empty path";
    if (len > PATH_MAX - 1)
        return "path longer than 4095 bytes";
    if (memchr(p, 0, len))
        return "NUL byte in path";
    if (p[0] == '/')
        return "absolute path";
    size_t i = 0;
    while (i <= len) {
        size_t j = i;
        while (j < len && p[j] != '/')
            j++;
        size_t c = j - i;
        if (c == 0)
            return "empty path component";
        if (c == 1 && p[i] == '.')
            return "'.' path component";
        if (c == 2 && p[i] == '.' && p[i + 1] == '.')
            return "'..' path component";
        i = j + 1;
    }
    return NULL;
}

/* A symlink target for the member at `name`: relative; either exactly "."
 * or some leading '..' components (no more than the link's depth) followed
 * by names only (no '.', '..' or empty components after them).  Parents
 * are always real directories (unpack.c), so such a link resolves inside
 * the tree whatever else the tree holds. */
const char *pmb_link_problem(const char *name, const char *t, size_t len)
{
    if (!len)
        return "empty target";
    if (len > PATH_MAX - 1)
        return "target longer than 4095 bytes";
    if (memchr(t, 0, len))
        return "NUL byte in target";
    if (t[0] == '/')
        return "absolute target";
    if (len == 1 && t[0] == '.')
        return NULL;
    size_t depth = 0;
    for (const char *s = name; *s; s++)
        depth += *s == '/';
    size_t i = 0, ups = 0;
    int named = 0;
    while (i <= len) {
        size_t j = i;
        while (j < len && t[j] != '/')
            j++;
        size_t c = j - i;
        if (c == 0)
            return "empty component in target";
        if (c == 1 && t[i] == '.')
            return "'.' component in target";
        if (c == 2 && t[i] == '.' && t[i + 1] == '.') {
            if (named)
                return "'..' after a name in target";
            if (++ups > depth)
                return "more '..' than the link's depth";
        } else {
            named = 1;
        }
        i = j + 1;
    }
    return NULL;
}

/* ---- manifest text ------------------------------------------------------ */

static int hexval(int c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Strict percent-decoding of n bytes: '%' + two upper-case hex digits,
 * never a NUL.  Returns a new string (length in *out_len) or NULL. */
static char *decode(const char *s, size_t n, size_t *out_len)
{
    char *o = pmb_xmalloc(n + 1);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '%') {
            if (i + 2 >= n) {
                free(o);
                return NULL;
            }
            int hi = hexval((unsigned char)s[i + 1]), lo = hexval((unsigned char)s[i + 2]);
            if (hi < 0 || lo < 0 || (hi == 0 && lo == 0)) {
                free(o);
                return NULL;
            }
            o[k++] = (char)(hi * 16 + lo);
            i += 2;
        } else {
            o[k++] = s[i];
        }
    }
    o[k] = 0;
    *out_len = k;
    return o;
}

/* canonical decimal (no sign, no leading zero) up to 2^63 - 1 */
static int parse_num(const char *s, size_t n, uint64_t *out)
{
    if (!n || n > 19 || (n > 1 && s[0] == '0'))
        return -1;
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (uint64_t)(s[i] - '0');
    }
    if (v > PMB_MAX_U63)
        return -1;
    *out = v;
    return 0;
}

static int parse_hash(const char *s, size_t n, unsigned char out[32])
{
    if (n != 64)
        return -1;
    for (int i = 0; i < 32; i++) {
        int v[2];
        for (int k = 0; k < 2; k++) {
            int c = (unsigned char)s[2 * i + k];
            v[k] = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
            if (v[k] < 0)
                return -1;
        }
        out[i] = (unsigned char)(v[0] * 16 + v[1]);
    }
    return 0;
}

static const char *const KEYS[] = {"name", "kind", "python", "abi", "platform", "libpython",
                                   "executable", "site_dir", "unpacked_size", "files",
                                   "payload_size", "content_hash", "created_by", "sources"};
#define NKEYS (int)(sizeof KEYS / sizeof KEYS[0])

/* The parser's state between lines: the line's fields, which keys were
 * seen, the phase (0 keys, 1 shard lines, 2 prefix lines, 3 ended) and the
 * shard sums so far.  Each step below returns 0, or -1 with err set. */
typedef struct {
    pmb_manifest *m;
    char *err;
    size_t errlen;
    int lineno;
    const char *f[7];
    size_t fl[7];
    int nf;
    int seen[NKEYS];
    int phase;
    long long declared;
    uint64_t off, nfiles, usum;
    int cap_p;
    int version, prefixed, cap_parts;
} mparse;

#define PFAIL(...) do { snprintf(p->err, p->errlen, __VA_ARGS__); return -1; } while (0)
#define IS(k, s) (p->fl[k] == strlen(s) && !memcmp(p->f[k], s, p->fl[k]))

/* the whole text: ends with a newline, no control bytes but newlines */
static int check_text(mparse *p, const char *text, size_t len)
{
    if (!len || text[len - 1] != '\n')
        PFAIL("corrupt manifest (does not end with a newline)");
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)text[i];
        if ((c < 0x20 && c != '\n') || c == 0x7f)
            PFAIL("corrupt manifest (control byte 0x%02x)", c);
    }
    return 0;
}

/* a line of ll bytes into 1 to 7 fields separated by single spaces */
static int split_line(mparse *p, const char *line, size_t ll)
{
    p->nf = 0;
    size_t i = 0;
    while (i <= ll) {
        size_t j = i;
        while (j < ll && line[j] != ' ')
            j++;
        if (j == i)
            PFAIL("corrupt manifest (empty field in line %d)", p->lineno);
        if (p->nf == 7)
            PFAIL("corrupt manifest (too many fields in line %d)", p->lineno);
        p->f[p->nf] = line + i;
        p->fl[p->nf++] = j - i;
        i = j + 1;
    }
    return 0;
}

static int header_line(mparse *p)
{
    if (p->nf != 2 || !IS(0, "python-mpi-bcast-package"))
        PFAIL("not a python-mpi-bcast package (bad manifest header)");
    if (!IS(1, "2") && !IS(1, "3"))
        PFAIL("package format version %.*s is not supported (this python-mpi reads "
              "versions 2 and 3); re-pack it with python-mpi-bcast pack",
              (int)(p->fl[1] < 20 ? p->fl[1] : 20), p->f[1]);
    p->version = p->f[1][0] - '0';
    return 0;
}

static int shards_line(mparse *p)
{
    uint64_t n;
    if (p->phase != 0 || p->nf != 2)
        PFAIL("corrupt manifest (misplaced 'shards' line)");
    if (parse_num(p->f[1], p->fl[1], &n) || n < 1 || n > PMB_MAX_SHARDS)
        PFAIL("corrupt manifest (bad shard count)");
    static const int required[] = {0, 1, 8, 9, 10, 11};
    for (int r = 0; r < 6; r++)
        if (!p->seen[required[r]])
            PFAIL("corrupt manifest (no '%s' line)", KEYS[required[r]]);
    p->declared = (long long)n;
    p->m->shards = calloc((size_t)n, sizeof(pmb_shard));
    p->m->shard_part = malloc(sizeof(int) * (size_t)n);
    if (!p->m->shards || !p->m->shard_part)
        PFAIL("out of memory");
    for (uint64_t i = 0; i < n; i++)
        p->m->shard_part[i] = -1;
    p->phase = 1;
    return 0;
}

static int shard_line(mparse *p)
{
    pmb_manifest *m = p->m;
    if (p->phase != 1 || p->nf != 6)
        PFAIL("corrupt manifest (bad shard line %d)", p->lineno);
    pmb_shard *sh = &m->shards[m->nshards];
    if (parse_num(p->f[1], p->fl[1], &sh->offset) || parse_num(p->f[2], p->fl[2], &sh->csize) ||
        parse_num(p->f[3], p->fl[3], &sh->usize) || parse_num(p->f[4], p->fl[4], &sh->nfiles) ||
        parse_hash(p->f[5], p->fl[5], sh->sha))
        PFAIL("corrupt manifest (bad shard line %d)", p->lineno);
    if (sh->offset != p->off)
        PFAIL("corrupt manifest (shard %d is not contiguous)", m->nshards);
    if (sh->csize < 1 || sh->usize % 512 || sh->nfiles > sh->usize / 512)
        PFAIL("corrupt manifest (shard %d has impossible sizes)", m->nshards);
    if (sh->csize > PMB_MAX_U63 - p->off || sh->usize > PMB_MAX_U63 - p->usum)
        PFAIL("corrupt manifest (shard sizes overflow)");
    p->off += sh->csize;
    p->usum += sh->usize;
    p->nfiles += sh->nfiles; /* <= usum / 512: cannot overflow */
    if (++m->nshards == p->declared)
        p->phase = 2;
    return 0;
}

static int prefix_line(mparse *p)
{
    pmb_manifest *m = p->m;
    if (p->phase != 2 || p->nf != 4)
        PFAIL("corrupt manifest (bad prefix line %d)", p->lineno);
    int binary = IS(1, "binary");
    if (!binary && !IS(1, "text"))
        PFAIL("corrupt manifest (prefix mode must be text or binary, line %d)", p->lineno);
    size_t pl, hl;
    char *path = decode(p->f[2], p->fl[2], &pl), *ph = decode(p->f[3], p->fl[3], &hl);
    if (!path || !ph) {
        free(path);
        free(ph);
        PFAIL("corrupt manifest (bad percent-encoding in line %d)", p->lineno);
    }
    const char *why = pmb_path_problem(path, pl);
    if (why) {
        snprintf(p->err, p->errlen, "corrupt manifest (prefix file path: %s)", why);
        free(path);
        free(ph);
        return -1;
    }
    if (m->nprefix == p->cap_p) {
        p->cap_p = p->cap_p ? 2 * p->cap_p : 16;
        pmb_prefix *np = realloc(m->prefix, sizeof(pmb_prefix) * (size_t)p->cap_p);
        if (!np)
            PFAIL("out of memory");
        m->prefix = np;
    }
    pmb_prefix *x = &m->prefix[m->nprefix++];
    x->binary = binary;
    x->path = path;
    x->placeholder = ph;
    p->prefixed = 1;
    return 0;
}

static uint64_t roundup512(uint64_t n) { return (n + 511) / 512 * 512; }

/* "part SHARD OFFSET SIZE MODE MTIME PATH", against the shard lines and
 * the part line before it (format.py _part) */
static int part_line(mparse *p)
{
    pmb_manifest *m = p->m;
    if (p->phase != 2 || p->nf != 7 || p->prefixed)
        PFAIL("corrupt manifest (bad part line %d)", p->lineno);
    if (p->version != 3)
        PFAIL("corrupt manifest (part line %d in a version 2 manifest)", p->lineno);
    uint64_t s, off, size, mtime;
    const char *md = p->f[4];
    int bad = parse_num(p->f[1], p->fl[1], &s) || parse_num(p->f[2], p->fl[2], &off) ||
              parse_num(p->f[3], p->fl[3], &size) || parse_num(p->f[5], p->fl[5], &mtime) ||
              p->fl[4] != 4 || md[0] != '0';
    for (int i = 0; i < 4 && !bad; i++)
        bad = md[i] < '0' || md[i] > '7';
    if (bad)
        PFAIL("corrupt manifest (bad part line %d)", p->lineno);
    unsigned mode = (unsigned)((md[1] - '0') * 64 + (md[2] - '0') * 8 + (md[3] - '0'));
    size_t pl;
    char *path = decode(p->f[6], p->fl[6], &pl);
    if (!path)
        PFAIL("corrupt manifest (bad percent-encoding in line %d)", p->lineno);
    const char *why = pmb_path_problem(path, pl);
    if (why) {
        snprintf(p->err, p->errlen, "corrupt manifest (split file path: %s)", why);
        free(path);
        return -1;
    }
    int ok = 0;
    const pmb_part *prev = m->nparts ? &m->parts[m->nparts - 1] : NULL;
    const pmb_split *ps = prev ? &m->splits[prev->split] : NULL;
    if (s < 1 || (long long)s > (long long)m->nshards - 2)
        snprintf(p->err, p->errlen, "corrupt manifest (part line %d: shard %llu cannot begin "
                 "inside a file)", p->lineno, (unsigned long long)s);
    else if (prev && (int)s <= prev->shard)
        snprintf(p->err, p->errlen, "corrupt manifest (part lines out of order, line %d)",
                 p->lineno);
    else if (off == 0 || off >= size || off % 512)
        snprintf(p->err, p->errlen, "corrupt manifest (part line %d: offset %llu is not inside "
                 "the file)", p->lineno, (unsigned long long)off);
    else
        ok = 1;
    if (!ok) {
        free(path);
        return -1;
    }
    uint64_t before = m->shards[s - 1].usize;
    int same = prev && prev->shard == (int)s - 1 && !strcmp(ps->path, path);
    if (same) {
        free(path);
        if (size != ps->size || mode != ps->mode || mtime != ps->mtime ||
            off != prev->offset + before)
            PFAIL("corrupt manifest (part line %d does not continue the piece before it)",
                  p->lineno);
    } else {
        uint64_t room = before;
        if (prev) {
            uint64_t rest = roundup512(ps->size) - prev->offset;
            if (rest > m->shards[prev->shard].usize) {
                free(path);
                PFAIL("corrupt manifest (part line %d: the file's last piece is missing)",
                      p->lineno - 1);
            }
            if (prev->shard == (int)s - 1)
                room -= rest;
        }
        if (off + 512 > room) {
            free(path);
            PFAIL("corrupt manifest (part line %d: the file's first piece does not fit shard "
                  "%llu)", p->lineno, (unsigned long long)(s - 1));
        }
        m->splits = pmb_xrealloc(m->splits, sizeof(pmb_split) * (size_t)(m->nsplits + 1));
        m->splits[m->nsplits++] = (pmb_split){path, size, mtime, mode, (int)s - 1, (int)s};
    }
    if (m->nparts == p->cap_parts) {
        p->cap_parts = p->cap_parts ? 2 * p->cap_parts : 16;
        m->parts = pmb_xrealloc(m->parts, sizeof(pmb_part) * (size_t)p->cap_parts);
    }
    m->parts[m->nparts++] = (pmb_part){(int)s, m->nsplits - 1, off};
    m->splits[m->nsplits - 1].last = (int)s;
    m->shard_part[s] = m->nparts - 1;
    return 0;
}

static const pmb_manifest *sort_m;
static int by_path(const void *a, const void *b)
{
    return strcmp(sort_m->splits[*(const int *)a].path, sort_m->splits[*(const int *)b].path);
}

/* after the last line (format.py _parts_end): the last split file ends in
 * its shard, no file is split twice, no prefix line names a split file */
static int check_parts(mparse *p)
{
    pmb_manifest *m = p->m;
    if (!m->nparts)
        return 0;
    const pmb_part *last = &m->parts[m->nparts - 1];
    if (roundup512(m->splits[last->split].size) - last->offset > m->shards[last->shard].usize)
        PFAIL("corrupt manifest (last part line: the file's last piece is missing)");
    m->split_order = pmb_xmalloc(sizeof(int) * (size_t)m->nsplits);
    for (int i = 0; i < m->nsplits; i++)
        m->split_order[i] = i;
    sort_m = m;
    qsort(m->split_order, (size_t)m->nsplits, sizeof(int), by_path);
    for (int i = 0; i + 1 < m->nsplits; i++)
        if (!strcmp(m->splits[m->split_order[i]].path, m->splits[m->split_order[i + 1]].path))
            PFAIL("corrupt manifest (split file '%.200s' given twice)",
                  m->splits[m->split_order[i]].path);
    for (int i = 0; i < m->nprefix; i++)
        if (pmb_find_split(m, m->prefix[i].path) >= 0)
            PFAIL("corrupt manifest (prefix file '%.200s' is a split file)", m->prefix[i].path);
    return 0;
}

/* The split file named path (its index in m->splits), or -1. */
int pmb_find_split(const pmb_manifest *m, const char *path)
{
    int lo = 0, hi = m->nsplits - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        int c = strcmp(m->splits[m->split_order[mid]].path, path);
        if (!c)
            return m->split_order[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid - 1;
    }
    return -1;
}

/* "KEY VALUE" before the shards: each key once, its value checked */
static int key_line(mparse *p)
{
    pmb_manifest *m = p->m;
    int k = 0;
    while (k < NKEYS && !IS(0, KEYS[k]))
        k++;
    if (k == NKEYS)
        PFAIL("corrupt manifest (unknown line %d '%.*s')", p->lineno,
              (int)(p->fl[0] < 40 ? p->fl[0] : 40), p->f[0]);
    if (p->phase != 0 || p->nf != 2 || p->seen[k])
        PFAIL("corrupt manifest (misplaced or repeated '%s' line)", KEYS[k]);
    p->seen[k] = 1;
    size_t vl;
    char *v = decode(p->f[1], p->fl[1], &vl);
    if (!v)
        PFAIL("corrupt manifest (bad percent-encoding in line %d)", p->lineno);
    const char *key = KEYS[k];
    int bad = 0;
    if (!strcmp(key, "unpacked_size")) bad = parse_num(v, vl, &m->unpacked_size);
    else if (!strcmp(key, "files")) bad = parse_num(v, vl, &m->files);
    else if (!strcmp(key, "payload_size")) bad = parse_num(v, vl, &m->payload_size);
    else if (!strcmp(key, "content_hash")) bad = parse_hash(v, vl, m->content_hash);
    else if (!strcmp(key, "kind"))
        bad = strcmp(v, "interpreter") && strcmp(v, "environment") && strcmp(v, "directory");
    else if (!strcmp(key, "libpython") || !strcmp(key, "executable") || !strcmp(key, "site_dir"))
        bad = pmb_path_problem(v, vl) != NULL;
    if (bad) {
        free(v);
        PFAIL("corrupt manifest (bad '%s' value)", key);
    }
    if (!strcmp(key, "name")) m->name = v;
    else if (!strcmp(key, "kind")) m->kind = v;
    else if (!strcmp(key, "python")) m->python = v;
    else if (!strcmp(key, "abi")) m->abi = v;
    else if (!strcmp(key, "libpython")) m->libpython = v;
    else if (!strcmp(key, "executable")) m->executable = v;
    else if (!strcmp(key, "site_dir")) m->site_dir = v;
    else free(v);
    return 0;
}

/* after the last line: ended, and the shards agree with the keys */
static int check_ended(mparse *p)
{
    pmb_manifest *m = p->m;
    if (p->phase != 3)
        PFAIL("corrupt or truncated manifest (no 'end' line)");
    if (p->off != m->payload_size)
        PFAIL("corrupt manifest (shards cover %llu bytes, payload is %llu)",
              (unsigned long long)p->off, (unsigned long long)m->payload_size);
    if (p->nfiles != m->files)
        PFAIL("corrupt manifest (shards hold %llu files, manifest says %llu)",
              (unsigned long long)p->nfiles, (unsigned long long)m->files);
    if (m->unpacked_size > p->usum)
        PFAIL("corrupt manifest (unpacked_size larger than the shards)");
    pmb_shard *tail = &m->shards[m->nshards - 1];
    if (tail->usize != 1024 || tail->nfiles != 0)
        PFAIL("corrupt manifest (last shard is not the archive end)");
    /* the content hash is the SHA-256 of the shards' digests: a known
     * content_hash cannot come with other shard lines */
    pmb_sha256_ctx h;
    unsigned char sum[32];
    pmb_sha256_init(&h);
    for (int i = 0; i < m->nshards; i++)
        pmb_sha256_update(&h, m->shards[i].sha, 32);
    pmb_sha256_final(&h, sum);
    if (memcmp(sum, m->content_hash, 32))
        PFAIL("corrupt manifest (content_hash does not match the shard lines)");
    return 0;
}

static void key_bytes(pmb_sha256_ctx *h, const char *s, size_t n)
{
    unsigned char len[8];
    for (int i = 0; i < 8; i++)
        len[i] = (unsigned char)((uint64_t)n >> (8 * i));
    pmb_sha256_update(h, len, 8);
    pmb_sha256_update(h, s, n);
}

/* The layer's tree key: SHA-256 of everything in the manifest that shapes
 * the tree it unpacks to: the content hash (every frame's bytes, checked
 * while unpacking), the kind and every prefix line (which files get the
 * tree's path, in place of what); each field with its length.  Not the
 * name, sources, created_by or other fields that leave the tree alike, so
 * identical packages made apart share a tree. */
static void tree_key(pmb_manifest *m)
{
    static const char tag[] = "python-mpi-bcast tree key 1";
    pmb_sha256_ctx h;
    pmb_sha256_init(&h);
    key_bytes(&h, tag, sizeof tag - 1);
    key_bytes(&h, (const char *)m->content_hash, 32);
    key_bytes(&h, m->kind, strlen(m->kind));
    for (int i = 0; i < m->nprefix; i++) {
        key_bytes(&h, m->prefix[i].binary ? "binary" : "text", m->prefix[i].binary ? 6 : 4);
        key_bytes(&h, m->prefix[i].path, strlen(m->prefix[i].path));
        key_bytes(&h, m->prefix[i].placeholder, strlen(m->prefix[i].placeholder));
    }
    pmb_sha256_final(&h, m->tree_key);
}

/* one line: the header first, then keys, shards, prefixes, end */
static int parse_line(mparse *p, const char *line, size_t ll)
{
    if (p->phase == 3)
        PFAIL("corrupt manifest (text after 'end')");
    if (!ll)
        PFAIL("corrupt manifest (empty line %d)", p->lineno);
    if (split_line(p, line, ll))
        return -1;
    if (p->lineno == 1)
        return header_line(p);
    if (IS(0, "shards"))
        return shards_line(p);
    if (IS(0, "shard"))
        return shard_line(p);
    if (IS(0, "prefix"))
        return prefix_line(p);
    if (IS(0, "part"))
        return part_line(p);
    if (IS(0, "end")) {
        if (p->phase != 2 || p->nf != 1)
            PFAIL("corrupt manifest (misplaced 'end')");
        p->phase = 3;
        return 0;
    }
    return key_line(p);
}
#undef IS
#undef PFAIL

/* Parse manifest text (a copy is kept in m->text).  0 or -1 with err set. */
int pmb_manifest_parse(pmb_manifest *m, const char *text, size_t len, char *err, size_t errlen)
{
    char *file = m->file;
    memset(m, 0, sizeof *m);
    m->file = file;
    m->text = pmb_xmalloc(len + 1);
    memcpy(m->text, text, len);
    m->text[len] = 0;
    m->text_len = len;
    mparse p = {.m = m, .err = err, .errlen = errlen};
    if (check_text(&p, text, len))
        return -1;
    size_t pos = 0;
    while (pos < len) {
        const char *line = text + pos;
        size_t ll = (size_t)((const char *)memchr(line, '\n', len - pos) - line);
        pos += ll + 1;
        p.lineno++;
        if (parse_line(&p, line, ll))
            return -1;
    }
    if (check_ended(&p) || check_parts(&p))
        return -1;
    tree_key(m);
    return 0;
}

/* The manifest frame's body: one checksummed zstd frame holding the text,
 * then zero or more 0x00 bytes of padding. */
char *pmb_manifest_decode(const unsigned char *body, size_t size, size_t *text_len,
                          char *err, size_t errlen)
{
    static const char v1[] = "python-mpi-bcast-package ";
    if (size >= sizeof v1 - 1 && !memcmp(body, v1, sizeof v1 - 1)) {
        size_t n = sizeof v1 - 1;
        while (n < size && n < sizeof v1 + 8 && body[n] >= '0' && body[n] <= '9')
            n++;
        snprintf(err, errlen, "package format version %.*s is not supported (this python-mpi "
                 "reads versions 2 and 3); re-pack it with python-mpi-bcast pack",
                 (int)(n - (sizeof v1 - 1)), (const char *)body + sizeof v1 - 1);
        return NULL;
    }
    if (size < 5 || body[0] != 0x28 || body[1] != 0xb5 || body[2] != 0x2f || body[3] != 0xfd) {
        snprintf(err, errlen, "corrupt manifest (not a zstd frame)");
        return NULL;
    }
    if (!(body[4] & 0x04)) {
        snprintf(err, errlen, "corrupt manifest (its frame has no checksum)");
        return NULL;
    }
    /* one frame, then padding: nothing but 0x00 bytes (room the packer
     * reserved before it knew the manifest; format.py states the rule) */
    size_t fsz = ZSTD_findFrameCompressedSize(body, size);
    int padded_with_zeros = !ZSTD_isError(fsz) && fsz <= size;
    for (size_t i = fsz; padded_with_zeros && i < size; i++)
        padded_with_zeros = body[i] == 0;
    if (!padded_with_zeros) {
        snprintf(err, errlen, "corrupt manifest (not exactly one zstd frame)");
        return NULL;
    }
    size = fsz;
    unsigned long long csz = ZSTD_getFrameContentSize(body, size);
    if (csz == ZSTD_CONTENTSIZE_UNKNOWN || csz == ZSTD_CONTENTSIZE_ERROR || csz > PMB_MAX_MANIFEST) {
        snprintf(err, errlen, "corrupt manifest (bad size)");
        return NULL;
    }
    char *text = pmb_xmalloc((size_t)csz + 1);
    size_t r = ZSTD_decompress(text, (size_t)csz, body, size);
    if (ZSTD_isError(r) || r != csz) {
        snprintf(err, errlen, "corrupt manifest (zstd: %s)",
                 ZSTD_isError(r) ? ZSTD_getErrorName(r) : "wrong size");
        free(text);
        return NULL;
    }
    text[csz] = 0;
    *text_len = (size_t)csz;
    return text;
}

/* A package could not be opened in PYTHON_MPI_PKGROOT: if the root itself
 * is missing or no directory, say so (with its absolute path, a relative one
 * depends on where the job started) instead of "package not found in pkgs".
 * Only on failure: a job that starts makes no extra call on the root. */
static void check_pkgroot(const char *root)
{
    char abs[PATH_MAX], cwd[PATH_MAX];
    if (root[0] == '/' || !getcwd(cwd, sizeof cwd))
        snprintf(abs, sizeof abs, "%s", root);
    else
        snprintf(abs, sizeof abs, "%s/%s", cwd, root);
    struct stat st;
    if (stat(root, &st))
        pmb_die("PYTHON_MPI_PKGROOT=%s: %s: %s; set it to the directory that holds your packages",
                root, abs, errno == ENOENT ? "no such directory" : strerror(errno));
    if (!S_ISDIR(st.st_mode))
        pmb_die("PYTHON_MPI_PKGROOT=%s: %s is not a directory; set it to the directory that "
                "holds your packages", root, abs);
}

/* Open a package (DIR/FILE, or FILE alone when dir is NULL), read and parse
 * its manifest, check the file's size; leave the file open (in *fd_out). */
void pmb_manifest_read_file(pmb_manifest *m, const char *dir, const char *file, int *fd_out)
{
    char path[PATH_MAX];
    if (dir)
        snprintf(path, sizeof path, "%s/%s", dir, file);
    else
        snprintf(path, sizeof path, "%s", file);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int err = errno;
        if (dir && (err == ENOENT || err == ENOTDIR))
            check_pkgroot(dir);
        errno = err;
        if (errno == ENOENT && dir)
            pmb_die("package '%s' not found in %s", file, dir);
        if (errno == ENOENT)
            pmb_die("package '%s' not found", file);
        if (errno == EACCES)
            pmb_die("package '%s' is not readable (permission denied)", path);
        pmb_die("package '%s': cannot open %s: %s", file, path, strerror(errno));
    }
    struct stat st;
    if (fstat(fd, &st) || !S_ISREG(st.st_mode))
        pmb_die("package '%s': %s is not a regular file", file, path);
    unsigned char head[8];
    size_t r = pmb_read_full(fd, head, 8);
    if (r < 8 && errno)
        pmb_die("package '%s': cannot read %s: %s", file, path, strerror(errno));
    uint32_t magic = (uint32_t)head[0] | (uint32_t)head[1] << 8 | (uint32_t)head[2] << 16 | (uint32_t)head[3] << 24;
    uint32_t size = (uint32_t)head[4] | (uint32_t)head[5] << 8 | (uint32_t)head[6] << 16 | (uint32_t)head[7] << 24;
    if (r < 8 || magic != PMB_SKIPPABLE_MAGIC)
        pmb_die("package '%s' is not a python-mpi-bcast package (no manifest; make packages "
                "with 'python-mpi-bcast pack')", file);
    if (size > PMB_MAX_MANIFEST)
        pmb_die("package '%s' is corrupt (manifest of %u bytes)", file, size);
    unsigned char *body = pmb_xmalloc(size + 1);
    if (pmb_read_full(fd, body, size) != size)
        pmb_die("package '%s' is truncated (manifest cut short)", file);
    char err[512];
    size_t tlen = 0;
    char *text = pmb_manifest_decode(body, size, &tlen, err, sizeof err);
    free(body);
    if (!text)
        pmb_die("package '%s': %s", file, err);
    m->file = (char *)file;
    if (pmb_manifest_parse(m, text, tlen, err, sizeof err))
        pmb_die("package '%s': %s", file, err);
    free(text);
    m->payload_start = 8 + (uint64_t)size;
    if ((uint64_t)st.st_size != m->payload_start + m->payload_size)
        pmb_die("package '%s' is truncated or damaged: expected %llu bytes, the file has %llu; "
                "copy or pack it again", file,
                (unsigned long long)(m->payload_start + m->payload_size), (unsigned long long)st.st_size);
    *fd_out = fd;
}
