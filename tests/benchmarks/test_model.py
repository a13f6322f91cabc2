"""Pure functions of the scale model (benchmarks/model.py): no MPI, fast."""
from dataclasses import replace

import pytest

import model
from model import MB, MiB

NODES = [1, 2, 3, 8, 10, 100, 1000, 4096, 10_000, 100_000]
HERE = model.Machine(name="test", read=500 * MB, alpha=2e-6, beta=1 / 5e9, unpack=400 * MB,
                     gunzip=200 * MB, write=2000 * MB, per_file=10e-6, cores=8)
PKG = model.Package(compressed=80 * MB, ratio=3.5, files=7000)


def test_bcast_algorithms_limits():
    a, b = 1e-6, 1e-9
    assert model.t_bcast(1e6, 1, a, b) == 0.0
    # two processes: one message, any algorithm's cost is alpha + n*beta (binomial)
    assert model.t_bcast(1e6, 2, a, b) == pytest.approx(a + 1e6 * b)
    # long messages: scatter + ring allgather, bandwidth term -> 2 n beta
    n = 16 * MiB
    assert model.t_bcast(n, 10_000, 0.0, b) == pytest.approx(2 * n * b, rel=1e-3)
    # ... and its latency term grows linearly in p
    assert model.t_bcast(n, 100_001, a, 0.0) == pytest.approx((17 + 100_000) * a)
    # short messages: binomial, log p
    assert model.t_bcast(100, 1024, a, 0.0) == pytest.approx(10 * a)
    # medium, power of two: scatter + recursive doubling
    assert model.t_bcast(100_000, 1024, a, 0.0) == pytest.approx(20 * a)


def test_fit_alpha_beta_exact():
    sizes = [1e3, 1e5, 1e6, 1e7]
    a, b = model.fit_alpha_beta(sizes, [3e-6 + s * 2e-10 for s in sizes])
    assert a == pytest.approx(3e-6) and b == pytest.approx(2e-10)


@pytest.mark.parametrize("design", ["ours", "d2016"])
def test_monotonic_in_nodes(design):
    # Monotonic within each of MPICH's algorithm regimes: below
    # MPIR_CVAR_BCAST_MIN_PROCS (8) MPICH uses a binomial tree, whose
    # 2 (alpha + n beta) at p = 3 is dearer than scatter + ring allgather's
    # ~1.75 n beta at p = 8, so the model (like MPICH) dips there.
    for nodes in ([1, 2, 3, 4, 5, 7], [8, 10, 100, 1000, 4096, 5310, 8192, 10_000, 100_000]):
        rows = model.scale_table(PKG, HERE, nodes)
        t = [r[design] for r in rows]
        assert all(x <= y + 1e-12 for x, y in zip(t, t[1:])), (nodes, t)


def test_monotonic_in_size_and_cores():
    small = model.ours(PKG, 1000, HERE)["total"]
    big = model.ours(replace(PKG, compressed=4 * PKG.compressed, files=4 * PKG.files), 1000, HERE)["total"]
    assert big > small
    t = [model.ours(PKG, 1000, replace(HERE, cores=q))["total"] for q in (1, 2, 8, 64)]
    assert all(x >= y for x, y in zip(t, t[1:]))


def test_ours_one_node_limit():
    # one node, fast read: pure unpack at cores x per-core rate (plus one chunk of fill)
    m = replace(HERE, read=1e15, cores=1)
    one = model.ours(PKG, 1, m)
    unpack = PKG.unpacked / m.unpack + PKG.files * m.per_file
    assert one["total"] == pytest.approx(unpack, rel=1e-6)
    assert one["bottleneck"] == "unpack"
    # slow read dominates: the total tends to S/R_read
    slow = replace(HERE, read=1 * MB)
    assert model.ours(PKG, 1, slow)["total"] == pytest.approx(PKG.compressed / slow.read, rel=0.05)


def test_2016_limits():
    d = model.design2016(PKG, 1, HERE)
    assert d["bcast"] == pytest.approx(PKG.compressed / HERE.read + PKG.compressed / HERE.write)
    assert d["tar"] == pytest.approx(PKG.unpacked / HERE.gunzip + PKG.unpacked / HERE.write
                                     + PKG.files * HERE.per_file)
    # untar per node does not depend on the node count without stragglers
    assert model.design2016(PKG, 100_000, HERE)["tar"] == d["tar"]


def test_ours_beats_2016_when_cores_help():
    for n in (1, 1000, 100_000):
        assert model.ours(PKG, n, HERE)["total"] < model.design2016(PKG, n, HERE)["total"]


# --- the published figures, fed the 2016 machines' published parameters -----

TOL = 2.0  # the target: within 2x


def _check():
    return {(r["machine"], r["nodes"], r["phase"]): r for r in model.published_check()}


def test_published_untar_within_2x():
    rows = _check()
    bw, ed = model.BLUE_WATERS.name, model.EDISON.name
    for key in [(bw, 8192, "tar"), (ed, 4, "tar")]:
        r = rows[key]
        assert 1 / TOL <= r["ratio"] <= TOL, r


def test_published_small_bcast_within_2x():
    r = _check()[(model.EDISON.name, 4, "bcast")]
    assert 1 / TOL <= r["ratio"] <= TOL, r


def test_known_misses_are_underpredictions():
    """Documented misses (README, Benchmarks): the model under-predicts the
    2016 broadcast at thousands of nodes (link figures give a floor, not what
    Cray MPT achieved) and the 5,310-node Edison untar (stragglers).  If a
    change makes these pass within 2x, move them up."""
    rows = _check()
    for key in [(model.BLUE_WATERS.name, 8192, "bcast"), (model.EDISON.name, 4096, "bcast"),
                (model.EDISON.name, 5310, "tar")]:
        assert rows[key]["ratio"] > TOL, rows[key]
