/* Who owns MPI's life in a rank: the launcher, never the program.
 *
 * MPI is initialised before the program starts (by the launcher in embed
 * mode, by the preloaded exec_shim.c in the staged interpreter in exec
 * mode) and ended after it, by one exit policy (as mpi4py's own
 * python-mpi): exit status 0 -> MPI_Finalize; anything else -> MPI_Abort,
 * so one failing rank ends the job instead of hanging it.  sys.exit() calls
 * C exit() from inside Python, so the policy is an on_exit handler.
 *
 * The program still sees MPI as under `python`: the MPI_Init,
 * MPI_Init_thread, MPI_Initialized, MPI_Finalized, MPI_Finalize and
 * MPI_Query_thread defined here come first in the process's symbol lookup
 * (embed: exported by the executable, see launcher/exports.list; exec: a
 * preloaded object), so mpi4py's extension binds to them, not to libmpi's.
 * Until the program initialises MPI it is "not initialised"; its
 * MPI_Init_thread succeeds once (the thread level it gets is the lower of
 * what it asked for and what MPI gave the launcher); its MPI_Finalize marks
 * MPI finalised for it while the real one waits for the exit policy (so a
 * rank that finalises early still holds its place in the job, and the
 * node's clean-up can still use MPI).  Calls outside that order reach libmpi
 * (PMPI_*), which reports them as it would under `python`.
 * The launcher itself calls PMPI_* only. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include <mpi.h>

#include "own.h"

static struct {
    int owned;               /* MPI initialised by the launcher, not yet ended by it */
    int user_init, user_fin; /* what the program did, as it sees it */
    int level, user_level;   /* thread level MPI gave / the program got */
    int rank;
    void (*clean_exit)(void); /* before MPI_Finalize on status 0 (node clean-up) */
} own;

void pmb_own_start(int provided, int rank)
{
    own.owned = 1;
    own.level = provided;
    own.rank = rank;
}

int MPI_Init_thread(int *argc, char ***argv, int required, int *provided)
{
    if (!own.owned || own.user_init || own.user_fin)
        return PMPI_Init_thread(argc, argv, required, provided);
    own.user_init = 1;
    own.user_level = required < own.level ? required : own.level;
    if (provided)
        *provided = own.user_level;
    return MPI_SUCCESS;
}

int MPI_Init(int *argc, char ***argv)
{
    if (!own.owned || own.user_init || own.user_fin)
        return PMPI_Init(argc, argv);
    int provided;
    return MPI_Init_thread(argc, argv, MPI_THREAD_SINGLE, &provided);
}

int MPI_Initialized(int *flag)
{
    if (!own.owned)
        return PMPI_Initialized(flag);
    *flag = own.user_init;
    return MPI_SUCCESS;
}

int MPI_Finalized(int *flag)
{
    if (!own.owned)
        return PMPI_Finalized(flag);
    *flag = own.user_fin;
    return MPI_SUCCESS;
}

int MPI_Finalize(void)
{
    if (!own.owned || !own.user_init || own.user_fin)
        return PMPI_Finalize();
    own.user_fin = 1;
    return MPI_SUCCESS;
}

int MPI_Query_thread(int *provided)
{
    if (!own.owned || !own.user_init)
        return PMPI_Query_thread(provided);
    *provided = own.user_level;
    return MPI_SUCCESS;
}

/* Give the process manager a moment to forward what this rank just wrote
 * to stderr: hydra drops pending output of a process that calls MPI_Abort. */
static void abort_grace(void)
{
    struct timespec ts = {0, 300000000};
    nanosleep(&ts, NULL);
}

static void exit_policy(int status, void *arg)
{
    (void)arg;
    int init = 0, fin = 0;
    PMPI_Initialized(&init);
    PMPI_Finalized(&fin);
    if (!own.owned || !init || fin)
        return;
    fflush(stdout);
    fflush(stderr);
    if (status != 0) {
        /* srun lists the ranks MPI_Abort ends as "Killed" and exits with
         * 137, which reads like an out-of-memory kill: say what it is */
        char host[256] = "?";
        gethostname(host, sizeof host - 1);
        fprintf(stderr, "python-mpi: %s (rank %d): exit status %d, aborting the job%s\n", host,
                own.rank, status,
                getenv("SLURM_STEP_ID") ? " (srun then reports the other ranks as Killed, exit "
                                          "code 137: ended by this abort, not out of memory)" : "");
        fflush(stderr);
        abort_grace();
        PMPI_Abort(MPI_COMM_WORLD, status);
        _exit(status);
    }
    if (own.clean_exit)
        own.clean_exit();
    own.owned = 0;
    PMPI_Finalize();
}

void pmb_own_exit_policy(void (*clean_exit)(void))
{
    own.clean_exit = clean_exit;
    on_exit(exit_policy, NULL);
}
