"""Benchmark section 9 (benchmarks/bench_sbcast.py) in a quick mode on the
real Slurm cluster: one repeat on 1 and 2 nodes.  Checks that the report has
its rows and that every method stages the same tree on every node; no timing
is asserted (performance is measured in benchmarks/, not here)."""

from __future__ import annotations

import os
import shutil

import pytest


def test_sbcast_comparison_quick(slurm_cluster, pkgroot, tmp_path):
    for tool in ("sbcast", "strace"):
        if not shutil.which(tool):
            pytest.skip(f"{tool} not installed")
    import bench_sbcast
    import run as bench_run
    rep = bench_run.Report(str(tmp_path))
    packages = f"{pkgroot['python']}:{pkgroot['env']}"
    traced = [bench_sbcast.TAR, bench_sbcast.pmb(1)]  # the other two: the same reads
    res = bench_sbcast.measure(rep, slurm_cluster, pkgroot["root"], packages, str(tmp_path),
                               nodes=(1, 2), reps=1, trace=traced)
    text = "".join(rep.parts)
    methods = [bench_sbcast.TAR, bench_sbcast.UNPACK, bench_sbcast.pmb(1), bench_sbcast.pmb(2)]
    assert res["methods"] == methods
    for n in (1, 2):
        for m in methods + [bench_sbcast.LAUNCH]:
            assert f"| {n} | {m} | " in text, text
            assert len(res["times"][(n, m)]) == 1
    # every method, every node: one tree, the same file list
    lists = res["lists"]
    for m in methods:
        assert len(lists[m]) == 3, (m, sorted(lists[m]))  # 1 node + 2 nodes
    first = next(iter(lists[bench_sbcast.TAR].values()))
    assert len(first) > 100
    for m in methods:
        for where, files in lists[m].items():
            assert files == first, (m, where, sorted(set(files) ^ set(first))[:10])
    assert res["same"] and "Same file list in every method's tree on every node: yes" in text
    # the load on the package root: sbcast reads (maps) each package on the
    # submit host, python-mpi on the first node only (rank 0), each once; no
    # other node touches it
    calls = res["calls"]
    assert list(calls) == traced
    size = sum(os.path.getsize(os.path.join(pkgroot["root"], p)) for p in packages.split(":"))
    tar, staged = calls[bench_sbcast.TAR], calls[bench_sbcast.pmb(1)]
    assert 0 < tar["client"][0] <= 4 and tar["client"][1] == size, tar
    assert all(c == (0, 0) for k, c in tar.items() if k != "client"), tar
    per_node = [c for k, c in sorted(staged.items()) if k != "client"]
    assert staged["client"] == (0, 0) and len(per_node) == 2, staged
    assert 0 < per_node[0][0] <= 4 and per_node[0][1] == size and per_node[1] == (0, 0), staged
    # plain tar leaves the placeholder where the manifest says
    assert "What plain `tar --zstd -xf` leaves" in text
    # nothing left on the nodes
    for node in slurm_cluster.names:
        assert not [e for e in os.listdir(slurm_cluster.node_path(node, "/dev/shm"))
                    if e.startswith("pmb-sbc-")]
