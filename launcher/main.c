/* python-mpi: the executable every rank starts.
 *
 *   PYTHON_MPI_PKGROOT=/proj/pkgs PYTHON_MPI_PACKAGES=python-3.11.tar.zst:env.tar.zst \
 *   PYTHON_MPI_CHROOT=/dev/shm/$SLURM_JOB_ID srun -n 4096 python-mpi script.py args
 *
 * init MPI -> read configuration -> rank 0 reads the manifests -> stage to
 * every node (stage.c) -> run the staged interpreter (start.c). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include <zstd.h> /* the system's, or launcher/zstd-shim/zstd.h */

#include "comm.h"
#include "config.h"
#include "manifest.h"
#include "mpilib.h"
#include "own.h"
#include "stage.h"
#include "start.h"
#include "tools.h"

/* A shared flock on a package rank 0 reads, held until the job ends: the
 * hold `python-mpi-bcast run` takes (run.py hold/is_held), so `rm` and
 * pruning refuse a package a running job uses.  Only an exclusive lock taken
 * for an instant (is_held) can be in the way: retry for up to a second,
 * then go on without. */
static void hold_package(int fd)
{
    for (int tries = 0; tries < 100; tries++) {
        if (!flock(fd, LOCK_SH | LOCK_NB) || (errno != EWOULDBLOCK && errno != EINTR))
            return;
        nanosleep(&(struct timespec){0, 10000000}, NULL);
    }
}

static void bcast_manifests(pmb_manifest *ms, int n)
{
    for (int i = 0; i < n; i++) {
        unsigned long long len = pmb_c.world_rank == 0 ? ms[i].text_len : 0;
        MPI_Bcast(&len, 1, MPI_UNSIGNED_LONG_LONG, 0, MPI_COMM_WORLD);
        char *text = pmb_c.world_rank == 0 ? ms[i].text : pmb_xmalloc(len + 1);
        MPI_Bcast(text, (int)len, MPI_CHAR, 0, MPI_COMM_WORLD);
        if (pmb_c.world_rank != 0) {
            char err[512];
            ms[i].file = pmb_cfg.packages[i];
            if (pmb_manifest_parse(&ms[i], text, len, err, sizeof err))
                pmb_die("package '%s': %s", pmb_cfg.packages[i], err);
            free(text);
        }
        unsigned long long ps = ms[i].payload_start;
        MPI_Bcast(&ps, 1, MPI_UNSIGNED_LONG_LONG, 0, MPI_COMM_WORLD);
        ms[i].payload_start = ps;
    }
}

/* Layers: at most one interpreter, first; environments match its Python. */
static const pmb_manifest *check_layers(pmb_manifest *ms, int n)
{
    const pmb_manifest *interp = NULL;
    for (int i = 0; i < n; i++) {
        if (!strcmp(ms[i].kind, "interpreter")) {
            if (interp)
                pmb_die("PYTHON_MPI_PACKAGES names two interpreter packages ('%s' and '%s'); "
                        "give exactly one", interp->file, ms[i].file);
            if (i != 0)
                pmb_die("interpreter package '%s' must come first in PYTHON_MPI_PACKAGES", ms[i].file);
            interp = &ms[i];
        }
    }
    for (int i = 0; interp && i < n; i++)
        if (!strcmp(ms[i].kind, "environment") &&
            (strcmp(ms[i].python ? ms[i].python : "", interp->python ? interp->python : "") ||
             (ms[i].abi && interp->abi && strcmp(ms[i].abi, interp->abi))))
            pmb_die("package '%s' was built for Python %s but the interpreter package '%s' is "
                    "Python %s; repack one of them", ms[i].file, ms[i].python ? ms[i].python : "?",
                    interp->file, interp->python ? interp->python : "?");
    if (!interp && pmb_cfg.mode != PMB_MODE_STAGE_ONLY)
        pmb_die("PYTHON_MPI_PACKAGES has no interpreter package; put one first (make it with "
                "'python-mpi-bcast pack --python') or use --stage-only");
    return interp;
}

/* Does python, given these arguments, read its program from stdin
 * (`python -`, or no script, -c or -m)?  Python's own option rules: flags
 * may be grouped (-uB), -W and -X take an argument (joined or next), -c and
 * -m end the options, "--" ends them too. */
static int program_from_stdin(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-"))
            return 1;
        if (!strcmp(a, "--"))
            return i + 1 >= argc || !strcmp(argv[i + 1], "-");
        if (!strncmp(a, "--", 2)) {
            if (!strcmp(a, "--check-hash-based-pycs"))
                i++;
            else if (!strncmp(a, "--help", 6) || !strcmp(a, "--version"))
                return 0;
            continue;
        }
        if (a[0] != '-')
            return 0; /* the script */
        for (const char *c = a + 1; *c; c++) {
            if (strchr("cmhV?", *c))
                return 0;
            if (*c == 'W' || *c == 'X') {
                if (!c[1])
                    i++;
                break;
            }
        }
    }
    return 1;
}

/* python - < script.py on N ranks: rank 0 reads the program (hydra and srun
 * give stdin to rank 0 only; the others would wait for ever), every rank
 * runs it: each gets the same bytes as its stdin (a memfd). */
static void share_stdin_program(int argc, char **argv)
{
    if (!program_from_stdin(argc, argv))
        return;
    unsigned long long len = 0;
    int interactive = pmb_c.world_rank == 0 && isatty(0);
    MPI_Bcast(&interactive, 1, MPI_INT, 0, MPI_COMM_WORLD);
    if (interactive)
        return; /* the interactive interpreter: rank 0's terminal, as python */
    char *buf = NULL;
    if (pmb_c.world_rank == 0) {
        size_t cap = 1 << 16;
        buf = pmb_xmalloc(cap);
        for (;;) { /* to the end of stdin, doubling the buffer */
            size_t want = cap - len, r = pmb_read_full(0, buf + len, want);
            len += r;
            if (r < want) {
                if (errno)
                    pmb_die("cannot read the program from stdin: %s", strerror(errno));
                break;
            }
            cap *= 2;
            buf = pmb_xrealloc(buf, cap);
        }
    }
    MPI_Bcast(&len, 1, MPI_UNSIGNED_LONG_LONG, 0, MPI_COMM_WORLD);
    if (pmb_c.world_rank != 0)
        buf = pmb_xmalloc(len);
    for (unsigned long long off = 0; off < len; off += 1u << 30) {
        unsigned long long n = len - off < (1u << 30) ? len - off : (1u << 30);
        MPI_Bcast(buf + off, (int)n, MPI_BYTE, 0, MPI_COMM_WORLD);
    }
    int fd = (int)syscall(SYS_memfd_create, "python-mpi-stdin", 0u);
    if (fd < 0)
        pmb_die("cannot create a memfd for the program from stdin: %s", strerror(errno));
    if (pmb_write_all(fd, buf, len))
        pmb_die("cannot write the program from stdin to a memfd: %s", strerror(errno));
    free(buf);
    if (lseek(fd, 0, SEEK_SET) < 0 || dup2(fd, 0) < 0)
        pmb_die("cannot make the program from stdin the interpreter's stdin: %s", strerror(errno));
    close(fd);
}

int main(int argc, char **argv)
{
    if (argc > 1 && !strcmp(argv[1], "--pmb-info"))
        return pmb_info_main();
    if (argc > 1 && !strcmp(argv[1], "--pmb-unpack")) /* no MPI: python-mpi-bcast unpack */
        return pmb_unpack_main(argc - 2, argv + 2);
    if (argc > 1 && !strcmp(argv[1], "--pmb-manifest")) /* no MPI: the tests' parser check */
        return pmb_manifest_main(argc - 2, argv + 2);
    if (argc > 1 && !strcmp(argv[1], "--pmb-exec-check")) /* no MPI: the tests' exec-mode rule */
        return pmb_exec_check_main(argc - 2, argv + 2);
    if (argc > 1 && !strcmp(argv[1], "--pmb-sha256")) /* no MPI: the tests' SHA-256 check */
        return pmb_sha256_main(argc - 2, argv + 2);
    if (argc == 4 && !strcmp(argv[1], "--pmb-cleanup-tree")) /* no MPI: exec mode's clean-up */
        return pmb_cleanup_tree_main(argc - 2, argv + 2);        /* (exec_shim.c) */
    int stage_only = 0;
    if (argc > 1 && !strcmp(argv[1], "--stage-only")) {
        stage_only = 1;
        argv[1] = argv[0];
        argv++;
        argc--;
    }
    double t_begin = pmb_now();
    int provided;
    if (PMPI_Init_thread(NULL, NULL, MPI_THREAD_MULTIPLE, &provided) != MPI_SUCCESS) {
        fprintf(stderr, "python-mpi: MPI_Init_thread failed\n");
        return 1;
    }
    /* only this thread ever calls MPI (unpacking threads decompress and
     * create files, nothing else): FUNNELED is enough for them; with less,
     * threads.c unpacks in this thread alone */
    pmb_thread_level = provided;
    pmb_mpi_up = 1;
    MPI_Comm_rank(MPI_COMM_WORLD, &pmb_c.world_rank);
    pmb_own_start(provided, pmb_c.world_rank); /* the program's MPI_Init is own.c's */
    pmb_collective_phase = 1;
    pmb_config_read(&pmb_cfg);
    if (stage_only)
        pmb_cfg.mode = PMB_MODE_STAGE_ONLY;
#ifdef PMB_ZSTD_DLOPEN
    pmb_zstd_require(); /* every rank may unpack: a missing libzstd.so.1 stops the job here */
#endif
    if (pmb_cfg.mode == PMB_MODE_EXEC) {
        char why[256];
        if (!pmb_exec_supported(why, sizeof why))
            pmb_die("PYTHON_MPI_MODE=exec does not work with this MPI (%s); use the default "
                    "embed mode or --stage-only", why);
    }
    pmb_comms_init(&pmb_c);

    int n = pmb_cfg.npackages;
    pmb_manifest *ms = pmb_xcalloc((size_t)n, sizeof *ms);
    int *fds = pmb_xcalloc((size_t)n, sizeof *fds);
    double t_read = pmb_now();
    pmb_collective_phase = 0;
    if (pmb_c.world_rank == 0) {
        for (int i = 0; i < n; i++) {
            pmb_manifest_read_file(&ms[i], pmb_cfg.pkgroot, pmb_cfg.packages[i], &fds[i]);
            hold_package(fds[i]);
        }
        check_layers(ms, n);
    }
    t_read = pmb_now() - t_read;
    bcast_manifests(ms, n);
    const pmb_manifest *interp = check_layers(ms, n);

    pmb_stage_report rep;
    char *tree = pmb_stage(ms, n, fds, &rep);
    pmb_mpi_record_write(tree, ms, n); /* children of the tree use this MPI (mpilib.c) */
    if (pmb_c.world_rank == 0) {
        /* the hold (hold_package) lasts as long as the job: the descriptors stay open, in
         * exec mode across the exec; only staging, the launcher ends here */
        for (int i = 0; i < n; i++)
            if (pmb_cfg.mode == PMB_MODE_STAGE_ONLY ||
                (pmb_cfg.mode == PMB_MODE_EXEC && fcntl(fds[i], F_SETFD, 0)))
                close(fds[i]);
    }
    if (pmb_cfg.verbose && pmb_c.world_rank == 0) {
        uint64_t bytes = 0, unpacked = 0, copied = 0;
        int first = rep.first; /* layers before it: copied from each node's earlier tree */
        for (int i = 0; i < n; i++) {
            if (i < first) {
                copied += ms[i].unpacked_size;
                continue;
            }
            bytes += ms[i].payload_size;
            unpacked += ms[i].unpacked_size;
        }
        char from_earlier[160] = "";
        if (first)
            snprintf(from_earlier, sizeof from_earlier, " the first %d layer(s) (%.1f MB) copied "
                     "on each node from its earlier tree;", first, copied / 1e6);
        int waited = rep.waited;
        if (rep.staged && waited)
            pmb_log("stage: %d package(s) staged into %s by another job step at the same time; "
                    "waited %.3f s for it on %d of %d node(s); nothing read or sent by this step "
                    "(%.3f s)", n, tree, rep.wait, waited, pmb_c.nnodes, rep.total);
        else if (rep.staged)
            pmb_log("stage: %d package(s) already staged on all %d node(s) in %s; nothing read or "
                    "sent (%.3f s)", n, pmb_c.nnodes, tree, rep.total);
        else
            pmb_log("stage: %d package(s), %.1f MB sent, %.1f MB unpacked, %d node(s), %d rank(s):%s "
                    "manifests %.3f s, read %.3f s, broadcast %.3f s, unpack %.3f s, total %.3f s",
                    n, bytes / 1e6, unpacked / 1e6, pmb_c.nnodes, pmb_c.world_size, from_earlier,
                    t_read, rep.read, rep.bcast, rep.unpack, rep.total);
        if (!rep.staged && waited)
            pmb_log("stage: %d of %d node(s) waited %.3f s for another job step staging the same "
                    "packages", waited, pmb_c.nnodes, rep.wait);
        pmb_log("stage: tree %s ready %.3f s after start", tree, pmb_now() - t_begin);
    }
    if (pmb_cfg.mode == PMB_MODE_STAGE_ONLY) {
        if (pmb_c.world_rank == 0) {
            printf("%s\n", tree);
            fflush(stdout);
        }
        PMPI_Finalize();
        return 0;
    }
    share_stdin_program(argc, argv);
    pmb_mpi4py_check(tree, ms, n);
    if (pmb_cfg.mode == PMB_MODE_EXEC)
        pmb_start_exec(tree, interp, argc, argv);
    /* every rank judges the same staged tree: rank 0 reports a problem once */
    pmb_collective_phase = 1;
    pmb_mpi4py_prepare(tree, ms, n);
    pmb_collective_phase = 0;
    pmb_start_embed(tree, interp, argc, argv);
}
