/* libzstd without its headers: load libzstd.so.1 at run time and forward
 * the stable API declared in zstd-shim/zstd.h to it.  Built only when CMake
 * finds no usable zstd.h (or PMB_ZSTD=dlopen). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <link.h>
#include <stdio.h>

#include "zstd.h"
#include "../pmb.h"

#define PMB_ZSTD_SONAME "libzstd.so.1"
#define PMB_ZSTD_MIN_VERSION 10400 /* 1.4.0: ZSTD_DCtx_reset and findFrameCompressedSize are stable */
#define PMB_ZSTD_INSTALL "install the zstd runtime library: package libzstd1 (Debian, Ubuntu) or " \
                         "libzstd (RHEL, Fedora, SUSE), or 'module load zstd'"

static struct {
#define PMB_ZSTD_POINTER(ret, name, params, args) ret(*name) params;
    PMB_ZSTD_API(PMB_ZSTD_POINTER)
#undef PMB_ZSTD_POINTER
} pmb_zstd_fn;
static void *pmb_zstd_lib;
static char pmb_zstd_path[512];

void pmb_zstd_require(void)
{
    if (pmb_zstd_lib)
        return;
    void *lib = dlopen(PMB_ZSTD_SONAME, RTLD_NOW | RTLD_LOCAL);
    if (!lib)
        pmb_die("cannot load %s (%s); %s", PMB_ZSTD_SONAME, dlerror(), PMB_ZSTD_INSTALL);
    struct link_map *map = NULL;
    if (dlinfo(lib, RTLD_DI_LINKMAP, &map) == 0 && map && map->l_name)
        snprintf(pmb_zstd_path, sizeof pmb_zstd_path, "%s", map->l_name);
    else
        snprintf(pmb_zstd_path, sizeof pmb_zstd_path, "%s", PMB_ZSTD_SONAME);
    /* dlsym returns void *; POSIX guarantees it converts to a function pointer */
#define PMB_ZSTD_RESOLVE(ret, name, params, args)                                              \
    *(void **)&pmb_zstd_fn.name = dlsym(lib, "ZSTD_" #name);                                    \
    if (!pmb_zstd_fn.name)                                                                      \
        pmb_die("%s has no ZSTD_" #name " (libzstd older than 1.4.0?); %s", pmb_zstd_path,      \
                PMB_ZSTD_INSTALL);
    PMB_ZSTD_API(PMB_ZSTD_RESOLVE)
#undef PMB_ZSTD_RESOLVE
    unsigned v = pmb_zstd_fn.versionNumber();
    if (v < PMB_ZSTD_MIN_VERSION)
        pmb_die("%s is libzstd %u.%u.%u; 1.4.0 or newer is needed: %s", pmb_zstd_path, v / 10000,
                v / 100 % 100, v % 100, PMB_ZSTD_INSTALL);
    pmb_zstd_lib = lib;
}

const char *pmb_zstd_describe(void)
{
    pmb_zstd_require();
    return pmb_zstd_path;
}

#define PMB_ZSTD_FORWARD(ret, name, params, args)                                               \
    ret pmb_zstd_##name params                                                                  \
    {                                                                                           \
        if (!pmb_zstd_lib)                                                                      \
            pmb_zstd_require();                                                                 \
        return pmb_zstd_fn.name args;                                                           \
    }
PMB_ZSTD_API(PMB_ZSTD_FORWARD)
#undef PMB_ZSTD_FORWARD
