"""Start-up hook of every interpreter run from a tree the launcher staged.

``pack`` copies this file into an interpreter package's site-packages as
``_python_mpi_bcast_staged.py``, next to ``_python_mpi_bcast_staged.pth``
(one line: ``import _python_mpi_bcast_staged``), so ``site`` runs it at
start-up in every rank and in every interpreter started from the tree
without the launcher: children through ``sys.executable``
(``MPI.Comm.Spawn``, ``MPIPoolExecutor``, ``subprocess``,
``multiprocessing``), exec mode's ranks, the second step of a stage-only
job.  It does nothing unless ``sys.prefix`` is a tree the launcher staged
(it holds the ``.pmb-ready`` stamp); then:

- ``mpi4py.MPI`` uses the launcher's MPI library.  The launcher leaves
  beside the tree, in ``<node dir>/.pmb-mpi-<tree name>``, a code-free ELF
  object whose SONAME is the name mpi4py's extension asks for and whose one
  dependency is the launcher's MPI library by its path (launcher/mpilib.c).
  Just before ``mpi4py.MPI`` is imported in a process that has no MPI
  library yet, it is loaded with ``RTLD_GLOBAL``: mpi4py's ABI finder and
  its extension's ``DT_NEEDED`` both land on that one library, never on the
  first ``libmpi`` the loader would find.  A rank in embed mode already has
  the launcher's MPI and is left alone.
- an mpi4py built for another MPI family than the launcher's is refused
  when ``mpi4py.MPI`` is imported, not before: the launcher puts its one
  line in ``PYTHON_MPI_MPI4PY_REFUSED`` and the import raises ImportError
  with it (printed as that one line if nothing catches it).
- nothing is written into the tree: byte code the import system would cache
  there (``-O``/``-OO`` ``.opt-N.pyc``, a source the unpacker patched) is
  not written.  Sources elsewhere (the user's own modules) are cached as
  usual.

It runs in the packed interpreter (Python 3.8 and later) and imports
nothing of python_mpi_bcast.
"""

import os
import sys

READY = ".pmb-ready"  # launcher/stage.c PMB_READY


def _record(tree):
    head, name = os.path.split(tree)
    return os.path.join(head, ".pmb-mpi-" + name)


class MPI4PyRefused(ImportError):
    """mpi4py of the staged tree is built for another MPI family than the
    launcher's (launcher/mpilib.c pmb_mpi4py_check): uncaught, it is
    reported as its one line."""


def _one_line_hook(previous):
    def excepthook(kind, value, tb):
        if isinstance(value, MPI4PyRefused):
            sys.stderr.write("%s\n" % value)
            sys.stderr.flush()
        else:
            previous(kind, value, tb)
    excepthook._pmb_refused = True
    return excepthook


class _LauncherMPI:
    """Meta path entry: before ``mpi4py.MPI`` is found, load the record."""

    def __init__(self, record):
        self.record = record

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "mpi4py.MPI":
            return None
        refused = os.environ.get("PYTHON_MPI_MPI4PY_REFUSED")
        if refused:
            # stays on sys.meta_path: every import of mpi4py.MPI fails alike
            if not getattr(sys.excepthook, "_pmb_refused", False):
                sys.excepthook = _one_line_hook(sys.excepthook)
            raise MPI4PyRefused(refused, name=fullname)
        try:
            sys.meta_path.remove(self)
        except ValueError:
            pass
        import ctypes
        try:
            ctypes.CDLL(None).MPI_Init
            return None  # MPI is in the process already (embed mode's rank)
        except AttributeError:
            pass
        if not os.path.exists(self.record):
            return None  # the tree is used without a launcher (unpacked by hand)
        try:
            ctypes.CDLL(self.record, mode=os.RTLD_NOW | os.RTLD_GLOBAL)
        except OSError as e:
            raise ImportError("python-mpi: cannot load the launcher's MPI library through %s "
                              "(%s); run the job's python-mpi again to renew it"
                              % (self.record, e)) from None
        return None


def _no_writes_under(tree):
    ext = sys.modules.get("_frozen_importlib_external")
    loader = getattr(ext, "SourceFileLoader", None)
    if loader is None or getattr(loader.set_data, "_pmb_tree", None):
        return
    set_data = loader.set_data

    def set_data_outside_tree(self, path, data, *, _mode=0o666):
        if path.startswith(tree):
            return None  # the staged tree is only read
        return set_data(self, path, data, _mode=_mode)

    set_data_outside_tree._pmb_tree = tree
    loader.set_data = set_data_outside_tree


def _install():
    tree = sys.prefix
    if not tree or not os.path.isfile(os.path.join(tree, READY)):
        return
    _no_writes_under(tree.rstrip("/") + "/")
    sys.meta_path.insert(0, _LauncherMPI(_record(tree.rstrip("/"))))


_install()
