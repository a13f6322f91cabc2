"""``python-mpi-bcast shell-init [bash|zsh|fish]``: shell code for the
user's start-up file that keeps pip offline on compute nodes.

On a compute node (inside a batch job: ``SLURM_JOB_ID``, ``PBS_JOBID``,
``LSB_JOBID``, ``FLUX_JOB_ID`` or ``COBALT_JOBID`` is set, or the host name
matches a configured pattern) the shell exports ``PIP_NO_INDEX=1`` and
``PIP_FIND_LINKS=<wheelhouse>``: every way of calling pip (``pip``,
``pip3.11``, ``python -m pip``, pip inside a script, any option order)
installs offline from what was prepared on a login node; the arguments are
never parsed.  The ``pip``/``pip3``/``pip3.X`` functions add one thing on
top: when pip finds no wheel, they say which ``wheelhouse add NAME`` would
fix it.  On a login node those functions let ``pip install`` also look in
the wheelhouse and make ``pip download``/``pip wheel`` put what they fetch
or build into it (``PIP_DEST``, ``PIP_WHEEL_DIR``; a ``-d``/``-w`` given
wins).  ``PYTHON_MPI_BCAST_NODE=compute|login`` overrides the detection;
``PYTHON_MPI_BCAST_WHEELHOUSE`` the location.

The code is plain shell, generated once: it starts no Python of its own.
"""

from __future__ import annotations

import shlex

from .. import __version__
from ..support.errors import PmbError
from ..support.paths import JOB_VARIABLES

SHELLS = ("bash", "zsh", "fish")

_POSIX = r'''# >>> python-mpi-bcast shell-init (@VERSION@) >>>
# pip on compute nodes installs offline from the wheelhouse; on login nodes
# 'pip download' and 'pip wheel' fill it.  See 'python-mpi-bcast shell-init --help'.
_pmb_wheelhouse() { printf '%s\n' "${PYTHON_MPI_BCAST_WHEELHOUSE:-@WHEELHOUSE@}"; }
_pmb_on_compute_node() {
    case "${PYTHON_MPI_BCAST_NODE:-}" in
        compute) return 0 ;;
        login) return 1 ;;
    esac
    [ -n "@JOBVARS@" ] && return 0
@HOSTCASE@    return 1
}
# the wheelhouse as pip's find-links entry (a URL: pip splits the variable at spaces)
_pmb_find_links() { local wh; wh="$(_pmb_wheelhouse)"; printf 'file://%s\n' "${wh// /%20}"; }
if _pmb_on_compute_node; then
    # offline for every way pip is called (pip3.X, python -m pip, scripts)
    PIP_NO_INDEX=1
    PIP_FIND_LINKS="$(_pmb_find_links)"
    export PIP_NO_INDEX PIP_FIND_LINKS
fi
_pmb_pip() {
    local cmd="$1" wh err rc name
    shift
    wh="$(_pmb_wheelhouse)"
    if _pmb_on_compute_node; then
        err="$(mktemp "${TMPDIR:-/tmp}/pmb-pip.XXXXXX" 2>/dev/null)" || err=/dev/null
        PIP_NO_INDEX=1 PIP_FIND_LINKS="$(_pmb_find_links)" command "$cmd" "$@" 2>"$err"
        rc=$?
        [ "$err" = /dev/null ] && return "$rc"
        cat "$err" >&2
        if [ "$rc" -ne 0 ]; then
            if [ ! -d "$wh" ]; then
                printf 'python-mpi-bcast: no wheelhouse at %s; on a login node run: python-mpi-bcast wheelhouse add PACKAGE...\n' "$wh" >&2
            else
                name="$(sed -n 's/^.*No matching distribution found for \([^ ]*\).*$/\1/p' "$err" | head -n 1)"
                [ -n "$name" ] && printf 'python-mpi-bcast: %s is not in the wheelhouse %s (pip is offline in a job); on a login node run: python-mpi-bcast wheelhouse add %s\n' "$name" "$wh" "$name" >&2
            fi
        fi
        rm -f -- "$err"
        return "$rc"
    fi
    if [ -d "$wh" ]; then
        PIP_FIND_LINKS="$(_pmb_find_links)${PIP_FIND_LINKS:+ $PIP_FIND_LINKS}" \
            PIP_DEST="${PIP_DEST:-$wh}" PIP_WHEEL_DIR="${PIP_WHEEL_DIR:-$wh}" command "$cmd" "$@"
    else
        PIP_DEST="${PIP_DEST:-$wh}" PIP_WHEEL_DIR="${PIP_WHEEL_DIR:-$wh}" command "$cmd" "$@"
    fi
}
@POSIXFUNCS@# <<< python-mpi-bcast shell-init <<<
'''

_FISH = r'''# >>> python-mpi-bcast shell-init (@VERSION@) >>>
# pip on compute nodes installs offline from the wheelhouse; on login nodes
# 'pip download' and 'pip wheel' fill it.  See 'python-mpi-bcast shell-init --help'.
function _pmb_wheelhouse
    if set -q PYTHON_MPI_BCAST_WHEELHOUSE; and test -n "$PYTHON_MPI_BCAST_WHEELHOUSE"
        echo $PYTHON_MPI_BCAST_WHEELHOUSE
    else
        echo @WHEELHOUSE@
    end
end
function _pmb_on_compute_node
    switch "$PYTHON_MPI_BCAST_NODE"
        case compute
            return 0
        case login
            return 1
    end
    test -n "@JOBVARS@"; and return 0
@HOSTCASE@    return 1
end
# the wheelhouse as pip's find-links entry (a URL: pip splits the variable at spaces)
function _pmb_find_links
    printf 'file://%s\n' (string replace -a ' ' '%20' -- (_pmb_wheelhouse))
end
if _pmb_on_compute_node
    # offline for every way pip is called (pip3.X, python -m pip, scripts)
    set -gx PIP_NO_INDEX 1
    set -gx PIP_FIND_LINKS (_pmb_find_links)
end
function _pmb_pip
    set -l cmd $argv[1]
    set -e argv[1]
    set -l wh (_pmb_wheelhouse)
    if _pmb_on_compute_node
        set -l err (mktemp (set -q TMPDIR; and echo $TMPDIR; or echo /tmp)/pmb-pip.XXXXXX 2>/dev/null)
        if test -z "$err"
            env PIP_NO_INDEX=1 PIP_FIND_LINKS=(_pmb_find_links) $cmd $argv
            return
        end
        env PIP_NO_INDEX=1 PIP_FIND_LINKS=(_pmb_find_links) $cmd $argv 2>$err
        set -l rc $status
        cat $err >&2
        if test $rc -ne 0
            if not test -d "$wh"
                printf 'python-mpi-bcast: no wheelhouse at %s; on a login node run: python-mpi-bcast wheelhouse add PACKAGE...\n' "$wh" >&2
            else
                set -l name (sed -n 's/^.*No matching distribution found for \([^ ]*\).*$/\1/p' $err | head -n 1)
                test -n "$name"; and printf 'python-mpi-bcast: %s is not in the wheelhouse %s (pip is offline in a job); on a login node run: python-mpi-bcast wheelhouse add %s\n' $name $wh $name >&2
            end
        end
        rm -f -- $err
        return $rc
    end
    set -l vars
    if test -d "$wh"
        set -l links (_pmb_find_links)
        set -q PIP_FIND_LINKS; and set links "$links $PIP_FIND_LINKS"
        set -a vars "PIP_FIND_LINKS=$links"
    end
    set -q PIP_DEST; or set -a vars PIP_DEST=$wh
    set -q PIP_WHEEL_DIR; or set -a vars PIP_WHEEL_DIR=$wh
    env $vars $cmd $argv
end
@FISHFUNCS@# <<< python-mpi-bcast shell-init <<<
'''

#: the names the functions wrap (every pip3.X a Python 3 installs)
PIP_NAMES = ("pip", "pip3") + tuple(f"pip3.{x}" for x in range(6, 16))


def _check_pattern(p: str) -> str:
    if not p or any(c in p for c in "'\"`$\\;|&()<>\n "):
        raise PmbError(f"compute-host pattern {p!r} is not a plain glob (use letters, digits, "
                       f"'-', '.', '*', '?' and [...] only)")
    return p


def shell_code(shell: str, wheelhouse: str, compute_hosts: list[str] | None = None) -> str:
    """The shell code for ``shell``.  ``compute_hosts`` are glob patterns of
    host names that are compute nodes even outside a batch job."""
    if shell not in SHELLS:
        raise PmbError(f"unknown shell {shell!r}; use one of {', '.join(SHELLS)}")
    pats = [_check_pattern(p) for p in (compute_hosts or [])]
    if shell == "fish":
        jobvars = "".join(f"${v}" for v in JOB_VARIABLES)
        hostcase = ""
        if pats:
            hostcase = ("    switch (uname -n)\n        case " + " ".join(pats)
                        + "\n            return 0\n    end\n")
        text = _FISH
        wh = shlex.quote(wheelhouse)
    else:
        jobvars = "".join(f"${{{v}:-}}" for v in JOB_VARIABLES)
        hostcase = ""
        if pats:
            hostcase = ('    case "$(uname -n)" in\n        ' + "|".join(pats)
                        + ") return 0 ;;\n    esac\n")
        text = _POSIX
        # inside "${VAR:-...}": escape what double quotes would expand
        wh = "".join("\\" + c if c in '"$`\\' else c for c in wheelhouse)
    posix = "".join(f'{n}() {{ _pmb_pip {n} "$@"; }}\n' for n in PIP_NAMES)
    fish = "".join(f"function {n} --wraps {n}\n    _pmb_pip {n} $argv\nend\n" for n in PIP_NAMES)
    text = text.replace("@POSIXFUNCS@", posix).replace("@FISHFUNCS@", fish)
    return (text.replace("@VERSION@", __version__).replace("@WHEELHOUSE@", wh)
            .replace("@JOBVARS@", jobvars).replace("@HOSTCASE@", hostcase))
