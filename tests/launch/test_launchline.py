"""The launch-line rewrite of ``python-mpi-bcast run`` (python_mpi_bcast/
launchline.py): pure, no I/O.  Each launcher's option forms, python's own
options (to find the script), and every refusal."""

from __future__ import annotations

import pytest

from python_mpi_bcast.launch.launchline import LaunchLineError, export_fix, rewrite, srun_export_fix

PM = "/opt/pmb/bin/python-mpi"


def rw(line: str, own=()):
    return rewrite(line.split(), PM, tuple(own))


@pytest.mark.parametrize("line, index, script", [
    # srun: getopt_long, short clusters, attached and separate values, optional values
    ("srun -n 4 python x.py a b", 3, "x.py"),
    ("srun -n4 python x.py", 2, "x.py"),
    ("srun --ntasks=4 python x.py", 2, "x.py"),
    ("srun --ntasks 4 -N 2 python3 x.py", 5, "x.py"),
    ("srun -lun 4 python x.py", 3, "x.py"),
    ("srun -lun4 python x.py", 2, "x.py"),
    ("srun -K python x.py", 2, "x.py"),                 # optional value: not taken apart
    ("srun -K1 python x.py", 2, "x.py"),
    ("srun --kill-on-bad-exit=1 --mpi=pmi2 python x.py", 3, "x.py"),
    ("srun --kill-on-bad-exit --mpi pmi2 python x.py", 4, "x.py"),
    ("srun --ntasks-per-node=2 --cpu-bind=cores --exact python x.py", 4, "x.py"),
    ("srun --ntask=4 python x.py", 2, "x.py"),          # unambiguous abbreviation
    ("srun -- python x.py", 2, "x.py"),
    ("/usr/bin/srun -n 2 /home/u/env/bin/python3.11 x.py", 3, "x.py"),
    # MPICH hydra
    ("mpiexec -n 4 python x.py", 3, "x.py"),
    ("mpiexec -np 4 -ppn 2 -genv A 1 -env B 2 -bind-to core python x.py", 13, "x.py"),
    ("mpiexec.hydra -n 2 -hosts a,b -genvall python x.py", 6, "x.py"),
    ("mpiexec -n=4 python x.py", 2, "x.py"),
    ("mpirun -f hosts -n 2 python x.py", 5, "x.py"),
    # Open MPI
    ("mpirun.openmpi -np 4 --mca btl self,vader --oversubscribe python x.py", 7, "x.py"),
    ("orterun -x PATH --map-by ppr:2:node --bind-to none python x.py", 7, "x.py"),
    ("mpirun --host a,b -x LD_LIBRARY_PATH --tag-output python x.py", 6, "x.py"),
    ("mpiexec --allow-run-as-root --oversubscribe -n 2 python x.py", 5, "x.py"),
    # aprun
    ("aprun -n 4096 -N 32 python x.py", 5, "x.py"),
    ("aprun -n 64 -d 2 -cc depth -j 1 -b python3 x.py", 10, "x.py"),
    ("aprun --pes 4 --pes-per-node 2 python x.py", 5, "x.py"),
    ("aprun -n4 python x.py", 2, "x.py"),
])
def test_each_launcher_rewrite(line, index, script):
    ll = rw(line)
    words = line.split()
    assert ll.python_index == index and ll.python == words[index]
    assert ll.argv == words[:index] + [PM] + words[index + 1:]
    assert ll.script == script


@pytest.mark.parametrize("args, script", [
    ("x.py a", "x.py"),
    ("-u x.py", "x.py"),
    ("-u -B -s -E x.py", "x.py"),
    ("-uBsE x.py", "x.py"),
    ("-X importtime x.py", "x.py"),
    ("-Ximporttime x.py", "x.py"),
    ("-W ignore -O x.py", "x.py"),
    ("-Werror::DeprecationWarning x.py", "x.py"),
    ("-I -OO x.py -c notpython", "x.py"),
    ("--check-hash-based-pycs never x.py", "x.py"),
    ("-- x.py", "x.py"),
    ("-c print(1) x.py", None),
    ("-uc print(1)", None),
    ("-m mod x.py", None),
    ("-mmod", None),
    ("- < in.py", None),
    ("", None),
])
def test_python_options_find_the_script(args, script):
    ll = rw(f"srun -n 2 python {args}")
    assert ll.script == script
    if script:
        assert ll.argv[ll.script_index] == script and ll.argv[ll.script_index - 1] != "-c"


def test_the_envs_own_interpreter_counts_as_python():
    ll = rw("mpiexec -n 2 /envs/x/bin/py x.py", own=["/envs/x/bin/py"])
    assert ll.python_index == 3


def test_unknown_option_before_a_python_is_taken_as_a_flag_or_one_value():
    assert rw("mpiexec -newflag python x.py").python_index == 2
    assert rw("mpiexec -newopt v python x.py").python_index == 3


@pytest.mark.parametrize("line, words", [
    ("foo -n 2 python x.py", ["'foo' is not a launcher run knows", "write it as:"]),
    ("python x.py", ["not a launcher", "python-mpi-bcast run mpiexec -n 4 python x.py"]),
    ("srun -n 4 ./a.out", ["srun starts './a.out', not python"]),
    ("srun bash -c python", ["srun starts 'bash', not python"]),
    ("mpiexec -n 4 ./a.out : -n 2 python y.py", ["MPMD", "one program per line"]),
    ("srun -n 2 python x.py : -n 2 python y.py", ["heterogeneous"]),
    ("srun --multi-prog conf", ["--multi-prog", "cannot be rewritten"]),
    ("mpiexec -configfile f", ["-configfile (an MPMD launch)"]),
    ("mpirun --app f", ["--app (an MPMD launch)"]),
    ("srun -n", ["srun option -n needs a value"]),
    ("srun --ntasks", ["srun option --ntasks needs 1 value"]),
    ("mpiexec -genv A", ["mpiexec option -genv needs 2 values"]),
    ("srun -n 2", ["srun starts no program"]),
    ("srun -y python x.py", ["srun option -y"]),
    ("mpiexec -weird a b python x.py", ["option -weird is not one run knows"]),
    ("srun -n 2 python -X", ["python option -X needs a value"]),
    ("srun -n 2 python -j x.py", ["python option -j"]),
    ("", ["no launch line"]),
])
def test_refusals_are_one_line_saying_how(line, words):
    with pytest.raises(LaunchLineError) as e:
        rw(line)
    msg = str(e.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, msg


def test_srun_export_list_gets_the_variables_and_none_is_refused():
    ll = rw("srun --export=HOME,PATH -n 2 python x.py")
    srun_export_fix(ll, ["PYTHON_MPI_PACKAGES", "PYTHON_MPI_PKGROOT"])
    assert ll.argv[1] == "--export=HOME,PATH,PYTHON_MPI_PACKAGES,PYTHON_MPI_PKGROOT"
    ll = rw("srun --export ALL,A=1 -n 2 python x.py")
    srun_export_fix(ll, ["PYTHON_MPI_PKGROOT"])
    assert ll.argv[2] == "ALL,A=1"
    ll = rw("srun --export=NONE -n 2 python x.py")
    with pytest.raises(LaunchLineError, match="--export=ALL"):
        srun_export_fix(ll, ["PYTHON_MPI_PKGROOT"])


ENV = {"PYTHON_MPI_PKGROOT": "/c a", "PYTHON_MPI_PACKAGES": "p.tar.zst"}


def test_open_mpi_gets_x_for_each_setting():
    ll = rw("mpirun --host a:2,b:2 -np 4 python -u x.py 1")
    export_fix(ll, ENV, open_mpi=True)
    assert ll.argv[:5] == ["mpirun", "-x", "PYTHON_MPI_PACKAGES", "-x", "PYTHON_MPI_PKGROOT"]
    assert ll.argv[ll.python_index] == PM and ll.script == "x.py"
    assert ll.argv[ll.python_index:] == [PM, "-u", "x.py", "1"]


def test_hydra_gets_genv_only_when_the_line_limits_the_environment():
    ll = rw("mpiexec -n 4 python x.py")
    export_fix(ll, ENV, open_mpi=False)
    assert ll.argv == ["mpiexec", "-n", "4", PM, "x.py"]
    for limit in ("-genvnone", "--envnone", "-genvlist HOME", "-envlist PATH"):
        ll = rw(f"mpiexec {limit} -n 4 python x.py")
        export_fix(ll, ENV, open_mpi=False)
        assert ll.argv[:7] == ["mpiexec", "-genv", "PYTHON_MPI_PACKAGES", "p.tar.zst",
                               "-genv", "PYTHON_MPI_PKGROOT", "/c a"], limit
        assert ll.argv[ll.python_index] == PM and ll.script == "x.py"


def test_srun_and_aprun_pass_the_environment_themselves():
    ll = rw("srun --export=HOME -n 2 python x.py")
    export_fix(ll, ENV, open_mpi=False)
    assert ll.argv[1] == "--export=HOME,PYTHON_MPI_PACKAGES,PYTHON_MPI_PKGROOT"
    ll = rw("aprun -n 2 python x.py")
    export_fix(ll, ENV, open_mpi=False)
    assert ll.argv == ["aprun", "-n", "2", PM, "x.py"]
