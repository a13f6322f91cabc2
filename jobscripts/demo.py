"""The demo program: every rank imports numpy and mpi4py from wherever its
interpreter lives, computes, and rank 0 reports what happened."""

import os
import sys
import time

t_import = time.perf_counter()
import numpy as np  # noqa: E402
from mpi4py import MPI  # noqa: E402

t_import = time.perf_counter() - t_import

comm = MPI.COMM_WORLD
rng = np.random.default_rng(comm.rank)
a = rng.standard_normal((200, 200))
local = float(np.linalg.norm(a @ a.T))
total = comm.allreduce(local, op=MPI.SUM)
slowest_import = comm.reduce(t_import, op=MPI.MAX, root=0)
prefixes = comm.gather(sys.prefix, root=0)
if comm.rank == 0:
    print(f"ranks: {comm.size}, sum of norms: {total:.3f}")
    print(f"python: {sys.executable}")
    print(f"numpy {np.__version__} from {os.path.dirname(np.__file__)}")
    print(f"distinct sys.prefix (one per node when staged): {len(set(prefixes))}")
    print(f"slowest 'import numpy, mpi4py': {slowest_import:.3f} s")
