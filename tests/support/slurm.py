"""A real Slurm cluster on this machine, for the tests.

Debian's Slurm 22.05 (slurmctld, slurmd, srun/sbatch) and munge, run as root
without systemd: one slurmctld and one slurmd per node name (``n1`` ...),
all on localhost with their own ports, a private munged on its own socket and
key, state, spool and logs under one temporary directory.  Everything runs
inside one PID namespace (``unshare --pid --fork --kill-child``), so one
SIGKILL ends it all (slurmd ignores SIGTERM), and ``unshare`` itself dies
with the process that started it.

Each node is real node-local storage: its slurmd runs in its own mount and
UTS namespace with a fresh tmpfs on ``/dev/shm`` and on its ``TmpFS``, its
own host name and an ``/etc/hosts`` in which every node's name resolves (a
copy of ``/etc`` with one where the machine has none); the tasks of a job
step inherit them.  From outside, a
node's files are reachable through ``/proc/<slurmd pid>/root`` (``node_path``).

Facts this depends on (measured on Debian 12): ``SlurmdParameters=
config_overrides`` (several slurmd on one host), per-node ``SlurmdSpoolDir``
and ``TmpFS`` with ``%n`` (directories created first), a fresh state
directory per cluster, ``ProctrackType=proctrack/linuxproc`` and
``TaskPlugin=task/none`` (no cgroups or systemd needed).
"""

from __future__ import annotations

import ctypes
import functools
import glob
import os
import random
import re
import resource
import shutil
import signal
import socket
import subprocess
import tempfile
import time

DAEMONS = ("slurmctld", "slurmd", "munged", "srun", "sbatch", "unshare")

@functools.cache
def mount_propagation() -> str | None:
    """How ``unshare -m`` makes a private mount namespace here, as its
    --propagation value: 'private' (unshare's default: every mount made
    private) where that works.  Where / is no mount point, as in a chroot
    (../shared/tools/fresh-debian), unshare cannot change the propagation of
    / and stops; there 'unchanged' is as private provided no mount in sight
    is shared (new mounts then reach no other namespace).  None: neither."""
    def ok(how):
        return subprocess.run(["unshare", "-m", "--propagation", how, "true"],
                              capture_output=True, timeout=30).returncode == 0
    if ok("private"):
        return "private"
    if not ok("unchanged"):
        return None
    with open("/proc/self/mountinfo") as f:
        # optional fields (shared:N, master:N) sit between field 6 and '-'
        shared = any(w.startswith("shared:")
                     for ln in f for w in ln.split(" - ")[0].split()[6:])
    return None if shared else "unchanged"


def missing() -> str | None:
    """Why a cluster cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (slurmd, munged and per-node mounts)"
    for exe in DAEMONS:
        if not shutil.which(exe) and not os.path.exists(f"/usr/sbin/{exe}"):
            return f"{exe} not installed (apt-get install slurmctld slurmd slurm-client munge)"
    how = mount_propagation()
    if how is None:
        return ("cannot create a private mount namespace here (unshare -m fails, and some "
                "mount is shared)")
    r = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "-m", "-u",
                        "--propagation", how, "true"], capture_output=True, timeout=30)
    if r.returncode != 0:
        return "cannot create PID/mount namespaces here: " + r.stderr.decode(errors="replace").strip()
    return None


def _free_ports(n: int) -> int:
    """A random base port with n free TCP ports after it."""
    for _ in range(200):
        base = random.randrange(20000, 60000 - n)
        socks = []
        try:
            for p in range(base, base + n):
                s = socket.socket()
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("127.0.0.1", p))
                socks.append(s)
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port range found")


def _die_with_parent():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core files of crashed tasks in cwd


CONF = """\
ClusterName=pmb{tag}
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={d}/munge/munge.socket
CredType=cred/munge
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool/%n
TmpFS={d}/tmp/%n
SlurmctldPidFile={d}/run/slurmctld.pid
SlurmdPidFile={d}/run/slurmd-%n.pid
SlurmctldLogFile={d}/log/slurmctld.log
SlurmdLogFile={d}/log/slurmd-%n.log
SlurmdParameters=config_overrides
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=pmi2
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
ReturnToService=2
SlurmctldTimeout=60
SlurmdTimeout=60
MessageTimeout=20
InactiveLimit=0
KillWait=2
MinJobAge=300
MaxArraySize=100
PropagateResourceLimits=NONE
SlurmctldDebug=info
SlurmdDebug=info
{nodes}
PartitionName=debug Nodes={nodelist} Default=YES MaxTime=INFINITE State=UP
"""

BOOT = """\
set -u
D={d}
hostname pmb-head
munged -F --force --socket=$D/munge/munge.socket --key-file=$D/munge/munge.key \\
  --pid-file=$D/run/munged.pid --log-file=$D/log/munged.log --seed-file=$D/munge/seed \\
  --num-threads=4 &
for i in $(seq 100); do [ -S $D/munge/munge.socket ] && break; sleep 0.05; done
slurmctld -D -i -f $D/slurm.conf >>$D/log/slurmctld.out 2>&1 &
for n in {names}; do
  # the node: own mount and UTS namespace, own tmpfs on /dev/shm and TmpFS
  unshare -m -u --propagation {propagation} sh -c '
    set -e
    hostname "$1"
    [ {private} = 0 ] || mount -t tmpfs -o size={shm},mode=1777 tmpfs /dev/shm
    mount -t tmpfs -o size={shm},mode=1777 tmpfs "$2/tmp/$1"
    if [ -e /etc/hosts ]; then mount --bind "$2/hosts" /etc/hosts; else mount --bind "$2/etc" /etc; fi
    exec slurmd -D -N "$1" -f "$2/slurm.conf"' node "$n" "$D" >>$D/log/slurmd-$n.out 2>&1 &
done
wait
"""


class Cluster:
    """``with Cluster(4) as c: c.run(["srun", "-N", "2", "hostname"])``"""

    def __init__(self, nodes: int = 4, cpus: int = 8, shm: str = "1g", private_shm: bool = True):
        self.names = [f"n{i + 1}" for i in range(nodes)]
        self.cpus = cpus
        self.shm = shm
        self.private_shm = private_shm  # False: all nodes share the host's /dev/shm
        self.proc: subprocess.Popen | None = None
        self.dir = ""

    # -- life cycle ---------------------------------------------------------
    def start(self, timeout: float = 60):
        # short path: the munge socket path must fit in sun_path
        self.dir = d = tempfile.mkdtemp(prefix="pmb-slurm-", dir="/tmp")
        os.chmod(d, 0o755)
        for sub in ("state", "log", "run", "munge", "spool", "tmp"):
            os.makedirs(os.path.join(d, sub))
        os.chmod(os.path.join(d, "munge"), 0o700)
        for n in self.names:
            os.makedirs(os.path.join(d, "spool", n))
            os.makedirs(os.path.join(d, "tmp", n))
        key = os.path.join(d, "munge", "munge.key")
        with open(os.open(key, os.O_WRONLY | os.O_CREAT, 0o400), "wb") as f:
            f.write(os.urandom(1024))
        base = _free_ports(len(self.names) + 1)
        self.ctld_port = base
        nodes = "\n".join(
            f"NodeName={n} NodeHostname=localhost NodeAddr=127.0.0.1 Port={base + 1 + i} "
            f"CPUs={self.cpus} RealMemory=1000 State=UNKNOWN"
            for i, n in enumerate(self.names))
        nodelist = f"n[1-{len(self.names)}]"
        self.conf = os.path.join(d, "slurm.conf")
        with open(self.conf, "w") as f:
            f.write(CONF.format(tag=os.path.basename(d)[-6:].lower().replace("_", ""),
                                ctld_port=base, d=d, nodes=nodes, nodelist=nodelist))
        hosts = f"127.0.0.1 localhost {' '.join(self.names)}\n::1 localhost\n"
        with open(os.path.join(d, "hosts"), "w") as f:  # the nodes' names resolve on the nodes
            f.write(hosts)
        if not os.path.exists("/etc/hosts"):
            # nothing to mount over (a bare debootstrap has no /etc/hosts): the
            # nodes get a copy of /etc that has one
            subprocess.run(["cp", "-a", "/etc", os.path.join(d, "etc")], check=True,
                           capture_output=True, timeout=300)
            with open(os.path.join(d, "etc", "hosts"), "w") as f:
                f.write(hosts)
        boot = os.path.join(d, "boot.sh")
        with open(boot, "w") as f:
            f.write(BOOT.format(d=d, names=" ".join(self.names), shm=self.shm,
                                private=int(self.private_shm),
                                propagation=mount_propagation() or "private"))
        self.log = open(os.path.join(d, "log", "boot.out"), "wb")
        self.proc = subprocess.Popen(
            ["unshare", "--pid", "--fork", "--kill-child", "--mount-proc", "-u",
             "--propagation", mount_propagation() or "private", "bash", boot],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=_die_with_parent)
        self.env = dict(os.environ, SLURM_CONF=self.conf)
        for k in list(self.env):
            if k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_")) and k != "SLURM_CONF":
                del self.env[k]
        deadline = time.monotonic() + timeout
        while True:
            r = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T"], env=self.env,
                               capture_output=True, text=True, timeout=30)
            idle = [ln for ln in r.stdout.splitlines() if ln.split()[1:] == ["idle"]]
            if len(idle) == len(self.names) and len(self.slurmd_pids()) == len(self.names):
                return self
            if self.proc.poll() is not None or time.monotonic() > deadline:
                logs = self.logs()  # before stop() removes them
                self.stop()
                raise RuntimeError(f"Slurm cluster did not come up:\n{r.stdout}{r.stderr}\n"
                                   + logs)
            time.sleep(0.2)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            # slurmd ignores SIGTERM; SIGKILL of unshare kills the namespace's
            # init, and with it every process in the namespace
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)
        self.proc = None
        if self.dir:
            deadline = time.monotonic() + 10
            while self._namespace_pids() and time.monotonic() < deadline:
                time.sleep(0.05)
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- helpers for tests --------------------------------------------------
    def _namespace_pids(self) -> list[int]:
        out = []
        for p in os.listdir("/proc"):
            if not p.isdigit():
                continue
            try:
                with open(f"/proc/{p}/cmdline", "rb") as f:
                    if self.dir.encode() in f.read():
                        out.append(int(p))
            except OSError:
                pass
        return out

    def slurmd_pids(self) -> dict[str, int]:
        """Node name -> host PID of its slurmd."""
        out = {}
        for pid in self._namespace_pids():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
            except OSError:
                continue
            if os.path.basename(argv[0]) == b"slurmd" and b"-N" in argv:
                out[argv[argv.index(b"-N") + 1].decode()] = pid
        return out

    def node_path(self, node: str, path: str) -> str:
        """The host's view of ``path`` on ``node`` (its own /dev/shm, ...)."""
        return f"/proc/{self.slurmd_pids()[node]}/root{path}"

    def node_pids(self, node: str, name: str) -> list[int]:
        """Host PIDs of the processes called ``name`` running on ``node``."""
        ns = os.readlink(f"/proc/{self.slurmd_pids()[node]}/ns/mnt")
        out = []
        for p in os.listdir("/proc"):
            if not p.isdigit():
                continue
            try:
                if (os.readlink(f"/proc/{p}/ns/mnt") == ns
                        and open(f"/proc/{p}/comm").read().strip() == name):
                    out.append(int(p))
            except OSError:
                pass
        return out

    def run(self, args, timeout=120, check=False, env=None, **kw):
        e = dict(self.env)
        if env:
            e.update(env)
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        r = subprocess.run(args, env=e, timeout=timeout, **kw)
        if check and r.returncode != 0:
            raise AssertionError(f"{args} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
        return r

    def sbatch(self, script: str, args=(), timeout=300, env=None, cwd=None):
        """Submit a batch script and wait for it: (state, exit code, output).
        The job is cancelled if it does not end within ``timeout``."""
        out = os.path.join(cwd or self.dir, f"sbatch-{time.monotonic_ns()}.out")
        r = self.run(["sbatch", "--parsable", "-o", out, *args, script], timeout=60, env=env,
                     cwd=cwd, check=True)
        jobid = r.stdout.strip().split(";")[0]
        self.last_job = jobid
        deadline = time.monotonic() + timeout
        while True:
            # array jobs: one line per task; done when all are
            info = self.run(["scontrol", "-o", "show", "job", jobid], timeout=30).stdout
            states = re.findall(r"JobState=(\S+)", info)
            codes = [int(c) for c in re.findall(r" ExitCode=(\d+):", info)]
            if states and all(st not in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING")
                              for st in states):
                break
            if time.monotonic() > deadline:
                self.run(["scancel", jobid], timeout=30)
                raise AssertionError(f"job {jobid} did not end in {timeout} s:\n{info}")
            time.sleep(0.2)
        text = ""
        for f in sorted(glob.glob(out.replace(".out", "*.out"))):
            with open(f, errors="replace") as fh:
                text += fh.read()
        state = states[0] if len(set(states)) == 1 else ",".join(states)
        return state, max(codes or [0]), text

    def logs(self) -> str:
        out = []
        logdir = os.path.join(self.dir, "log")
        for name in sorted(os.listdir(logdir)) if os.path.isdir(logdir) else []:
            with open(os.path.join(logdir, name), errors="replace") as f:
                tail = f.read()[-3000:]
            out.append(f"== {name}\n{tail}")
        return "\n".join(out)
