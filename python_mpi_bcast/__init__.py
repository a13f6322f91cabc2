"""python-mpi-bcast: start Python fast on thousands of MPI ranks.

Rank 0 reads packaged environments once from the shared filesystem, MPI carries
the bytes to one leader per node, the leader unpacks them into node-local
memory, and every rank runs the relocated interpreter from there.
"""

__version__ = "0.1.0"
