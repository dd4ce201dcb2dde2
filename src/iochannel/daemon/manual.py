"""``iochannel --man`` and ``iochannel --completion bash|zsh``.

Both are generated from what the parser is built from (:data:`.cli.OPTIONS`)
and from the chardev backends' schemas (what ``-chardev TYPE,help`` prints),
so the manual page and the completions name every option and backend the
command line accepts, and nothing else.

* :func:`man_page` — roff for ``man -l``: NAME, SYNOPSIS, DESCRIPTION,
  OPTIONS, CHARDEV BACKENDS (each with its keys), EXAMPLES, SEE ALSO;
* :func:`completion` — a bash or zsh script: the options, the backend types
  after ``-chardev`` (then their keys after a comma), the drivers after
  ``--blockdev driver=``, the export and address types, files after
  ``--config`` and ``--pidfile``.
"""

from __future__ import annotations

import shlex

from ..chardev.options import backend_names, options_help
from .cli import DOCUMENTATION, EXAMPLES, OPTIONS, synopsis
from .daemon import VERSION

__all__ = ["completion", "man_page"]

SUMMARY = "chardevs, relays, QMP and storage exports from a QEMU-style command line"

DESCRIPTION = """\
iochannel builds QEMU's character devices (chardevs) from options in QEMU's own syntax, \
relays them to each other, shares a console with many viewers through a hub, and answers \
QMP on a monitor chardev; it also serves block nodes over vhost-user-blk or NBD with \
qemu-storage-daemon's --blockdev, --export and --nbd-server options. \
Every option is checked, with the references between them, before anything starts; \
--check prints the resulting graph and exits.

Without arguments iochannel starts its built-in demo: a shell on a pseudo-terminal \
shared by viewers on a unix socket, a telnet port, a log file and the web console. \
The lines it prints at start-up are commands that reach each endpoint.

iochannel console TARGET is an interactive terminal on a console socket \
(iochannel console --help)."""


def _keys(backend: str) -> tuple[list[str], list[str]]:
    """A backend's own keys and every backend's keys, as ``-chardev TYPE,help`` lists them."""
    own, common = options_help(backend).split("options of every backend:\n")
    return [k.strip() for k in own.splitlines()[1:]], [k.strip() for k in common.splitlines()]


# ---- the manual page ------------------------------------------------------------------


def _roff(text: str) -> str:
    """*text* as roff: backslashes and minus signs escaped, no line read as a request."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join("\\&" + ln if ln.startswith((".", "'")) else ln for ln in text.split("\n"))


def man_page() -> str:
    """The manual page ``iochannel(1)`` in roff (``iochannel --man | man -l -``)."""
    version = "{}.{}.{}".format(*VERSION)
    out = [
        f'.TH IOCHANNEL 1 "" "iochannel {version}" "User Commands"',
        # Option names and key lists read best unhyphenated and ragged-right.
        ".nh",
        ".ad l",
        ".SH NAME",
        f"iochannel \\- {_roff(SUMMARY)}",
        ".SH SYNOPSIS",
        ".B iochannel",
        _roff(" ".join(synopsis())),
        ".br",
        ".B iochannel console",
        ".I TARGET",
        ".SH DESCRIPTION",
    ]
    for paragraph in DESCRIPTION.split("\n\n"):
        out += [".PP", _roff(paragraph)]
    out.append(".SH OPTIONS")
    for o in OPTIONS:
        names = ", ".join(f"\\fB{_roff(n)}\\fR" for n in o.names)
        value = f" \\fI{_roff(o.placeholder())}\\fR" if o.metavar else ""
        out += [".TP", names + value, _roff(o.help)]
    out += [
        ".SH CHARDEV BACKENDS",
        "The types \\fB\\-chardev\\fR takes, each with its keys "
        "(\\fB\\-chardev\\fR \\fITYPE\\fB,help\\fR lists them too).",
    ]
    common: list[str] = []
    for name in backend_names():
        own, common = _keys(name)
        out += [".TP", f"\\fB{_roff(name)}\\fR", _roff(", ".join(own))]
    out += [".TP", "every backend", _roff(", ".join(common))]
    out += [".SH EXAMPLES", ".nf", _roff(EXAMPLES).rstrip("\n"), ".fi"]
    out += [
        ".SH SEE ALSO",
        ".BR qemu\\-system\\-x86_64 (1),",
        ".BR qemu\\-storage\\-daemon (1),",
        ".BR qemu\\-nbd (8),",
        ".BR socat (1)",
        ".PP",
        _roff(f"The documentation: {DOCUMENTATION}."),
    ]
    return "\n".join(out) + "\n"


# ---- shell completion -------------------------------------------------------------------

_BASH = """\
# bash completion for iochannel: eval "$(iochannel --completion bash)"
_iochannel() {
    local line=${COMP_LINE:0:COMP_POINT}
    local cur=${line##*[[:space:]]}
    local head=${line%"$cur"}
    head=${head%"${head##*[![:space:]]}"}
    local prev=${head##*[[:space:]]} words=
    case $prev in
        -chardev|--chardev)
            if [[ $cur == *,* ]]; then
                local keys=
                case ${cur%%,*} in
@KEY_CASES@
                esac
                words=$(compgen -W "$keys @COMMON_KEYS@" -P "${cur%,*}," -S = -- "${cur##*,}")
            else
                words=$(compgen -W "@BACKENDS@" -- "$cur")
            fi ;;
@VALUE_CASES@
        --config|--pidfile) words=$(compgen -f -- "$cur") ;;
        *)
            local first=${head#*[[:space:]]}
            first=${first%%[[:space:]]*}
            # After "iochannel console": the client's arguments, file names by default.
            [[ $head == *[[:space:]]* && $first == console ]] && return
            local command=
            [[ $head == *[[:space:]]* ]] || command=console
            words=$(compgen -W "$command @OPTIONS@" -- "$cur") ;;
    esac
    COMPREPLY=($words)
    # readline replaces only the text after the last '=' or ':' (COMP_WORDBREAKS).
    local before=${cur%"${cur##*[=:]}"}
    COMPREPLY=("${COMPREPLY[@]#"$before"}")
    if [[ ${COMPREPLY[0]} == *= ]]; then compopt -o nospace 2>/dev/null; fi
}
complete -o default -F _iochannel iochannel
"""

_ZSH = """\
# zsh completion for iochannel (after compinit): eval "$(iochannel --completion zsh)"
_iochannel() {
    local prev=${words[CURRENT-1]}
    local -a cands
    case $prev in
        -chardev|--chardev)
            if [[ $PREFIX == *,* ]]; then
                local -a keys
                case ${PREFIX%%,*} in
@KEY_CASES@
                esac
                keys+=(@COMMON_KEYS@)
                compset -P '*,'
                compadd -S = -a keys
                return
            fi
            cands=(@BACKENDS@) ;;
@VALUE_CASES@
        --config|--pidfile) _files; return ;;
        *)
            [[ ${words[2]} == console ]] && (( CURRENT > 2 )) && { _files; return; }
            (( CURRENT == 2 )) && cands=(console)
            cands+=(@OPTIONS@) ;;
    esac
    compadd -a cands
}
compdef _iochannel iochannel
"""


def completion(shell: str) -> str:
    """The completion script for *shell*: ``"bash"`` or ``"zsh"``."""
    bash = shell == "bash"
    template = _BASH if bash else _ZSH
    key_cases = []
    common: list[str] = []
    for name in backend_names():
        own, common = _keys(name)
        words = " ".join(k.partition("=")[0] for k in own)
        value = f'keys="{words}"' if bash else f"keys=({words})"
        key_cases.append(f"{' ' * 20}{shlex.quote(name)}) {value} ;;")
    value_cases = [
        f"        {'|'.join(o.names)}) "
        + (
            f'words=$(compgen -W "{" ".join(o.values)}" -- "$cur") ;;'
            if bash
            else f"cands=({' '.join(o.values)}) ;;"
        )
        for o in OPTIONS
        if o.values and o.names[0] != "-chardev"
    ]
    fill = {
        "@KEY_CASES@": "\n".join(key_cases),
        "@COMMON_KEYS@": " ".join(k.partition("=")[0] for k in common),
        "@BACKENDS@": " ".join(next(o.values for o in OPTIONS if o.names[0] == "-chardev")),
        "@VALUE_CASES@": "\n".join(value_cases),
        "@OPTIONS@": " ".join(n for o in OPTIONS for n in o.names),
    }
    for mark, text in fill.items():
        template = template.replace(mark, text)
    return template
