/* Test preload for exec mode's two lives (tests/launcher/test_exec_lives.py): loaded
 * through the user's LD_PRELOAD by mpiexec, the launcher (first life) and the
 * staged interpreter (second life), it acts in one of them only.
 *
 * PMB_TEST_SECOND_LIFE_ENV=KEY=VALUE: the staged interpreter, and only it,
 *   gets KEY=VALUE before its MPI starts again (it is the process the
 *   launcher handed PYTHON_MPI_EXEC_SHIM to): an invalid MPI setting
 *   there fails the second MPI_Init while the launcher's went well.
 * PMB_TEST_SLOW_FINALIZE_RANK=R: in the launcher of rank R (PMIX_RANK),
 *   PMIx_Finalize starts 3 s late, so the node's other ranks reach their
 *   second MPI_Init while that rank's first life is still connected. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <limits.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int in_launcher(void)
{
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n < 0)
        return 0;
    exe[n] = 0;
    const char *base = strrchr(exe, '/');
    return strcmp(base ? base + 1 : exe, "python-mpi") == 0;
}

__attribute__((constructor)) static void second_life_env(void)
{
    const char *v = getenv("PMB_TEST_SECOND_LIFE_ENV");
    if (!v || !getenv("PYTHON_MPI_EXEC_SHIM") || in_launcher())
        return;
    char *kv = strdup(v), *eq = kv ? strchr(kv, '=') : NULL;
    if (eq) {
        *eq = 0;
        setenv(kv, eq + 1, 1);
    }
}

int PMIx_Finalize(const void *info, size_t ninfo)
{
    int (*real)(const void *, size_t) = (int (*)(const void *, size_t))dlsym(RTLD_NEXT,
                                                                             "PMIx_Finalize");
    const char *rank = getenv("PMIX_RANK"), *slow = getenv("PMB_TEST_SLOW_FINALIZE_RANK");
    if (rank && slow && !strcmp(rank, slow) && in_launcher())
        sleep(3);
    return real ? real(info, ninfo) : 0;
}
