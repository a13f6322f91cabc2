/* Starting the staged interpreter.
 *
 * embed (default): dlopen the staged libpython with RTLD_GLOBAL and run
 *   Py_BytesMain with argv[0] = the staged bin/pythonX.Y, so sys.prefix and
 *   sys.executable are the staged tree and MPI stays initialised for mpi4py.
 *   The exit policy and the program's view of MPI_Init/MPI_Finalize: own.c.
 * exec: MPI_Finalize, then execv the staged interpreter with exec_shim.c
 *   preloaded from a memfd: it initialises MPI again before the program and
 *   applies the same exit policy, so the process stays a rank until its
 *   program ends (only with MPIs where a finalised process may start a new
 *   MPI program, MPICH >= 5 and Open MPI >= 5, and a process manager that
 *   lets it: not Slurm's PMI-2).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "comm.h"
#include "mpilib.h"
#include "nodes.h"
#include "own.h"
#include "start.h"

static char *exit_tree;

/* status 0, before MPI_Finalize: the node's last rank out removes the tree */
static void clean_exit(void)
{
    if (!pmb_cfg.cleanup || !exit_tree)
        return;
    /* every rank of the node lets go of the tree, then the node leader
     * removes it unless another job step still holds it (nodes.c) */
    pmb_hold_release();
    pmb_node_barrier();
    if (pmb_c.node_rank == 0)
        pmb_cleanup_tree(exit_tree);
}

/* the exit policy (own.c): status 0 -> clean-up, MPI_Finalize; else MPI_Abort */
void pmb_install_exit_handler(const char *tree)
{
    exit_tree = tree ? pmb_xstrdup(tree) : NULL;
    pmb_own_exit_policy(clean_exit);
}

/* argv for python; PYTHON_MPI_TREE_ARG=N: argv[N] is a path inside the tree
 * (the script of 'python-mpi-bcast run --with-dir') */
static char **python_argv(const char *tree, const char *exe, int argc, char **argv)
{
    char **out = pmb_xmalloc(sizeof(char *) * (size_t)(argc + 1));
    out[0] = (char *)exe;
    for (int i = 1; i < argc; i++)
        out[i] = argv[i];
    out[argc] = NULL;
    if (pmb_cfg.tree_arg >= argc && pmb_cfg.tree_arg)
        pmb_die("PYTHON_MPI_TREE_ARG=%d but python-mpi got %d argument(s)", pmb_cfg.tree_arg,
                argc - 1);
    if (pmb_cfg.tree_arg) {
        size_t l = strlen(tree) + strlen(argv[pmb_cfg.tree_arg]) + 2;
        out[pmb_cfg.tree_arg] = pmb_xmalloc(l);
        snprintf(out[pmb_cfg.tree_arg], l, "%s/%s", tree, argv[pmb_cfg.tree_arg]);
    }
    unsetenv("PYTHON_MPI_TREE_ARG"); /* not for programs the script starts */
    return out;
}

int pmb_start_embed(const char *tree, const pmb_manifest *interp, int argc, char **argv)
{
    char lib[PATH_MAX], exe[PATH_MAX];
    if (!interp->libpython || !*interp->libpython)
        pmb_die("package '%s' has no shared libpython, which embed mode needs; use "
                "PYTHON_MPI_MODE=stage-only (then run the staged bin/python3) or pack a Python "
                "built with --enable-shared", interp->file);
    snprintf(lib, sizeof lib, "%s/%s", tree, interp->libpython);
    snprintf(exe, sizeof exe, "%s/%s", tree, interp->executable ? interp->executable : "bin/python3");
    if (access(lib, R_OK))
        pmb_die("staged tree %s has no %s (%s); the node directory is damaged: remove it and rerun",
                tree, interp->libpython, strerror(errno));
    double t0 = pmb_now();
    void *h = dlopen(lib, RTLD_NOW | RTLD_GLOBAL);
    if (!h)
        pmb_die("cannot load the staged libpython: %s", dlerror());
    int (*bytes_main)(int, char **) = (int (*)(int, char **))dlsym(h, "Py_BytesMain");
    if (!bytes_main)
        pmb_die("%s has no Py_BytesMain (Python >= 3.8 is needed)", lib);
    if (pmb_cfg.verbose && pmb_c.world_rank == 0)
        pmb_log("start: loaded %s in %.3f s", lib, pmb_now() - t0);
    unsetenv("PYTHONHOME");
    setenv("PYTHON_MPI_TREE", tree, 1);
    pmb_install_exit_handler(tree);
    int status = bytes_main(argc, python_argv(tree, exe, argc, argv));
    exit(status);
}

/* Whether an MPI, by its version string, can be initialised again after
 * MPI_Finalize in the same process (what exec mode needs).  Measured here:
 * MPICH 4 and Open MPI 4 cannot, MPICH 5 and Open MPI 5 can.  Refused by
 * the same rule, not run here: what is built on MPICH before 5 (Cray MPICH,
 * whose string names its "ANL base", and Intel MPI), matched whatever the
 * case ("CRAY MPICH", "Cray MPICH").  Others: allowed. */
int pmb_exec_supported_by(const char *v, char *why, size_t len)
{
    const char *p;
    int major;
    if ((p = strcasestr(v, "Cray MPICH"))) {
        const char *base = strcasestr(p, "ANL base");
        major = base ? atoi(base + 8 + strspn(base + 8, " \t")) : 0;
        if (major < 5) {
            if (base)
                snprintf(why, len, "Cray MPICH (built on MPICH %d) cannot start MPI again after "
                         "MPI_Finalize in the same process", major);
            else
                snprintf(why, len, "Cray MPICH cannot start MPI again after MPI_Finalize in the "
                         "same process");
            return 0;
        }
    } else if ((p = strcasestr(v, "Intel(R) MPI Library"))) {
        snprintf(why, len, "Intel MPI (built on MPICH 3) cannot start MPI again after "
                 "MPI_Finalize in the same process");
        return 0;
    } else if ((p = strcasestr(v, "MPICH Version:"))) {
        major = atoi(p + 14 + strspn(p + 14, " \t"));
        if (major < 5) {
            snprintf(why, len, "MPICH %d cannot start MPI again after MPI_Finalize in the same "
                     "process", major);
            return 0;
        }
    } else if ((p = strstr(v, "Open MPI v"))) {
        major = atoi(p + 10);
        if (major < 5) {
            snprintf(why, len, "Open MPI %d cannot start MPI again after MPI_Finalize in the "
                     "same process", major);
            return 0;
        }
    }
    return 1;
}

/* Is the PMI server at the other end of PMI_FD Slurm's (srun --mpi=pmi2)?
 * It accepts one PMI handshake per task, and the exec'd interpreter would
 * need a second ("slurmstepd: error: mpi/pmi2: invalid pmi1 command
 * received: 'init'", then a hang).  Hydra's proxy accepts a second one. */
static int pmi_server_is_slurm(void)
{
    const char *fdv = getenv("PMI_FD");
    if (!fdv || !*fdv)
        return 0;
    struct ucred cr;
    socklen_t l = sizeof cr;
    if (getsockopt(atoi(fdv), SOL_SOCKET, SO_PEERCRED, &cr, &l) == 0 && cr.pid > 0) {
        char path[64], comm[64] = "";
        snprintf(path, sizeof path, "/proc/%d/comm", (int)cr.pid);
        FILE *f = fopen(path, "r");
        if (f) {
            if (fgets(comm, sizeof comm, f))
                comm[strcspn(comm, "\n")] = 0;
            fclose(f);
            return !strcmp(comm, "slurmstepd");
        }
    }
    /* no answer from /proc: srun's own variables (hydra sets MPI_LOCALNRANKS) */
    const char *t = getenv("SLURM_MPI_TYPE");
    return t && !strcmp(t, "pmi2") && !getenv("MPI_LOCALNRANKS");
}

int pmb_exec_supported(char *why, size_t len)
{
    char v[MPI_MAX_LIBRARY_VERSION_STRING];
    int n = 0;
    MPI_Get_library_version(v, &n);
    if (!pmb_exec_supported_by(v, why, len))
        return 0;
    if (pmi_server_is_slurm()) {
        snprintf(why, len, "under srun --mpi=pmi2 the staged interpreter cannot join the job "
                 "again: Slurm's PMI-2 server takes one handshake per task");
        return 0;
    }
    return 1;
}

/* The exec'd interpreter preloads exec_shim.c (embedded in the launcher,
 * handed over in a memfd that survives execv) and, before it, the
 * launcher's MPI library by its path, the one the shim was linked with. */
extern const unsigned char pmb_exec_shim_image[], pmb_exec_shim_end[];

static void preload_shim(const char *mpilib)
{
    int fd = (int)syscall(SYS_memfd_create, "python-mpi-exec-shim", 0u);
    size_t len = (size_t)(pmb_exec_shim_end - pmb_exec_shim_image);
    const unsigned char *p = pmb_exec_shim_image;
    if (fd < 0)
        pmb_die("exec mode: cannot create a memfd for the interpreter's MPI shim: %s",
                strerror(errno));
    if (pmb_write_all(fd, p, len))
        pmb_die("exec mode: cannot write the interpreter's MPI shim: %s", strerror(errno));
    const char *old = getenv("LD_PRELOAD");
    char saved[PATH_MAX + 8];
    if (old) {
        size_t l = strlen(old) + 2;
        char *v = pmb_xmalloc(l);
        snprintf(v, l, "=%s", old);
        setenv("PYTHON_MPI_EXEC_PRELOAD", v, 1);
        free(v);
    } else {
        unsetenv("PYTHON_MPI_EXEC_PRELOAD");
    }
    /* LD_PRELOAD separates entries by spaces and colons */
    int lib_ok = mpilib && !strpbrk(mpilib, " :\t");
    size_t l = (lib_ok ? strlen(mpilib) : 0) + 64 + (old ? strlen(old) : 0);
    char *v = pmb_xmalloc(l);
    snprintf(v, l, "/proc/self/fd/%d%s%s%s%s", fd, lib_ok ? " " : "", lib_ok ? mpilib : "",
             old && *old ? " " : "", old ? old : "");
    setenv("LD_PRELOAD", v, 1);
    free(v);
    snprintf(saved, sizeof saved, "%d", fd);
    setenv("PYTHON_MPI_EXEC_SHIM", saved, 1);
}

/* 1 if the ELF executable at path names a program interpreter (is
 * dynamically linked, so LD_PRELOAD reaches it) */
static int dynamically_linked(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC), found = 0;
    Elf64_Ehdr eh;
    if (fd < 0)
        return 1; /* execv will report it */
    if (pread(fd, &eh, sizeof eh, 0) == (ssize_t)sizeof eh && !memcmp(eh.e_ident, ELFMAG, SELFMAG) &&
        eh.e_ident[EI_CLASS] == ELFCLASS64 && eh.e_phentsize == sizeof(Elf64_Phdr)) {
        for (int i = 0; i < eh.e_phnum && !found; i++) {
            Elf64_Phdr ph;
            if (pread(fd, &ph, sizeof ph, (off_t)(eh.e_phoff + (uint64_t)i * sizeof ph)) !=
                (ssize_t)sizeof ph)
                break;
            found = ph.p_type == PT_INTERP;
        }
    } else {
        found = 1; /* not a 64-bit ELF file: nothing to judge */
    }
    close(fd);
    return found;
}

/* Exec mode's node gate: no rank of a node execs the interpreter (whose
 * shim starts MPI again) before every rank of the node has left MPI.
 * Open MPI 5's PMIx server (OpenPMIx 5.0.x; openpmix#3931, #4113) takes the
 * closing connection of a rank that called PMIx_Finalize for a rank that
 * left every collective open at that moment, among them the modex fence a
 * faster rank of the node already began in its second life.  That fence
 * then completes without the slower rank, the faster one maps the slower
 * one's btl/sm segment before it exists ("A system call failed during
 * shared memory initialization ... open(2)") and the job's fences are out
 * of step from then on: it hangs.  With the gate, every first-life
 * connection of the node is closed before any second life starts.
 * The gate is a counter in a page the node's ranks share (the node
 * leader's memfd, opened by the others through /proc while MPI is up):
 * each rank adds one after PMPI_Finalize, then waits, sleeping, for the
 * node's count.  Nothing is left on the node.  If a rank cannot map the
 * page, no rank of the node waits (as before the gate). */
#define PMB_GATE_LIMIT 120.0 /* seconds a rank waits for the rest of its node */

static int *exec_gate;

static void exec_gate_open(void)
{
    long where[2] = {(long)getpid(), -1}; /* the leader's pid and memfd */
    int fd = -1, ok, all = 0;
    if (pmb_c.node_rank == 0) {
        fd = (int)syscall(SYS_memfd_create, "python-mpi-exec-gate", 1u /* MFD_CLOEXEC */);
        if (fd >= 0 && ftruncate(fd, sizeof(int)) == 0)
            where[1] = fd;
    }
    PMPI_Bcast(where, 2, MPI_LONG, 0, pmb_c.node);
    if (pmb_c.node_rank != 0 && where[1] >= 0) {
        char path[64];
        snprintf(path, sizeof path, "/proc/%ld/fd/%ld", where[0], where[1]);
        fd = open(path, O_RDWR | O_CLOEXEC);
    }
    void *page = MAP_FAILED;
    if (where[1] >= 0 && fd >= 0)
        page = mmap(NULL, sizeof(int), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    ok = page != MAP_FAILED;
    /* also the moment every rank has opened the leader's memfd */
    PMPI_Allreduce(&ok, &all, 1, MPI_INT, MPI_LAND, pmb_c.node);
    if (fd >= 0)
        close(fd);
    if (all)
        exec_gate = page;
    else if (ok)
        munmap(page, sizeof(int));
    if (!all && pmb_cfg.verbose && pmb_c.node_rank == 0)
        pmb_log("exec: %s: the node's ranks cannot share a page (/proc/PID/fd); they start the "
                "interpreter without waiting for each other", pmb_host());
}

/* after PMPI_Finalize: MPI is down, pmb_die cannot be used */
static void exec_gate_pass(void)
{
    if (!exec_gate)
        return;
    int n = __atomic_add_fetch(exec_gate, 1, __ATOMIC_SEQ_CST);
    double t0 = pmb_now();
    struct timespec ts = {0, 1000000};
    while (n < pmb_c.node_size) {
        if (pmb_now() - t0 > PMB_GATE_LIMIT) {
            fprintf(stderr, "python-mpi: %s (rank %d): exec mode: %d of the node's %d rank(s) "
                    "did not leave MPI within %.0f s; ending this rank\n", pmb_host(),
                    pmb_c.world_rank, pmb_c.node_size - n, pmb_c.node_size, PMB_GATE_LIMIT);
            _exit(1);
        }
        nanosleep(&ts, NULL);
        n = __atomic_load_n(exec_gate, __ATOMIC_SEQ_CST);
    }
    munmap(exec_gate, sizeof(int));
    exec_gate = NULL;
}

int pmb_start_exec(const char *tree, const pmb_manifest *interp, int argc, char **argv)
{
    char exe[PATH_MAX];
    snprintf(exe, sizeof exe, "%s/%s", tree, interp->executable ? interp->executable : "bin/python3");
    /* the staged interpreter loads its own libpython; mpi4py must find the
     * launcher's MPI library (under the name its extension asks for: the
     * in-process alias of embed mode does not survive execv) */
    const char *mpilib = pmb_mpi_library_path();
    if (mpilib) {
        char dir[PATH_MAX];
        snprintf(dir, sizeof dir, "%s", mpilib);
        char *s = strrchr(dir, '/');
        if (s) {
            *s = 0;
            const char *old = getenv("LD_LIBRARY_PATH");
            size_t l = strlen(dir) + (old ? strlen(old) : 0) + 2;
            char *v = pmb_xmalloc(l);
            snprintf(v, l, "%s%s%s", dir, old && *old ? ":" : "", old ? old : "");
            setenv("LD_LIBRARY_PATH", v, 1);
        }
    }
    /* mpi4py's wheel (>= 4.1.1) picks its ABI build from the library named
     * here instead of the first libmpi.so* on the loader path (Debian puts
     * Open MPI's there) */
    const char *lib = pmb_mpi_library_path();
    if (lib && !getenv("MPI4PY_LIBMPI"))
        setenv("MPI4PY_LIBMPI", lib, 1);
    unsetenv("PYTHONHOME");
    setenv("PYTHON_MPI_TREE", tree, 1);
    char **pargv = python_argv(tree, exe, argc, argv); /* may report an error: MPI still up */
    pmb_collective_phase = 1; /* the same on every rank: rank 0 reports it */
    if (!dynamically_linked(exe))
        pmb_die("PYTHON_MPI_MODE=exec needs a dynamically linked interpreter, but %s is static; "
                "use the default embed mode or --stage-only", exe);
    pmb_collective_phase = 0;
    preload_shim(lib);
    char rank[32];
    snprintf(rank, sizeof rank, "%d", pmb_c.world_rank);
    setenv("PYTHON_MPI_EXEC_RANK", rank, 1); /* for the shim's error line */
    unsetenv("PYTHON_MPI_EXEC_CLEANUP");
    unsetenv("PYTHON_MPI_EXEC_LAUNCHER");
    unsetenv("PYTHON_MPI_EXEC_HOLD");
    if (pmb_cfg.cleanup) { /* the shim has this launcher remove the tree (exec_shim.c) */
        char self[PATH_MAX], fd[32];
        ssize_t l = readlink("/proc/self/exe", self, sizeof self - 1);
        if (l > 0) {
            self[l] = 0;
            snprintf(fd, sizeof fd, "%d", pmb_hold_fd());
            setenv("PYTHON_MPI_EXEC_CLEANUP", tree, 1);
            setenv("PYTHON_MPI_EXEC_LAUNCHER", self, 1);
            setenv("PYTHON_MPI_EXEC_HOLD", fd, 1);
        }
    }
    exec_gate_open();
    fflush(stdout);
    fflush(stderr);
    PMPI_Finalize();
    exec_gate_pass();
    execv(exe, pargv);
    fprintf(stderr, "python-mpi: %s (rank %d): cannot exec %s: %s\n", pmb_host(), pmb_c.world_rank, exe,
            strerror(errno));
    _exit(127);
}
