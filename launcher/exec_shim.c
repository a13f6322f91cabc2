/* Exec mode's half in the staged interpreter: a small shared object the
 * launcher embeds, hands to the exec'd interpreter in a memfd through
 * LD_PRELOAD, and that makes that process a rank for its whole life:
 *
 *   - before Python starts it initialises MPI again (the launcher finalised
 *     it before execv; MPICH >= 5 and Open MPI >= 5 allow that);
 *   - own.c's MPI_Init/MPI_Finalize/... come first in the symbol lookup, so
 *     the program (mpi4py) sees MPI as under `python`;
 *   - own.c's exit policy ends it: status 0 -> MPI_Finalize (every rank stays
 *     in the job until its program ends: the process manager never sees a
 *     rank leave without finalising), anything else -> MPI_Abort.
 *
 * It removes itself from LD_PRELOAD at once (children never load it) and
 * does nothing when loaded by anything but python-mpi (no
 * PYTHON_MPI_EXEC_SHIM). */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dlfcn.h>
#include <spawn.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <mpi.h>

#include "own.h"

/* PYTHON_MPI_CLEANUP=1: status 0, before MPI_Finalize, every rank of the
 * node lets go of its hold on the tree (the descriptor the launcher kept
 * open across execv, PYTHON_MPI_EXEC_HOLD), then the node's first rank has
 * the launcher remove the tree unless another job step still holds it
 * (`python-mpi --pmb-cleanup-tree TREE RANK`: the rule of launcher/nodes.c,
 * in one place), as start.c does in embed mode.  The launcher hands the tree
 * over in PYTHON_MPI_EXEC_CLEANUP and itself in PYTHON_MPI_EXEC_LAUNCHER. */
static char *cleanup_tree, *cleanup_launcher;
static int cleanup_hold = -1;

extern char **environ;

static void clean_exit(void)
{
    MPI_Comm node;
    int node_rank = 0, rank = 0;
    if (cleanup_hold >= 0)
        close(cleanup_hold);
    if (PMPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node) !=
        MPI_SUCCESS)
        return;
    PMPI_Comm_rank(node, &node_rank);
    PMPI_Comm_rank(MPI_COMM_WORLD, &rank);
    PMPI_Barrier(node);
    if (node_rank == 0 && cleanup_launcher) {
        char rs[32];
        snprintf(rs, sizeof rs, "%d", rank);
        char *args[] = {cleanup_launcher, "--pmb-cleanup-tree", cleanup_tree, rs, NULL};
        pid_t pid;
        int st;
        if (posix_spawn(&pid, cleanup_launcher, NULL, NULL, args, environ) == 0)
            waitpid(pid, &st, 0);
        else
            fprintf(stderr, "python-mpi: rank %d: cannot start %s to remove %s\n", rank,
                    cleanup_launcher, cleanup_tree);
    }
    PMPI_Comm_free(&node);
}

/* MPI_Init of the second life failed: one line that says so, naming the
 * rank (the launcher's, PYTHON_MPI_EXEC_RANK) and the MPI's error if it
 * returned one; returns the exit status */
static int init_pending;
static char init_rank[32] = "?";

static int init_failed_line(int rc)
{
    char host[256] = "?", err[MPI_MAX_ERROR_STRING] = "";
    int len = 0;
    gethostname(host, sizeof host - 1);
    host[strcspn(host, ".")] = 0;
    if (rc != MPI_SUCCESS && PMPI_Error_string(rc, err, &len) != MPI_SUCCESS)
        err[0] = 0;
    fprintf(stderr, "python-mpi: %s (rank %s): the staged interpreter could not initialise MPI "
                    "again (PYTHON_MPI_MODE=exec)%s%s; the default embed mode starts MPI once\n",
            host, init_rank, err[0] ? ": " : "", err);
    fflush(stderr);
    init_pending = 0;
    return 1;
}

static void init_failed(int status, void *arg)
{
    (void)status;
    (void)arg;
    if (init_pending)
        init_failed_line(MPI_SUCCESS);
}

/* Open MPI 5 and MPICH 5 end a process whose MPI_Init failed themselves,
 * after their own message and after telling the process manager (which
 * then ends the job): Open MPI with _exit(), MPICH with exit().  The shim
 * comes first in the symbol lookup, so its _exit and exit say the line
 * first: exit before any exit handler runs (a handler an MPI or a library
 * under it registered during MPI_Init may let go of the process manager's
 * connection, and the process manager then kills the rank before a later
 * handler could speak; the on_exit handler init_failed stays for an exit
 * that does not come through here).  Outside the shim's MPI_Init: glibc's
 * functions as they are. */
static void (*real_exit)(int);  /* looked up before MPI starts threads (forked children call _exit) */
static void (*real_exit3)(int); /* exit(3) */

void _exit(int status)
{
    if (init_pending)
        init_failed_line(MPI_SUCCESS);
    if (real_exit)
        real_exit(status);
    syscall(SYS_exit_group, status);
    for (;;)
        ;
}

void exit(int status)
{
    if (init_pending)
        init_failed_line(MPI_SUCCESS);
    void (*fn)(int) = real_exit3;
    if (!fn) /* a process the shim is not active in: looked up on its first exit */
        fn = (void (*)(int))dlsym(RTLD_NEXT, "exit");
    if (fn)
        fn(status);
    syscall(SYS_exit_group, status);
    for (;;)
        ;
}

static void shim_start(void)
{
    const char *fdv = getenv("PYTHON_MPI_EXEC_SHIM");
    if (!fdv)
        return;
    int fd = atoi(fdv);
    /* LD_PRELOAD as the user had it (PYTHON_MPI_EXEC_PRELOAD holds it, with
     * a leading '=' when it was set: "=" alone is an empty one) */
    const char *saved = getenv("PYTHON_MPI_EXEC_PRELOAD");
    if (saved && saved[0] == '=')
        setenv("LD_PRELOAD", saved + 1, 1);
    else
        unsetenv("LD_PRELOAD");
    unsetenv("PYTHON_MPI_EXEC_PRELOAD");
    unsetenv("PYTHON_MPI_EXEC_SHIM");
    const char *tree = getenv("PYTHON_MPI_EXEC_CLEANUP");
    const char *launcher = getenv("PYTHON_MPI_EXEC_LAUNCHER");
    const char *hold = getenv("PYTHON_MPI_EXEC_HOLD");
    if (tree && *tree && launcher && *launcher) {
        cleanup_tree = strdup(tree);
        cleanup_launcher = strdup(launcher);
        cleanup_hold = hold && *hold ? atoi(hold) : -1;
    }
    unsetenv("PYTHON_MPI_EXEC_CLEANUP");
    unsetenv("PYTHON_MPI_EXEC_LAUNCHER");
    unsetenv("PYTHON_MPI_EXEC_HOLD");
    if (fd > 2)
        close(fd); /* the loader has mapped it */
    const char *r = getenv("PYTHON_MPI_EXEC_RANK");
    snprintf(init_rank, sizeof init_rank, "%s", r && *r ? r : "?");
    unsetenv("PYTHON_MPI_EXEC_RANK");
    int provided = MPI_THREAD_SINGLE, rank = 0;
    /* a failing MPI_Init that ends the process: _exit, init_failed above;
     * one that returns the error: here */
    real_exit = (void (*)(int))dlsym(RTLD_NEXT, "_exit");
    real_exit3 = (void (*)(int))dlsym(RTLD_NEXT, "exit");
    init_pending = 1;
    on_exit(init_failed, NULL);
    int rc = PMPI_Init_thread(NULL, NULL, MPI_THREAD_MULTIPLE, &provided);
    if (rc != MPI_SUCCESS)
        _exit(init_failed_line(rc)); /* the process manager ends the job on it */
    init_pending = 0;
    PMPI_Comm_rank(MPI_COMM_WORLD, &rank);
    pmb_own_start(provided, rank);
    pmb_own_exit_policy(cleanup_tree ? clean_exit : NULL);
}

/* MPI starts in the interpreter's main thread once every library is
 * initialised (not in a constructor: UCX, under MPICH, then crashes in
 * MPI_Finalize): glibc's __libc_start_main, wrapped, runs main through here. */
typedef int (*main_fn)(int, char **, char **);
static main_fn real_main;

static int shim_main(int argc, char **argv, char **envp)
{
    shim_start();
    return real_main(argc, argv, envp);
}

int __libc_start_main(main_fn main, int argc, char **argv, void (*init)(void),
                      void (*fini)(void), void (*rtld_fini)(void), void *stack_end)
{
    typedef int (*start_fn)(main_fn, int, char **, void (*)(void), void (*)(void),
                            void (*)(void), void *);
    start_fn real = (start_fn)dlsym(RTLD_NEXT, "__libc_start_main");
    real_main = main;
    return real(getenv("PYTHON_MPI_EXEC_SHIM") ? shim_main : main, argc, argv, init, fini,
                rtld_fini, stack_end);
}
