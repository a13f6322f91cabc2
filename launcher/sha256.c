/* SHA-256 (FIPS 180-4): what makes a staged tree's name cover every byte
 * it holds.  The unpacker hashes each shard's compressed frame as it
 * decodes it and compares the digest with the shard's line in the manifest
 * (unpack.c); the manifest's content_hash is checked against those lines
 * (manifest.c).
 *
 * Two block functions, one chosen at first use: the x86 SHA extensions
 * (SHA-NI: Intel since Goldmont / Ice Lake, AMD since Zen; several GB/s per
 * core) when the CPU has them and the compiler can build them (CMake
 * defines PMB_HAVE_SHANI), else portable C.  pmb_sha256_select lets the
 * tests hold both to hashlib. */
#include <string.h>

#include "sha256.h"

#ifdef PMB_HAVE_SHANI
#include <cpuid.h>
#include <immintrin.h>
#endif

static const uint32_t K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

#define ROR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static uint32_t be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

/* n whole 64-byte blocks into the state */
static void blocks_portable(uint32_t st[8], const unsigned char *p, size_t n)
{
    for (; n; n--, p += 64) {
        uint32_t w[64];
        for (int i = 0; i < 16; i++)
            w[i] = be32(p + 4 * i);
        for (int i = 16; i < 64; i++) {
            uint32_t s0 = ROR(w[i - 15], 7) ^ ROR(w[i - 15], 18) ^ (w[i - 15] >> 3);
            uint32_t s1 = ROR(w[i - 2], 17) ^ ROR(w[i - 2], 19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16] + s0 + w[i - 7] + s1;
        }
        uint32_t a = st[0], b = st[1], c = st[2], d = st[3], e = st[4], f = st[5], g = st[6],
                 h = st[7];
        for (int i = 0; i < 64; i++) {
            uint32_t t1 = h + (ROR(e, 6) ^ ROR(e, 11) ^ ROR(e, 25)) + ((e & f) ^ (~e & g)) + K[i] + w[i];
            uint32_t t2 = (ROR(a, 2) ^ ROR(a, 13) ^ ROR(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
            h = g;
            g = f;
            f = e;
            e = d + t1;
            d = c;
            c = b;
            b = a;
            a = t1 + t2;
        }
        st[0] += a;
        st[1] += b;
        st[2] += c;
        st[3] += d;
        st[4] += e;
        st[5] += f;
        st[6] += g;
        st[7] += h;
    }
}

#ifdef PMB_HAVE_SHANI
/* The SHA extensions keep the state as two vectors, ABEF and CDGH; each
 * sha256rnds2 does two rounds, each sha256msg1/msg2 pair extends the
 * message schedule by four words: W[i] from W[i-4], W[i-3], W[i-2], W[i-1]. */
#define SHANI_ROUNDS(m, k) do { \
        __m128i m_ = _mm_add_epi32(m, _mm_loadu_si128((const __m128i *)&K[k])); \
        s1 = _mm_sha256rnds2_epu32(s1, s0, m_); \
        s0 = _mm_sha256rnds2_epu32(s0, s1, _mm_shuffle_epi32(m_, 0x0E)); \
    } while (0)
#define SHANI_NEXT(a, b, c, d) \
    a = _mm_sha256msg2_epu32(_mm_add_epi32(_mm_sha256msg1_epu32(a, b), _mm_alignr_epi8(d, c, 4)), d)

__attribute__((target("sha,sse4.1,ssse3")))
static void blocks_shani(uint32_t st[8], const unsigned char *p, size_t n)
{
    const __m128i swap = _mm_set_epi64x(0x0c0d0e0f08090a0bULL, 0x0405060700010203ULL);
    __m128i t = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)&st[0]), 0xB1);
    __m128i s1 = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)&st[4]), 0x1B);
    __m128i s0 = _mm_alignr_epi8(t, s1, 8);  /* ABEF */
    s1 = _mm_blend_epi16(s1, t, 0xF0);       /* CDGH */
    for (; n; n--, p += 64) {
        __m128i abef = s0, cdgh = s1;
        __m128i w0 = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + 0)), swap);
        __m128i w1 = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + 16)), swap);
        __m128i w2 = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + 32)), swap);
        __m128i w3 = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + 48)), swap);
        SHANI_ROUNDS(w0, 0);
        SHANI_ROUNDS(w1, 4);
        SHANI_ROUNDS(w2, 8);
        SHANI_ROUNDS(w3, 12);
        for (int r = 16; r < 64; r += 16) {
            SHANI_NEXT(w0, w1, w2, w3);
            SHANI_ROUNDS(w0, r);
            SHANI_NEXT(w1, w2, w3, w0);
            SHANI_ROUNDS(w1, r + 4);
            SHANI_NEXT(w2, w3, w0, w1);
            SHANI_ROUNDS(w2, r + 8);
            SHANI_NEXT(w3, w0, w1, w2);
            SHANI_ROUNDS(w3, r + 12);
        }
        s0 = _mm_add_epi32(s0, abef);
        s1 = _mm_add_epi32(s1, cdgh);
    }
    t = _mm_shuffle_epi32(s0, 0x1B);
    s1 = _mm_shuffle_epi32(s1, 0xB1);
    _mm_storeu_si128((__m128i *)&st[0], _mm_blend_epi16(t, s1, 0xF0)); /* ABCD */
    _mm_storeu_si128((__m128i *)&st[4], _mm_alignr_epi8(s1, t, 8));    /* EFGH */
}

static int cpu_has_shani(void)
{
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 19)) || !(c & (1u << 9)))
        return 0; /* SSE4.1, SSSE3 */
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d))
        return 0;
    return (b >> 29) & 1; /* SHA */
}
#endif

typedef void (*blocks_fn)(uint32_t st[8], const unsigned char *p, size_t n);
static blocks_fn chosen; /* set once (every thread would choose the same) */

static blocks_fn blocks(void)
{
    blocks_fn f = __atomic_load_n(&chosen, __ATOMIC_RELAXED);
    if (!f) {
        f = blocks_portable;
#ifdef PMB_HAVE_SHANI
        if (cpu_has_shani())
            f = blocks_shani;
#endif
        __atomic_store_n(&chosen, f, __ATOMIC_RELAXED);
    }
    return f;
}

const char *pmb_sha256_impl(void)
{
    return blocks() == blocks_portable ? "portable" : "sha-ni";
}

int pmb_sha256_select(const char *impl)
{
    if (!strcmp(impl, "portable")) {
        __atomic_store_n(&chosen, blocks_portable, __ATOMIC_RELAXED);
        return 0;
    }
#ifdef PMB_HAVE_SHANI
    if (!strcmp(impl, "sha-ni") && cpu_has_shani()) {
        __atomic_store_n(&chosen, blocks_shani, __ATOMIC_RELAXED);
        return 0;
    }
#endif
    return -1;
}

void pmb_sha256_init(pmb_sha256_ctx *s)
{
    static const uint32_t iv[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                   0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    memcpy(s->h, iv, sizeof iv);
    s->len = 0;
    s->have = 0;
}

void pmb_sha256_update(pmb_sha256_ctx *s, const void *data, size_t n)
{
    const unsigned char *p = data;
    blocks_fn f = blocks();
    s->len += n;
    if (s->have) {
        size_t take = 64 - s->have < n ? 64 - s->have : n;
        memcpy(s->buf + s->have, p, take);
        s->have += take;
        p += take;
        n -= take;
        if (s->have < 64)
            return;
        f(s->h, s->buf, 1);
        s->have = 0;
    }
    if (n >= 64) {
        f(s->h, p, n / 64);
        p += n / 64 * 64;
        n %= 64;
    }
    memcpy(s->buf, p, n);
    s->have = n;
}

void pmb_sha256_final(pmb_sha256_ctx *s, unsigned char out[32])
{
    uint64_t bits = s->len * 8;
    unsigned char pad[72] = {0x80};
    size_t padlen = (s->have < 56 ? 56 : 120) - s->have;
    for (int i = 0; i < 8; i++)
        pad[padlen + i] = (unsigned char)(bits >> (56 - 8 * i));
    pmb_sha256_update(s, pad, padlen + 8);
    for (int i = 0; i < 8; i++) {
        out[4 * i] = (unsigned char)(s->h[i] >> 24);
        out[4 * i + 1] = (unsigned char)(s->h[i] >> 16);
        out[4 * i + 2] = (unsigned char)(s->h[i] >> 8);
        out[4 * i + 3] = (unsigned char)s->h[i];
    }
}

void pmb_sha256(const void *data, size_t n, unsigned char out[32])
{
    pmb_sha256_ctx s;
    pmb_sha256_init(&s);
    pmb_sha256_update(&s, data, n);
    pmb_sha256_final(&s, out);
}
