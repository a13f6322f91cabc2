"""MPI_Bcast timings between node leaders, for the scale model.

    mpiexec -n P python model_bcast.py SIZE... > out.json

Run with MPIR_CVAR_NUM_CLIQUES=P so every rank is its own simulated node;
prints {size: seconds per MPI_Bcast (median over iterations)} from rank 0.
"""
import json
import statistics
import sys

from mpi4py import MPI

comm = MPI.COMM_WORLD
node = comm.Split_type(MPI.COMM_TYPE_SHARED)
leaders = comm.Split(0 if node.rank == 0 else MPI.UNDEFINED, comm.rank)
out = {}
if leaders == MPI.COMM_NULL:
    sys.exit(0)
for size in map(int, sys.argv[1:]):
    buf = bytearray(size)
    iters = max(3, min(200, int(2e8 // max(size, 1))))
    times = []
    for i in range(iters + 1):
        leaders.Barrier()
        t0 = MPI.Wtime()
        leaders.Bcast([buf, MPI.BYTE], root=0)
        leaders.Barrier()  # time until the last leader has the data
        if i:
            times.append(MPI.Wtime() - t0)
    # subtract one barrier (measured alone) so the figure is the broadcast
    bar = []
    for i in range(20):
        t0 = MPI.Wtime()
        leaders.Barrier()
        bar.append(MPI.Wtime() - t0)
    out[size] = max(0.0, statistics.median(times) - statistics.median(bar))
if comm.rank == 0:
    print(json.dumps({"leaders": leaders.size, "times": out}))
