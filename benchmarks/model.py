"""Scale model of deploy time (issue 14, item 4): pure functions, no MPI.

Deploy = from "rank 0 opens the package" to "every node has the unpacked tree".

Broadcast (MPICH, which Cray MPT derives from): for a message of n bytes over
p processes, MPICH's default Bcast/Ibcast selection is binomial tree below
MPIR_CVAR_BCAST_SHORT_MSG_SIZE (12 KiB) or when p < MPIR_CVAR_BCAST_MIN_PROCS
(8); scatter + recursive-doubling allgather for medium messages on a power of
two; and for long messages (>= MPIR_CVAR_BCAST_LONG_MSG_SIZE, 512 KiB, or any
non-power-of-two p) scatter (binomial) + ring allgather (van de Geijn):

    T_bin(n, p) = ceil(log2 p) * (alpha + n*beta)
    T_sra(n, p) = (ceil(log2 p) + p - 1) * alpha + 2 * (p-1)/p * n * beta

Our chunks (16 MiB) and the 2016 tool's whole tarball are both "long".

Ours (pipelined): m = ceil(S_c / c) chunks, k Ibcasts in flight, rank 0 reads
chunk i+1 while chunk i is on the wire, every core of a node unpacks shards:

    T_ours = c/R_read + T_sra(c, N) + c*r/(q*u)                      (fill)
           + (m-1) * max(c/R_read, 2c*beta, T_sra(c, N)/k, c*r/(q*u) + F_c*f/q)

2016 (whole-file MPI_Bcast, then one libarchive/gzip core per node):

    T_2016 = S_gz/R_read + T_sra(S_gz, N) + S_gz/W      ("bcast", as its log times it)
           + s * (S_u/G + S_u/W + F*f)                   ("tar", slowest node)

S_c compressed size, r = unpacked/compressed, S_u = r*S_c, F files (F_c per
chunk), q unpacking cores per node, u unpack MB/s per core (unpacked bytes),
f seconds per file created, G single-core gunzip MB/s (unpacked bytes), W
memory-file-system write MB/s, s straggler factor of the slowest node (1 =
none).  N = nodes (one leader per node in both designs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

MB = 1e6
MiB = 1 << 20

# MPICH defaults (src/mpi/coll/cvars: MPIR_CVAR_BCAST_*)
BCAST_SHORT = 12288
BCAST_LONG = 524288
BCAST_MIN_PROCS = 8


def log2ceil(p: int) -> int:
    return max(0, math.ceil(math.log2(p))) if p > 1 else 0


def t_binomial(n: float, p: int, alpha: float, beta: float) -> float:
    """Binomial-tree broadcast of n bytes over p processes."""
    return log2ceil(p) * (alpha + n * beta)


def t_scatter_ring(n: float, p: int, alpha: float, beta: float) -> float:
    """Scatter + ring allgather broadcast (MPICH's long-message algorithm)."""
    if p <= 1:
        return 0.0
    return (log2ceil(p) + p - 1) * alpha + 2.0 * (p - 1) / p * n * beta


def t_scatter_rd(n: float, p: int, alpha: float, beta: float) -> float:
    """Scatter + recursive-doubling allgather (medium messages, p a power of 2)."""
    if p <= 1:
        return 0.0
    return 2 * log2ceil(p) * alpha + 2.0 * (p - 1) / p * n * beta


def t_bcast(n: float, p: int, alpha: float, beta: float) -> float:
    """MPICH's default choice of algorithm for one MPI_Bcast of n bytes."""
    if p <= 1:
        return 0.0
    if n < BCAST_SHORT or p < BCAST_MIN_PROCS:
        return t_binomial(n, p, alpha, beta)
    if n < BCAST_LONG and p & (p - 1) == 0:
        return t_scatter_rd(n, p, alpha, beta)
    return t_scatter_ring(n, p, alpha, beta)


@dataclass(frozen=True)
class Machine:
    """Constants of one machine.  Rates in bytes/s, times in s."""
    name: str
    read: float          # package-root read, one client (rank 0)
    alpha: float         # broadcast per-message latency between nodes
    beta: float          # seconds per byte on one inter-node link
    unpack: float        # unpacked bytes/s per core, zstd + tar into memory fs
    gunzip: float        # unpacked bytes/s, one core, gzip + tar (2016 design)
    write: float         # bytes/s written into the memory file system, one core
    per_file: float      # seconds per file created
    cores: int           # cores per node that unpack (ours)
    straggler: float = 1.0  # slowdown of the slowest node (1 = none)


@dataclass(frozen=True)
class Package:
    compressed: float    # bytes on disk (.tar.zst ours / .tar.gz 2016)
    ratio: float         # unpacked / compressed
    files: int

    @property
    def unpacked(self) -> float:
        return self.compressed * self.ratio


def ours(pkg: Package, nodes: int, m: Machine, chunk: float = 16 * MiB,
         in_flight: int = 2) -> dict:
    """Predicted seconds per phase for the pipelined design; 'total' is the
    deploy time (phases overlap, so the parts do not add up)."""
    nchunks = max(1, math.ceil(pkg.compressed / chunk))
    c = pkg.compressed / nchunks  # mean chunk
    files_per_chunk = pkg.files / nchunks
    t_read = c / m.read
    t_chunk = t_bcast(c, nodes, m.alpha, m.beta)
    t_wire = 2.0 * (nodes - 1) / nodes * c * m.beta if nodes > 1 else 0.0
    t_unp = (c * pkg.ratio / m.unpack + files_per_chunk * m.per_file) / m.cores
    t_unp *= m.straggler
    step = max(t_read, t_wire, t_chunk / in_flight, t_unp)
    total = t_read + t_chunk + t_unp + (nchunks - 1) * step
    return {
        "read": pkg.compressed / m.read,
        "bcast": t_chunk + (nchunks - 1) * max(t_wire, t_chunk / in_flight),
        "unpack": nchunks * t_unp,
        "total": total,
        "bottleneck": max((("read", t_read), ("bcast", max(t_wire, t_chunk / in_flight)),
                           ("unpack", t_unp)), key=lambda x: x[1])[0],
    }


def design2016(pkg: Package, nodes: int, m: Machine) -> dict:
    """The 2016 tool: rank 0 reads the whole gzip tarball, one MPI_Bcast to
    the node leaders, each leader writes it to /dev/shm and untars it with
    one core.  'bcast' and 'tar' are the two times its log prints."""
    bcast = (pkg.compressed / m.read + t_bcast(pkg.compressed, nodes, m.alpha, m.beta)
             + pkg.compressed / m.write)
    tar = m.straggler * (pkg.unpacked / m.gunzip + pkg.unpacked / m.write
                         + pkg.files * m.per_file)
    return {"bcast": bcast, "tar": tar, "total": bcast + tar}


# ---------------------------------------------------------------------------
# The 2016 machines, fed published parameters (see PUBLISHED_SOURCES).

GZ_BUNDLE = 300 * MB   # Feng & Hand 2016: "close to 300 MB" for a typical conda env

# lzbench (github.com/inikep/lzbench README, Silesia corpus, Core i7-6700K
# 4.0 GHz): zlib 1.2.11 -6 decompresses at ~400 MB/s.  Scaled by clock only
# (no IPC correction, stated assumption) to the 2016 machines' cores.
ZLIB_INFLATE_4GHZ = 400 * MB

# Unpacked/gzip ratio and bytes per file: measured on this project's numpy +
# scipy benchmark venv (tar | gzip -6: 245.8 MB -> 74.2 MB, 5,485 files,
# 2026-11-22); a conda env of that era (Python 2.7, numpy, scipy, MKL) is
# assumed to be alike.
GZIP_RATIO = 3.3
BYTES_PER_FILE = 45e3

# Memory-file-system write of one core and per-file create cost on a 2016
# Cray compute node: not published; taken as 2 GB/s and 10 us (the order of
# what a tmpfs sustains on one core; both are minor terms).
W_2016 = 2000 * MB
F_2016 = 10e-6

# Single-client Lustre read: Cray/Lustre 2.x client with one stream reads at
# ~1 GB/s (LNET over Gemini/Aries, one OST stripe); stated assumption.
LUSTRE_1CLIENT = 1000 * MB

BLUE_WATERS = Machine(
    name="Blue Waters (Cray XE6, Gemini)",
    read=LUSTRE_1CLIENT,
    alpha=1.5e-6,            # Gemini MPI latency ~1.5 us (Alverson et al., HOTI 2010)
    beta=1 / (5.0e9),        # Gemini MPI bandwidth ~5 GB/s per direction (same source; ~6 GB/s peak injection)
    unpack=0,                # (zstd not used by the 2016 tool)
    gunzip=ZLIB_INFLATE_4GHZ * 2.3 / 4.0,  # AMD Opteron 6276, 2.3 GHz
    write=W_2016, per_file=F_2016,
    cores=16,                # 16 Bulldozer modules per XE node (32 integer cores)
)

EDISON = Machine(
    name="Edison (Cray XC30, Aries)",
    read=LUSTRE_1CLIENT,
    alpha=1.3e-6,            # Aries MPI latency ~1.3 us (Alverson et al., "Cray XC Series Network", 2012)
    beta=1 / (8.0e9),        # Aries MPI bandwidth ~8 GB/s per direction (same source; ~10 GB/s peak)
    unpack=0,
    gunzip=ZLIB_INFLATE_4GHZ * 2.4 / 4.0,  # Intel Xeon E5-2695 v2 (Ivy Bridge), 2.4 GHz
    write=W_2016, per_file=F_2016,
    cores=24,
)

CONDA_2016 = Package(compressed=GZ_BUNDLE, ratio=GZIP_RATIO,
                     files=int(GZ_BUNDLE * GZIP_RATIO / BYTES_PER_FILE))

# Published figures: (machine, nodes, phase, seconds, where)
PUBLISHED = [
    (BLUE_WATERS, 8192, "bcast", 5.59,
     "rainwoodman/python-mpi-bcast cray-xt/bench-8192.out ('5.58864 in bcast'); paper Fig. XT"),
    (BLUE_WATERS, 8192, "tar", 8.57,
     "same log ('8.57061 in tar')"),
    (EDISON, 4, "bcast", 0.62, "cray-xc30/bench-4.out ('0.617725 in bcast')"),
    (EDISON, 4, "tar", 7.69, "cray-xc30/bench-4.out ('7.68573 in tar')"),
    (EDISON, 4096, "bcast", 2.17, "cray-xc30/bench-4096.out ('2.167 in bcast')"),
    (EDISON, 4096, "tar", 11.16, "cray-xc30/bench-4096.out ('11.1573 in tar')"),
    (EDISON, 5310, "bcast", 2.16, "cray-xc30/bench-5310.out ('2.15751 in bcast')"),
    (EDISON, 5310, "tar", 43.1,
     "cray-xc30/bench-5310.out ('43.1168 in tar'); paper: slowest nodes 'in a non-optimal state'"),
]


def published_check(straggler: dict | None = None) -> list[dict]:
    """Model vs published figures; straggler maps (machine name, nodes) to a
    slowest-node factor (default none)."""
    rows = []
    for mach, nodes, phase, secs, where in PUBLISHED:
        s = (straggler or {}).get((mach.name, nodes), 1.0)
        pred = design2016(CONDA_2016, nodes, replace(mach, straggler=s))[phase]
        rows.append({"machine": mach.name, "nodes": nodes, "phase": phase,
                     "published": secs, "model": pred, "ratio": secs / pred,
                     "straggler": s, "source": where})
    return rows


def scale_table(pkg: Package, m: Machine, nodes_list, gz: Package | None = None) -> list[dict]:
    """Deploy time vs nodes, ours and 2016 (gz: the same tree as a gzip tar)."""
    out = []
    for n in nodes_list:
        o = ours(pkg, n, m)
        d = design2016(gz or pkg, n, m)
        out.append({"nodes": n, "ours": o["total"], "ours_bottleneck": o["bottleneck"],
                    "ours_bcast": o["bcast"], "ours_unpack": o["unpack"],
                    "d2016": d["total"], "d2016_bcast": d["bcast"], "d2016_tar": d["tar"]})
    return out


def fit_alpha_beta(sizes, times) -> tuple[float, float]:
    """Least-squares fit t = alpha + n*beta."""
    k = len(sizes)
    mx = sum(sizes) / k
    my = sum(times) / k
    sxx = sum((x - mx) ** 2 for x in sizes)
    sxy = sum((x - mx) * (y - my) for x, y in zip(sizes, times))
    beta = sxy / sxx if sxx else 0.0
    return my - beta * mx, beta
