"""``python-mpi-bcast shell-init [bash|zsh|fish]``: shell code for the
user's start-up file that wraps ``pip``.

On a compute node (inside a batch job: ``SLURM_JOB_ID``, ``PBS_JOBID``,
``LSB_JOBID``, ``FLUX_JOB_ID`` or ``COBALT_JOBID`` is set, or the host name
matches a configured pattern) ``pip install``/``download``/``wheel`` run with
``--no-index --find-links WHEELHOUSE``, so they never reach for the internet
and find what was prepared on a login node.  On a login node ``pip install``
also looks in the wheelhouse, and ``pip download``/``pip wheel`` put what
they fetch or build into it.  ``PYTHON_MPI_BCAST_NODE=compute|login``
overrides the detection; ``PYTHON_MPI_BCAST_WHEELHOUSE`` the location.

The code is plain shell, generated once: it starts no Python of its own.
"""

from __future__ import annotations

import shlex

from . import __version__
from .errors import PmbError
from .paths import JOB_VARIABLES

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
_pmb_pip() {
    local cmd="$1" sub="" has_dest="" a wh
    shift
    for a in "$@"; do
        case "$a" in
            -d|--dest|--dest=*|-w|--wheel-dir|--wheel-dir=*) has_dest=1 ;;
            -*) ;;
            *) [ -z "$sub" ] && sub="$a" ;;
        esac
    done
    case "$sub" in
        install|download|wheel) ;;
        *) command "$cmd" "$@"; return ;;
    esac
    wh="$(_pmb_wheelhouse)"
    if _pmb_on_compute_node; then
        if [ ! -d "$wh" ]; then
            printf 'python-mpi-bcast: no wheelhouse at %s; on a login node run: python-mpi-bcast wheelhouse add PACKAGE...\n' "$wh" >&2
            return 1
        fi
        command "$cmd" "$@" --no-index --find-links "$wh"
        return
    fi
    mkdir -p -- "$wh" || return
    case "$sub" in
        download) [ -z "$has_dest" ] && set -- "$@" --dest "$wh" ;;
        wheel) [ -z "$has_dest" ] && set -- "$@" --wheel-dir "$wh" ;;
    esac
    command "$cmd" "$@" --find-links "$wh"
}
pip() { _pmb_pip pip "$@"; }
pip3() { _pmb_pip pip3 "$@"; }
# <<< python-mpi-bcast shell-init <<<
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
function _pmb_pip
    set -l cmd $argv[1]
    set -e argv[1]
    set -l sub ""
    set -l has_dest ""
    for a in $argv
        switch $a
            case -d --dest '--dest=*' -w --wheel-dir '--wheel-dir=*'
                set has_dest 1
            case '-*'
            case '*'
                test -z "$sub"; and set sub $a
        end
    end
    if not contains -- "$sub" install download wheel
        command $cmd $argv
        return
    end
    set -l wh (_pmb_wheelhouse)
    if _pmb_on_compute_node
        if not test -d "$wh"
            printf 'python-mpi-bcast: no wheelhouse at %s; on a login node run: python-mpi-bcast wheelhouse add PACKAGE...\n' "$wh" >&2
            return 1
        end
        command $cmd $argv --no-index --find-links $wh
        return
    end
    mkdir -p -- $wh; or return
    if test "$sub" = download; and test -z "$has_dest"
        set argv $argv --dest $wh
    else if test "$sub" = wheel; and test -z "$has_dest"
        set argv $argv --wheel-dir $wh
    end
    command $cmd $argv --find-links $wh
end
function pip --wraps pip
    _pmb_pip pip $argv
end
function pip3 --wraps pip3
    _pmb_pip pip3 $argv
end
# <<< python-mpi-bcast shell-init <<<
'''


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
    return (text.replace("@VERSION@", __version__).replace("@WHEELHOUSE@", wh)
            .replace("@JOBVARS@", jobvars).replace("@HOSTCASE@", hostcase))
