"""`baton completion bash|zsh`: a shell completion script, generated from the command's own parser.

    source <(baton completion bash)     # in ~/.bashrc
    source <(baton completion zsh)      # in ~/.zshrc

The script completes commands, subcommands (`baton lab power-off`), options, choices
(`shadow on|off`), files and directories, and office ids: for an OFFICE argument or `--to`,
`--office`, it runs `baton completion --office-ids` (with the `--socket`/`--url`/`--token-file`
already on the command line), which asks the running daemon with a short timeout and prints
nothing at all when the daemon cannot be reached. The lab's commands take the lab's ids, which
the daemon does not know: those are not completed.

Theory of operation: `_spec` walks the argparse tree once and the script is data plus one
portable function, `_baton_candidates CWORD WORD...`, that prints the candidates for the word at
CWORD (one per line, or `@file` / `@dir`); the bash and zsh wrappers only turn that into
COMPREPLY or compadd. Generated, so a new command or option needs no change here.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from baton.cli import EX_OK

OFFICE_IDS_TIMEOUT_S = 1.0
CONNECTION_OPTIONS = ("--socket", "--url", "--token-file", "--ca-file")
_OFFICE_NAMES = frozenset({"office", "to", "alt"})


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "completion",
        help="print a bash or zsh completion script",
        description="Print a completion script for bash or zsh: commands, options and office ids "
        "(from the running daemon). Add `source <(baton completion bash)` to ~/.bashrc, or "
        "`source <(baton completion zsh)` to ~/.zshrc.",
    )
    parser.add_argument("shell", nargs="?", choices=("bash", "zsh"), help="the shell to complete for")
    parser.add_argument(
        "--office-ids",
        action="store_true",
        help="print the running daemon's office ids, one per line (what the script calls); "
        "nothing when the daemon is unreachable",
    )
    parser.add_argument("--socket", metavar="PATH", help="the API's unix socket (as for operator commands)")
    parser.add_argument("--url", help="the API over TCP (with --token-file)")
    parser.add_argument("--token-file", metavar="FILE", help="file holding the API token (with --url)")
    parser.add_argument("--ca-file", metavar="FILE", help="CA bundle that signed the API's certificate")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.office_ids:
        for office in office_ids(args):
            print(office)
        return EX_OK
    if args.shell is None:
        print("baton completion: name a shell: bash or zsh", file=sys.stderr)
        return 64
    from baton.cli import build_parser

    spec = _spec(build_parser())
    print(bash_script(spec) if args.shell == "bash" else zsh_script(spec))
    return EX_OK


def office_ids(args: argparse.Namespace) -> list[str]:
    """The daemon's office ids, or none when it cannot be asked (completion must never complain)."""
    from baton.apiclient import ApiClient, ClientError, read_token

    try:
        if args.url is not None:
            token = read_token(args.token_file) if args.token_file else None
            client = ApiClient(
                url=args.url, token=token, ca_file=args.ca_file, timeout_s=OFFICE_IDS_TIMEOUT_S
            )
        else:
            socket_path = args.socket or os.environ.get("BATON_SOCKET") or "/run/baton/api.sock"
            client = ApiClient(socket_path=socket_path, timeout_s=OFFICE_IDS_TIMEOUT_S)
        data = client.get("/v1/offices")
    except (ClientError, ValueError, OSError):
        return []
    offices = data.get("offices") if isinstance(data, dict) else None
    if not isinstance(offices, list):
        return []
    return [str(o["id"]) for o in offices if isinstance(o, dict) and isinstance(o.get("id"), str)]


# --- what the parser accepts ---------------------------------------------------------------------


@dataclass
class Command:
    """One (sub)command: its subcommands, options, what each option's value and each positional is."""

    path: str  # "" for baton itself, "lab power-off"
    subcommands: list[str] = field(default_factory=list)
    options: list[str] = field(default_factory=list)
    values: dict[str, str] = field(default_factory=dict)  # option → kind of its value
    positionals: list[str] = field(default_factory=list)  # kind of each
    choices: dict[str, list[str]] = field(default_factory=dict)  # "--opt" or "#N" → words


def _kind(action: argparse.Action, in_lab: bool) -> str:
    if action.choices is not None:
        return "choice"
    names = {str(action.dest).lower(), str(action.metavar or "").lower()}
    if names & _OFFICE_NAMES and not in_lab:
        return "office"
    metavar = str(action.metavar or "")
    if metavar == "DIR" or action.dest == "dir":
        return "dir"
    if metavar in ("FILE", "PATH") or action.type is Path:
        return "file"
    return "text"


def _spec(parser: argparse.ArgumentParser, path: str = "") -> Iterator[Command]:
    command = Command(path)
    in_lab = path.split(" ")[0] == "lab"
    for action in parser._actions:  # argparse keeps no public list of its actions
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                command.subcommands.append(name)
                yield from _spec(child, f"{path} {name}".strip())
            continue
        if action.help == argparse.SUPPRESS and action.dest != "help":
            continue
        if action.option_strings:
            command.options.extend(action.option_strings)
            if action.nargs == 0:
                continue
            kind = _kind(action, in_lab)
            for option in action.option_strings:
                command.values[option] = kind
                if kind == "choice":
                    command.choices[option] = [str(c) for c in action.choices or ()]
        else:
            kind = _kind(action, in_lab)
            if kind == "choice":
                command.choices[f"#{len(command.positionals)}"] = [str(c) for c in action.choices or ()]
            command.positionals.append(kind)
    yield command


# --- the scripts ---------------------------------------------------------------------------------


def _words(words: list[str]) -> str:
    return "printf '%s\\n' " + " ".join(shlex.quote(w) for w in words) if words else ":"


def _case(function: str, entries: list[tuple[str, str]], comment: str) -> str:
    lines = [f"# {comment}", f"{function}() {{", '    case "$1" in']
    lines += [f"        {shlex.quote(key)}) {body} ;;" for key, body in entries]
    lines += ["    esac", "}"]
    return "\n".join(lines)


def _data(spec: Iterator[Command]) -> str:
    commands = list(spec)
    subs = [(c.path, _words(c.subcommands)) for c in commands if c.subcommands]
    opts = [(c.path, _words(c.options)) for c in commands if c.options]
    values = [(f"{c.path}|{o}", f"echo {k}") for c in commands for o, k in c.values.items()]
    positionals = [(f"{c.path}|{i}", f"echo {k}") for c in commands for i, k in enumerate(c.positionals)]
    choices = [(f"{c.path}|{key}", _words(words)) for c in commands for key, words in c.choices.items()]
    return "\n\n".join(
        [
            _case("_baton_subs", subs, "subcommands of a command path"),
            _case("_baton_opts", opts, "options of a command path"),
            _case("_baton_value", values, "kind of an option's value (no output: the option takes none)"),
            _case("_baton_positional", positionals, "kind of the N-th positional argument"),
            _case("_baton_choices", choices, "the words of a choice"),
        ]
    )


# Portable between bash and zsh (positional parameters and case only; no arrays, no splitting;
# no variable named `path`, which zsh ties to PATH).
_CORE = r"""
# _baton_candidates CWORD WORD...: the candidates for WORD number CWORD (0 is the command), one
# per line; "@file" or "@dir" when a file or directory name is wanted.
_baton_candidates() {
    local cword=$1 i=0 w cur= cmdpath= npos=0 kind= key= sub= pending=
    local sock= url= tokf= caf= cmd=
    shift
    for w in "$@"; do
        if [ "$i" -eq 0 ]; then
            cmd=$w; i=1; continue
        fi
        if [ "$i" -eq "$cword" ]; then
            cur=$w; break
        fi
        i=$((i + 1))
        if [ -n "$pending" ]; then
            case $pending in
                --socket) sock=$w ;; --url) url=$w ;; --token-file) tokf=$w ;; --ca-file) caf=$w ;;
            esac
            pending=; continue
        fi
        case $w in
            --*=*) continue ;;
            -*) [ -n "$(_baton_value "$cmdpath|$w")" ] && pending=$w; continue ;;
        esac
        sub=$(_baton_subs "$cmdpath")
        case "$npos
$sub
" in
            0*"
$w
"*) cmdpath=${cmdpath:+$cmdpath }$w ;;
            *) npos=$((npos + 1)) ;;
        esac
    done
    if [ -n "$pending" ]; then
        kind=$(_baton_value "$cmdpath|$pending"); key=$pending
    else
        case $cur in
            -*) _baton_opts "$cmdpath"; return ;;
        esac
        sub=$(_baton_subs "$cmdpath")
        if [ "$npos" -eq 0 ] && [ -n "$sub" ]; then
            printf '%s\n' "$sub"; return
        fi
        kind=$(_baton_positional "$cmdpath|$npos"); key="#$npos"
    fi
    case $kind in
        office)
            set -- completion --office-ids
            [ -n "$sock" ] && set -- "$@" --socket "$sock"
            [ -n "$url" ] && set -- "$@" --url "$url"
            [ -n "$tokf" ] && set -- "$@" --token-file "$tokf"
            [ -n "$caf" ] && set -- "$@" --ca-file "$caf"
            "${cmd:-baton}" "$@" 2>/dev/null ;;
        file) echo @file ;;
        dir) echo @dir ;;
        choice) _baton_choices "$cmdpath|$key" ;;
    esac
}
"""

_BASH = r"""
_baton() {
    local cur=${COMP_WORDS[COMP_CWORD]} out
    out=$(_baton_candidates "$COMP_CWORD" "${COMP_WORDS[@]}")
    case $out in
        @file) compopt -o filenames 2>/dev/null; COMPREPLY=($(compgen -f -- "$cur")) ;;
        @dir) compopt -o filenames 2>/dev/null; COMPREPLY=($(compgen -d -- "$cur")) ;;
        *) local IFS=$'\n'; COMPREPLY=($(compgen -W "$out" -- "$cur")) ;;
    esac
}
complete -F _baton baton
"""

_ZSH = r"""
_baton() {
    local out
    local -a items
    out=$(_baton_candidates $((CURRENT - 1)) "${words[@]}")
    [[ -n $out ]] || return 1
    case $out in
        @file) _files ;;
        @dir) _files -/ ;;
        *) items=("${(@f)out}"); compadd -- "${items[@]}" ;;
    esac
}
if ! (( $+functions[compdef] )); then
    autoload -Uz compinit && compinit
fi
compdef _baton baton
"""


def bash_script(spec: Iterator[Command]) -> str:
    header = "# bash completion for baton; generated by `baton completion bash`.\n"
    return header + _data(spec) + "\n" + _CORE + _BASH


def zsh_script(spec: Iterator[Command]) -> str:
    header = "#compdef baton\n# zsh completion for baton; generated by `baton completion zsh`.\n"
    return header + _data(spec) + "\n" + _CORE + _ZSH
