"""Machinery behind the fixtures: builders and clusters the tests stand on.

condaenv  -- a conda installation laid out as conda lays it out (conda_env)
mpibuild  -- the launcher built against other MPI installations
slurm     -- a real Slurm cluster on this machine (slurm_cluster)
fakessh   -- an ssh stand-in for mpiexec: one mount namespace per "node"
"""
