/* Exercise every libzstd function the launcher may call (the API of
 * launcher/zstd-shim/zstd.h) on the frames of one file and print what each
 * returns.  Built once against the system's zstd.h and -lzstd and once
 * against the shim (dlopen); tests/launcher/test_zstd_shim.py compares the outputs.
 * usage: zstd_api_check FILE */
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zstd.h>

/* the shim reports a missing library through the launcher's pmb_die */
void pmb_die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("python-mpi: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(3);
}

static uint64_t fnv(const unsigned char *p, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 1099511628211ull;
    return h;
}

static void result(const char *what, size_t r)
{
    if (ZSTD_isError(r))
        printf("%s: error %s\n", what, ZSTD_getErrorName(r));
    else
        printf("%s: %zu\n", what, r);
}

/* streaming decode of [src, src+n) in pieces of `step` bytes */
static void stream(ZSTD_DStream *zs, const unsigned char *src, size_t n, size_t step)
{
    size_t outcap = ZSTD_DStreamOutSize(), total = 0, r = 0;
    unsigned char *out = malloc(outcap);
    uint64_t h = 1469598103934665603ull;
    if (!out)
        exit(2);
    result("  initDStream", ZSTD_initDStream(zs));
    for (size_t off = 0; off < n; off += step) {
        ZSTD_inBuffer in = {src + off, n - off < step ? n - off : step, 0};
        while (in.pos < in.size) {
            ZSTD_outBuffer o = {out, outcap, 0};
            r = ZSTD_decompressStream(zs, &o, &in);
            if (ZSTD_isError(r)) {
                result("  decompressStream", r);
                free(out);
                return;
            }
            for (size_t i = 0; i < o.pos; i++)
                h = (h ^ out[i]) * 1099511628211ull;
            total += o.pos;
        }
    }
    printf("  stream: %zu bytes, hash %016llx, last return %zu\n", total, (unsigned long long)h, r);
    free(out);
}

int main(int argc, char **argv)
{
    if (argc != 2)
        return 2;
    FILE *f = fopen(argv[1], "rb");
    if (!f)
        return 2;
    unsigned char *data = malloc(64u << 20);
    if (!data)
        return 2;
    size_t n = fread(data, 1, 64u << 20, f);
    if (ferror(f) || fclose(f))
        return 2;
    unsigned v = ZSTD_versionNumber();
    printf("version %u (>= 10400: %d)\n", v, v >= 10400);
    printf("DStreamInSize %zu DStreamOutSize %zu\n", ZSTD_DStreamInSize(), ZSTD_DStreamOutSize());
    ZSTD_DCtx *dc = ZSTD_createDCtx();
    ZSTD_DStream *zs = ZSTD_createDStream();
    if (!dc || !zs)
        return 2;
    size_t off = 0;
    for (int i = 0; off < n; i++) {
        const unsigned char *p = data + off;
        unsigned long long cs = ZSTD_getFrameContentSize(p, n - off);
        size_t fs = ZSTD_findFrameCompressedSize(p, n - off);
        printf("frame %d at %zu: content size %s%llu\n", i, off,
               cs == ZSTD_CONTENTSIZE_UNKNOWN ? "unknown " : cs == ZSTD_CONTENTSIZE_ERROR ? "error " : "",
               cs);
        result("  compressed size", fs);
        if (ZSTD_isError(fs))
            break;
        uint32_t magic = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
        if ((magic & ZSTD_MAGIC_SKIPPABLE_MASK) == ZSTD_MAGIC_SKIPPABLE_START) {
            printf("  skippable\n");
            off += fs;
            continue;
        }
        printf("  zstd frame: %d\n", magic == ZSTD_MAGICNUMBER);
        size_t cap = cs < ZSTD_CONTENTSIZE_ERROR ? (size_t)cs : (size_t)8 << 20;
        unsigned char *out = malloc(cap + 1);
        if (!out)
            return 2;
        size_t r = ZSTD_decompress(out, cap, p, fs);
        result("  decompress", r);
        if (!ZSTD_isError(r))
            printf("  hash %016llx\n", (unsigned long long)fnv(out, r));
        result("  DCtx_reset", ZSTD_DCtx_reset(dc, ZSTD_reset_session_and_parameters));
        r = ZSTD_decompressDCtx(dc, out, cap, p, fs);
        result("  decompressDCtx", r);
        if (!ZSTD_isError(r))
            printf("  hash %016llx\n", (unsigned long long)fnv(out, r));
        if (cap > 1) /* too small a buffer */
            result("  decompress into cap-1", ZSTD_decompress(out, cap - 1, p, fs));
        free(out);
        stream(zs, p, fs, 1000);
        stream(zs, p, fs, fs);
        off += fs;
    }
    /* damaged input: a frame with a byte flipped past its header */
    unsigned char *bad = malloc(n);
    if (!bad)
        return 2;
    memcpy(bad, data, n);
    for (size_t i = 20; i < n; i += 97)
        bad[i] ^= 0x5a;
    result("corrupt findFrameCompressedSize", ZSTD_findFrameCompressedSize(bad, n));
    printf("corrupt content size %llu\n", ZSTD_getFrameContentSize("xx", 2));
    result("truncated findFrameCompressedSize", ZSTD_findFrameCompressedSize(data, 5));
    result("DCtx_reset session", ZSTD_DCtx_reset(dc, ZSTD_reset_session_only));
    result("DCtx_reset parameters", ZSTD_DCtx_reset(dc, ZSTD_reset_parameters));
    stream(zs, bad, n, 4096);
    result("freeDCtx", ZSTD_freeDCtx(dc));
    result("freeDStream", ZSTD_freeDStream(zs));
    result("freeDStream NULL", ZSTD_freeDStream(NULL));
    result("freeDCtx NULL", ZSTD_freeDCtx(NULL));
    printf("isError(0) %u isError(-1) %u\n", ZSTD_isError(0), ZSTD_isError((size_t)-1));
    free(bad);
    free(data);
    return 0;
}
