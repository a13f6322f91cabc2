"""Rewrite a launch line for ``python-mpi-bcast run``: pure, no I/O.

``srun -n 64 python -u x.py a`` becomes ``srun -n 64 /path/python-mpi -u x.py a``.
The launcher word is found by its basename; its own options are skipped with
tables of which take a value (Slurm's srun, MPICH's hydra, Open MPI's
mpirun/prterun, Cray's aprun), so the first word after them is the program.
The program must be a Python interpreter; then Python's own options are read
to find the script (for ``--with-dir``).  Anything else is refused with one
line that says how to write the line.
"""

from __future__ import annotations

import dataclasses
import os
import re

from ..support.errors import PmbError

HOW = "write it as: python-mpi-bcast run srun -n 4 python SCRIPT ARGS"

# --- srun (Slurm 22.05 man page): getopt_long, '+' (stops at the program) -------------
# value: 1 = needs a value ('--opt val', '--opt=val', '-o val', '-oval');
# '?' = optional value, only as '--opt=val' / '-oval'; 0 = flag
SRUN_LONG = dict.fromkeys((
    "account acctg-freq bb bbf begin bcast-exclude chdir cluster-constraint clusters "
    "comment constraint container core-spec cores-per-socket cpu-bind cpu-freq "
    "cpus-per-gpu cpus-per-task deadline delay-boot dependency distribution epilog error "
    "exclude export extra-node-info gid gpu-bind gpu-freq gpus gpus-per-node "
    "gpus-per-socket gpus-per-task gres gres-flags het-group hint input job-name jobid "
    "licenses mail-type mail-user mcs-label mem mem-bind mem-per-cpu mem-per-gpu mincpus "
    "mpi msg-timeout network nodefile nodelist nodes ntasks ntasks-per-core "
    "ntasks-per-gpu ntasks-per-node ntasks-per-socket open-mode output partition power "
    "prefer priority profile prolog qos relative reservation signal slurmd-debug "
    "sockets-per-node switches task-epilog task-prolog thread-spec threads "
    "threads-per-core time time-min tmp uid wait wckey accel-bind tres-per-task "
    "cpus-per-task").split(), 1)
SRUN_LONG.update(dict.fromkeys((
    "bcast compress exclusive immediate kill-on-bad-exit nice no-kill propagate resv-ports "
    "send-libs x11").split(), "?"))
SRUN_LONG.update(dict.fromkeys((
    "contiguous disable-status exact help hold label overcommit overlap oversubscribe "
    "preserve-env pty quiet quit-on-interrupt reboot spread-job test-only unbuffered usage "
    "use-min-nodes verbose version no-allocate multi-prog").split(), 0))
SRUN_SHORT = {**dict.fromkeys("AbBcCdDeFGiJLmMnNopqrStTwWx", 1),
              **dict.fromkeys("IKk", "?"), **dict.fromkeys("EhHlOQsuvVXZ", 0)}

# --- MPICH hydra (mpiexec --help, MPICH 4/5): '-opt val'; '--opt' works too ----------
HYDRA = {**dict.fromkeys((
    "genvlist f hostfile machinefile hosts host rankmap wdir envlist n np launcher "
    "launcher-exec rmk topolib bind-to binding map-by membind demux errfile-pattern "
    "outfile-pattern gpus-per-proc iface localhost nameserver ppn prepend-pattern usize "
    "memory-alloc-kinds ckpointlib ckpoint-prefix ckpoint-num gdb-path").split(), 1),
    "genv": 2, "env": 2, "configfile": "mpmd",
    **dict.fromkeys((
        "genvnone genvall envnone envall enable-x disable-x disable-auto-cleanup "
        "disable-hostname-propagation hybrid-hosts info order-nodes pmi-port prepend-rank "
        "print-all-exitcodes profile skip-launch-node verbose v version h help "
        "l").split(), 0)}

# --- Open MPI 4 (mpirun.openmpi man page) and 5 (prterun): '-opt val' or '--opt val' --
OMPI = {**dict.fromkeys((
    "n np c N H host hostfile default-hostfile machinefile cpu-set npersocket npernode "
    "map-by rank-by bind-to cpu-list cpus-per-proc cpus-per-rank rf rankfile "
    "output-filename stdin xml-file xterm path prefix preload-files wd wdir x am tune "
    "debugger timeout max-restarts ompi-server personality ppr report-events report-pid "
    "report-uri max-vm-size hnp launch-agent cf cartofile output display runtime-options "
    "add-host add-hostfile dvm-uri pset stream-buffering fwd-environment").split(), 1),
    **dict.fromkeys("mca gmca prtemca pmixmca omca".split(), 2), "app": "mpmd",
    **dict.fromkeys((
        "h help q quiet v verbose V version display-map display-allocation "
        "output-proctable dvm novm pernode bycore byslot nolocal nooversubscribe "
        "oversubscribe bynode bind-to-core bind-to-socket report-bindings "
        "merge-stderr-to-stdout tag-output timestamp-output xml noprefix s preload-binary "
        "set-cwd-to-session-dir debug get-stack-traces tv allow-run-as-root continuous "
        "disable-recovery do-not-launch do-not-resolve enable-recovery index-argv-by-rank "
        "leave-session-attached report-child-jobs-separately show-progress terminate "
        "use-hwthread-cpus use-regexp d debug-devel debug-daemons debug-daemons-file "
        "display-devel-allocation display-devel-map display-diffable-map display-topo "
        "report-state-on-timeout").split(), 0)}

# --- Cray ALPS aprun: short '-n 4', multi-letter '-cc depth', long '--pes 4' ----------
APRUN = {**dict.fromkeys((
    "a cc cp d D e E F j L l m n N p r R S sl sn t architecture cpu-binding "
    "cpu-binding-file cpus-per-pe debug environment-override exclude-node-list "
    "exclude-node-list-file access-mode cpus-per-cu node-list node-list-file "
    "memory-per-pe pes pes-per-node protection-domain specialized-cpus relaunch "
    "pes-per-numa-node numa-node-list numa-nodes-per-node cpu-time-limit p-governor "
    "p-state wdir").split(), 1),
    **dict.fromkeys("b B C q T z ss bypass-app-transfer batch-args reconnect quiet "
                    "sync-output strict-memory-containment".split(), 0)}

LAUNCHERS = {"srun": "srun", "mpiexec": "hydra", "mpirun": "hydra", "mpiexec.hydra": "hydra",
             "mpiexec.mpich": "hydra", "mpirun.mpich": "hydra", "mpiexec.openmpi": "ompi",
             "mpirun.openmpi": "ompi", "orterun": "ompi", "prterun": "ompi", "aprun": "aprun"}
TABLES = {"hydra": HYDRA, "ompi": OMPI, "aprun": APRUN}
# 'mpiexec' may be either MPI: the hydra and Open MPI tables are merged for it (where
# they disagree, an option taking a value wins; the rewrite is checked by the program
# word being a python anyway)
MERGED = {**OMPI, **{k: v for k, v in HYDRA.items() if v != 0 or k not in OMPI}}

PYTHON_RE = re.compile(r"^python(3(\.\d+)?)?$")

# Python's own options (3.8-3.13): value-taking ones; -c/-m end the options
PY_VALUE = set("WX")
PY_FLAGS = set("bBdEhiIOqsSuvVxPR?")
PY_LONG_VALUE = {"--check-hash-based-pycs"}
PY_LONG_FLAGS = {"--help", "--version", "--help-env", "--help-xoptions", "--help-all"}


class LaunchLineError(PmbError):
    """A launch line ``run`` cannot rewrite; the message says how to write it."""


@dataclasses.dataclass
class LaunchLine:
    argv: list[str]          # the rewritten line
    launcher: str            # the launcher word's basename
    python_index: int        # where the python word was (now python-mpi)
    python: str              # the python word as given
    script_index: int | None  # index of the script word (None: -c, -m, -, or nothing)

    @property
    def script(self) -> str | None:
        return None if self.script_index is None else self.argv[self.script_index]


def is_python(word: str, own: tuple[str, ...] = ()) -> bool:
    """python, python3, python3.X, a path ending in one of those, or one of ``own``."""
    return bool(PYTHON_RE.match(os.path.basename(word))) or word in own


def _value_kind(table: dict, name: str, style: str):
    if name in table:
        return table[name]
    if style == "srun":  # getopt_long takes unambiguous abbreviations
        hits = [k for k in table if k.startswith(name)]
        if len(hits) == 1:
            return table[hits[0]]
    return None


def _skip_options(argv: list[str], i: int, launcher: str, style: str, table: dict,
                  own: tuple[str, ...]) -> int:
    """Index of the program word after the launcher's options starting at ``i``."""
    n = len(argv)
    while i < n:
        w = argv[i]
        if w == "--" and style in ("srun", "ompi"):
            return i + 1
        if not w.startswith("-") or w == "-":
            return i
        if style == "srun" and not w.startswith("--"):
            j = 1  # a cluster of short options: -lun4, -n4, -n 4
            while j < len(w):
                kind = SRUN_SHORT.get(w[j])
                if kind is None:
                    raise LaunchLineError(f"srun option -{w[j]} (in {w!r}) is not one run "
                                          f"knows; check the line or {HOW}")
                if kind == 0:
                    j += 1
                    continue
                if kind == "?" or j + 1 < len(w):
                    break  # optional value only attached; or the value is attached
                if i + 1 >= n:
                    raise LaunchLineError(f"srun option {w} needs a value; {HOW}")
                i += 1
                break
            i += 1
            continue
        name, eq, _ = w.lstrip("-").partition("=")
        if style == "srun" and name == "multi-prog":
            raise LaunchLineError("srun --multi-prog (one program per task) cannot be "
                                  "rewritten; run python-mpi in the --multi-prog file instead, "
                                  "or " + HOW)
        kind = _value_kind(table, name, style)
        if style == "aprun" and kind is None and not w.startswith("--") and len(name) > 1 \
                and table.get(name[0]) == 1:
            i += 1  # -n4
            continue
        if kind == "mpmd":
            raise LaunchLineError(f"{launcher} {w.split('=')[0]} (an MPMD launch) cannot be "
                                  f"rewritten; {HOW}")
        if kind is None:
            # unknown: a flag if a python follows, one value if a python follows that
            if i + 1 < n and is_python(argv[i + 1], own):
                kind = 0
            elif not eq and i + 2 < n and is_python(argv[i + 2], own):
                kind = 1
            else:
                raise LaunchLineError(f"{launcher} option {w} is not one run knows and no "
                                      f"python follows it; {HOW}")
        if kind == 0 or kind == "?" or eq:
            if kind == 2 and eq:
                i += 2
            else:
                i += 1
            continue
        if i + kind >= n:
            raise LaunchLineError(f"{launcher} option {w} needs {kind} value"
                                  f"{'s' if kind > 1 else ''}; {HOW}")
        i += 1 + kind
    return i


def _find_script(argv: list[str], i: int) -> int | None:
    """Index of the script among python's arguments starting at ``i`` (None
    for -c, -m, - or no script)."""
    n = len(argv)
    while i < n:
        w = argv[i]
        if w == "--":
            return i + 1 if i + 1 < n and argv[i + 1] != "-" else None
        if w == "-" or not w.startswith("-"):
            return None if w == "-" else i
        if w.startswith("--"):
            name = w.split("=")[0]
            if name in PY_LONG_VALUE and "=" not in w:
                i += 2
            else:
                i += 1
            continue
        j = 1
        while j < len(w):
            c = w[j]
            if c in ("c", "m"):
                return None
            if c in PY_VALUE:
                if j + 1 == len(w):
                    if i + 1 >= n:
                        raise LaunchLineError(f"python option -{c} needs a value; {HOW}")
                    i += 1
                break
            if c not in PY_FLAGS:
                raise LaunchLineError(f"python option -{c} (in {w!r}) is not one run knows; "
                                      f"{HOW}")
            j += 1
        i += 1
    return None


def rewrite(argv: list[str], python_mpi: str, own_pythons: tuple[str, ...] = ()) -> LaunchLine:
    """Replace the python of a launch line by ``python_mpi``."""
    if not argv:
        raise LaunchLineError(f"no launch line given; {HOW}")
    launcher = os.path.basename(argv[0])
    family = LAUNCHERS.get(launcher)
    if family is None:
        if is_python(argv[0], own_pythons):
            raise LaunchLineError(f"the line starts with {argv[0]}, not a launcher; put "
                                  f"srun, mpiexec, mpirun or aprun first: "
                                  f"python-mpi-bcast run mpiexec -n 4 {' '.join(argv)}")
        raise LaunchLineError(f"{argv[0]!r} is not a launcher run knows (srun, mpiexec, "
                              f"mpirun, mpiexec.hydra, mpirun.openmpi, orterun, aprun); {HOW}")
    if ":" in argv[1:]:
        raise LaunchLineError(f"{launcher} with ':' (an MPMD or heterogeneous launch) cannot "
                              f"be rewritten; launch one program per line: {HOW}")
    if family == "srun":
        style, table = "srun", SRUN_LONG
    elif family == "hydra" and launcher in ("mpiexec", "mpirun"):
        style, table = "hydra", MERGED
    else:
        style, table = family, TABLES[family]
    i = _skip_options(argv, 1, launcher, style, table, own_pythons)
    if i >= len(argv):
        raise LaunchLineError(f"{launcher} starts no program; {HOW}")
    prog = argv[i]
    if not is_python(prog, own_pythons):
        raise LaunchLineError(f"{launcher} starts {prog!r}, not python; run rewrites only "
                              f"'{launcher} ... python SCRIPT ARGS' (for other programs use "
                              f"python-mpi directly, see 'In the job script')")
    out = list(argv)
    out[i] = python_mpi
    return LaunchLine(argv=out, launcher=launcher, python_index=i, python=prog,
                      script_index=_find_script(out, i + 1))


def srun_export_fix(line: LaunchLine, names: list[str]) -> None:
    """srun --export=LIST passes only LIST to the tasks: add ``names`` to it
    (in place); --export=NONE is refused."""
    if line.launcher != "srun":
        return
    a = line.argv
    for i in range(1, line.python_index):
        w = a[i]
        if w.startswith("--export="):
            value, at = w[len("--export="):], i
        elif w == "--export" and i + 1 < line.python_index:
            value, at = a[i + 1], i + 1
        else:
            continue
        first = value.split(",")[0]
        if first == "ALL":
            continue
        if first == "NONE" or value == "NIL":
            raise LaunchLineError(f"srun --export={value} would not pass PYTHON_MPI_* to the "
                                  f"tasks; use --export=ALL (or leave it out)")
        new = ",".join([value] + names)
        a[at] = ("--export=" + new) if at == i else new


# hydra options that keep the launch environment from the ranks (on other
# nodes: locally started proxies inherit it anyway)
HYDRA_ENV_LIMITS = {"genvnone", "envnone", "genvlist", "envlist"}


def export_fix(line: LaunchLine, env: dict[str, str], open_mpi: bool) -> None:
    """Make the launch line pass ``env`` (the PYTHON_MPI_* settings, also set
    in the launcher's own environment) to the ranks on every node, in place.

    srun passes the whole environment unless --export says otherwise (see
    srun_export_fix).  MPICH's hydra passes it too, unless -genvnone,
    -envnone, -genvlist or -envlist limit it: then each setting is added as
    ``-genv NAME VALUE``, which hydra passes whatever the rest says.  Open
    MPI's mpirun passes only what ``-x`` names to ranks it starts through ssh:
    ``-x NAME`` is added for each.  aprun passes the environment."""
    names = sorted(env)
    if line.launcher == "srun":
        srun_export_fix(line, names)
        return
    a = line.argv
    if open_mpi:
        extra = [w for n in names for w in ("-x", n)]
    elif LAUNCHERS.get(line.launcher) == "hydra" and any(
            w.startswith("-") and w.lstrip("-") in HYDRA_ENV_LIMITS
            for w in a[1:line.python_index]):
        extra = [w for n in names for w in ("-genv", n, env[n])]
    else:
        return
    a[1:1] = extra
    line.python_index += len(extra)
    if line.script_index is not None:
        line.script_index += len(extra)
