/* The part of libzstd's stable API (zstd.h, v1.4.0 and newer) the launcher
 * uses, for building without libzstd's headers.  CMake puts this directory
 * on the include path only when the system has no usable zstd.h; then
 * launcher/zstd_shim.c loads libzstd.so.1 with dlopen at run time.
 *
 * Declarations are copied from zstd.h (BSD licence, Meta Platforms, Inc.);
 * the functions are macros for pmb_zstd_* wrappers, so the launcher's own
 * symbols keep the pmb_ prefix and never interpose on a real libzstd that
 * something else in the process (an extension module) has loaded. */
#ifndef PMB_ZSTD_SHIM_H
#define PMB_ZSTD_SHIM_H

#include <stddef.h>

#define ZSTD_MAGICNUMBER            0xFD2FB528
#define ZSTD_MAGIC_SKIPPABLE_START  0x184D2A50
#define ZSTD_MAGIC_SKIPPABLE_MASK   0xFFFFFFF0
#define ZSTD_CONTENTSIZE_UNKNOWN    (0ULL - 1)
#define ZSTD_CONTENTSIZE_ERROR      (0ULL - 2)

typedef struct ZSTD_DCtx_s ZSTD_DCtx;
typedef ZSTD_DCtx ZSTD_DStream;

typedef enum {
    ZSTD_reset_session_only = 1,
    ZSTD_reset_parameters = 2,
    ZSTD_reset_session_and_parameters = 3
} ZSTD_ResetDirective;

typedef struct ZSTD_inBuffer_s {
    const void *src;
    size_t size;
    size_t pos;
} ZSTD_inBuffer;

typedef struct ZSTD_outBuffer_s {
    void *dst;
    size_t size;
    size_t pos;
} ZSTD_outBuffer;

/* X(return type, name, parameters, arguments): the whole API of the shim */
#define PMB_ZSTD_API(X)                                                                      \
    X(unsigned, versionNumber, (void), ())                                                   \
    X(unsigned, isError, (size_t code), (code))                                              \
    X(const char *, getErrorName, (size_t code), (code))                                     \
    X(unsigned long long, getFrameContentSize, (const void *src, size_t srcSize), (src, srcSize)) \
    X(size_t, findFrameCompressedSize, (const void *src, size_t srcSize), (src, srcSize))    \
    X(size_t, decompress, (void *dst, size_t dstCapacity, const void *src, size_t srcSize),  \
      (dst, dstCapacity, src, srcSize))                                                      \
    X(ZSTD_DCtx *, createDCtx, (void), ())                                                   \
    X(size_t, freeDCtx, (ZSTD_DCtx *dctx), (dctx))                                           \
    X(size_t, decompressDCtx,                                                                \
      (ZSTD_DCtx *dctx, void *dst, size_t dstCapacity, const void *src, size_t srcSize),     \
      (dctx, dst, dstCapacity, src, srcSize))                                                \
    X(size_t, DCtx_reset, (ZSTD_DCtx *dctx, ZSTD_ResetDirective reset), (dctx, reset))       \
    X(ZSTD_DStream *, createDStream, (void), ())                                             \
    X(size_t, freeDStream, (ZSTD_DStream *zds), (zds))                                       \
    X(size_t, initDStream, (ZSTD_DStream *zds), (zds))                                       \
    X(size_t, decompressStream, (ZSTD_DStream *zds, ZSTD_outBuffer *output, ZSTD_inBuffer *input), \
      (zds, output, input))                                                                  \
    X(size_t, DStreamInSize, (void), ())                                                     \
    X(size_t, DStreamOutSize, (void), ())

#define PMB_ZSTD_DECLARE(ret, name, params, args) ret pmb_zstd_##name params;
PMB_ZSTD_API(PMB_ZSTD_DECLARE)
#undef PMB_ZSTD_DECLARE

#define ZSTD_versionNumber pmb_zstd_versionNumber
#define ZSTD_isError pmb_zstd_isError
#define ZSTD_getErrorName pmb_zstd_getErrorName
#define ZSTD_getFrameContentSize pmb_zstd_getFrameContentSize
#define ZSTD_findFrameCompressedSize pmb_zstd_findFrameCompressedSize
#define ZSTD_decompress pmb_zstd_decompress
#define ZSTD_createDCtx pmb_zstd_createDCtx
#define ZSTD_freeDCtx pmb_zstd_freeDCtx
#define ZSTD_decompressDCtx pmb_zstd_decompressDCtx
#define ZSTD_DCtx_reset pmb_zstd_DCtx_reset
#define ZSTD_createDStream pmb_zstd_createDStream
#define ZSTD_freeDStream pmb_zstd_freeDStream
#define ZSTD_initDStream pmb_zstd_initDStream
#define ZSTD_decompressStream pmb_zstd_decompressStream
#define ZSTD_DStreamInSize pmb_zstd_DStreamInSize
#define ZSTD_DStreamOutSize pmb_zstd_DStreamOutSize

/* Load libzstd.so.1 now; on failure report it (pmb_die: one line naming the
 * package to install).  Each wrapper also loads on first use. */
void pmb_zstd_require(void);
/* "dlopen libzstd.so.1 1.5.4" once loaded */
const char *pmb_zstd_describe(void);

#endif
