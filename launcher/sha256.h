/* sha256.c: SHA-256 (FIPS 180-4), with the x86 SHA extensions when the CPU
 * has them, chosen at run time */
#ifndef PMB_SHA256_H
#define PMB_SHA256_H
#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint32_t h[8];
    uint64_t len;           /* bytes hashed so far */
    unsigned char buf[64];  /* a block not yet complete */
    size_t have;
} pmb_sha256_ctx;

void pmb_sha256_init(pmb_sha256_ctx *s);
void pmb_sha256_update(pmb_sha256_ctx *s, const void *data, size_t n);
void pmb_sha256_final(pmb_sha256_ctx *s, unsigned char out[32]);
void pmb_sha256(const void *data, size_t n, unsigned char out[32]);
/* the block function in use: "sha-ni" or "portable" */
const char *pmb_sha256_impl(void);
/* tests: use this one ("sha-ni", "portable"); -1 if this CPU or build lacks it */
int pmb_sha256_select(const char *impl);

#endif
