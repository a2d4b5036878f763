"""Operator commands: `status`, `offices`, `devices`, `handover`, `handback`, `pause`, `resume`,
`shadow`, `ack`, `runs`, `run`, `approvals`, `approve`, `deny`, `abort`, `resolve`, `grants`,
`audit`. They talk only to the control API (`baton.apiclient`); `audit verify --journal` also
reads a journal file offline.

Everything the daemon sends back is shown through `tables.safe_text`: a reason or a device's
answer that holds control characters is shown escaped, never sent raw to the terminal.

Tables for people, `--json` for scripts (the API's JSON, as is). Commands that change devices
(handover, handback) ask the operator to type the office id first, unless `--yes`; without a
terminal to ask on, they refuse rather than hang. After an accepted handover/handback the run is
followed live until it ends, and the exit code says how it ended.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import sqlite3
import sys
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

from baton import audit as audit_chain
from baton.apiclient import ApiClient, ApiError, ClientError, DaemonUnreachable, NotPermitted, read_token
from baton.cli import EX_CONFIG, EX_FAILURE, EX_OK, EX_SOFTWARE, EX_UNAVAILABLE, EX_USAGE
from baton.tables import duration, relative, render_table, safe_text

EX_NOPERM = 77
POLL_INTERVAL_S = 0.5
DEFAULT_SOCKET = "/run/baton/api.sock"
_DURATION = re.compile(r"^\+?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


class _Usage(Exception):
    """A command line that cannot be carried out as written (exit 64)."""


class _ConfigProblem(Exception):
    """The client's own configuration (the token file) is unusable (exit 78)."""


Command = Callable[[argparse.Namespace, ApiClient], int]


def register(sub: Any) -> None:
    common = argparse.ArgumentParser(add_help=False)
    where = common.add_argument_group("daemon")
    where.add_argument(
        "--socket",
        metavar="PATH",
        help=f"the API's unix socket (default: $BATON_SOCKET, else {DEFAULT_SOCKET})",
    )
    where.add_argument("--url", help="reach the API over TCP instead, e.g. https://baton1:8443")
    where.add_argument("--token-file", metavar="FILE", help="file holding the API token (with --url)")
    where.add_argument("--ca-file", metavar="FILE", help="CA bundle that signed the API's certificate")
    common.add_argument("--json", action="store_true", help="print the API's JSON (for scripts)")

    def add(name: str, func: Command, help_text: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = sub.add_parser(
            name, parents=[common], help=help_text, description=help_text[0].upper() + help_text[1:] + "."
        )
        parser.set_defaults(func=lambda args: _run(args, func))
        return parser

    add("status", _status, "show the daemon's flags, office phases and active alerts")
    add("offices", _offices, "list offices: phase, verdict, alternate, since when and why")
    p = add("devices", _devices, "list an office's devices and their verdicts")
    p.add_argument("office", metavar="OFFICE")

    p = add("handover", _handover, "declare an office closed and hand it over to its alternate")
    p.add_argument("office", metavar="OFFICE")
    p.add_argument("--reason", required=True, help="why (journaled with your name)")
    p.add_argument("--to", metavar="ALT", help="the alternate office (default: first available of its chain)")
    p.add_argument(
        "--until",
        metavar="WHEN",
        help="when the office reopens: ISO 8601 (local time unless a zone is given), epoch seconds, "
        "or a duration like 4h or 1d12h",
    )
    _confirm_options(p)

    p = add("handback", _handback, "hand a handed-over office back")
    p.add_argument("office", metavar="OFFICE")
    p.add_argument("--reason", required=True, help="why (journaled with your name)")
    _confirm_options(p)

    p = add("pause", _pause, "pause automation (operator commands still work)")
    p.add_argument("--reason", required=True, help="why (journaled with your name)")
    p = add("resume", _resume, "resume automation")
    p.add_argument("--reason", default="", help="why (journaled with your name)")
    p = add("shadow", _shadow, "switch shadow mode: observe and say what would be done, act not")
    p.add_argument("mode", choices=("on", "off"))
    p.add_argument("--reason", default="", help="why (journaled with your name)")
    p = add("ack", _ack, "acknowledge an office: lift its anti-flap block or clear FAILED")
    p.add_argument("office", metavar="OFFICE")
    p.add_argument("--reason", default="", help="why (journaled with your name)")

    p = add("runs", _runs, "list recent handover/handback runs")
    p.add_argument("--office", metavar="OFFICE", help="only this office's runs")
    p.add_argument("--limit", type=int, default=20, metavar="N", help="at most N runs (default 20)")
    p = add("run", _run_detail, "show one run, its steps, and its live progress if it is running")
    p.add_argument("run_id", metavar="ID")

    add("approvals", _approvals, "list the runs waiting for approvals")
    p = add("approve", _approve, "approve a run waiting for approvals (the last one starts it)")
    p.add_argument("approval_id", metavar="ID")
    p.add_argument("--reason", default="", help="why (journaled with your name)")
    p.add_argument(
        "--no-follow", action="store_true", help="return at once instead of following the run it starts"
    )
    p = add("deny", _deny, "deny a run waiting for approvals (the requester withdraws it so)")
    p.add_argument("approval_id", metavar="ID")
    p.add_argument("--reason", required=True, help="why (journaled with your name)")
    p = add("abort", _abort, "stop a run at its next safe point: it rolls back (followed live)")
    p.add_argument("run_id", metavar="RUN")
    p.add_argument("--reason", required=True, help="why (journaled with your name)")
    p.add_argument("--no-follow", action="store_true", help="return at once instead of following the run")
    p = add("resolve", _resolve, "admin: set an office's phase after checking its devices by hand")
    p.add_argument("office", metavar="OFFICE")
    p.add_argument("--phase", required=True, choices=("OPEN", "CLOSED", "HANDED_OVER"))
    p.add_argument("--reason", required=True, help="what was checked (journaled with your name)")
    p.add_argument("--to", metavar="ALT", help="for HANDED_OVER: the office that operates it now")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    add("grants", _grants, "show who may do what, for which offices, until when")
    p = add("audit", _audit, "the audit trail (JSON lines with --json); `audit verify` checks its chain")
    p.add_argument("action", nargs="?", choices=("verify",), help="verify: check the hash chain")
    p.add_argument("--office", metavar="OFFICE", help="only rows about this office")
    p.add_argument("--since", metavar="WHEN", help="from this time: ISO 8601, epoch seconds, or 1d, 4h ago")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="only the last N rows")
    p.add_argument(
        "--journal", metavar="FILE", help="verify this journal file offline instead of asking the daemon"
    )


def _confirm_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    parser.add_argument(
        "--no-follow", action="store_true", help="return at once with the run id instead of following the run"
    )


# --- plumbing ---------------------------------------------------------------------------------


def _fail(message: str) -> None:
    print(f"baton: {safe_text(message)}", file=sys.stderr)


def _say(text: object) -> None:
    """One line the daemon wrote, for a person's terminal."""
    print(safe_text(str(text)))


def _run(args: argparse.Namespace, func: Command) -> int:
    """Connect as the options say, run `func`, and turn every failure into one line and a code."""
    if func is _audit and args.action == "verify" and args.journal is not None:
        return _verify_offline(args)
    try:
        client = _client(args)
        return func(args, client)
    except _Usage as exc:
        _fail(str(exc))
        return EX_USAGE
    except _ConfigProblem as exc:
        _fail(str(exc))
        return EX_CONFIG
    except NotPermitted as exc:
        _fail(str(exc))
        return EX_NOPERM
    except DaemonUnreachable as exc:
        _fail(str(exc))
        return EX_UNAVAILABLE
    except ApiError as exc:
        _fail(exc.message)
        return _exit_for(exc.status)
    except ClientError as exc:
        _fail(str(exc))
        return EX_SOFTWARE


def _exit_for(status: int) -> int:
    if status in (401, 403):
        return EX_NOPERM
    if status in (400, 404, 405, 413):
        return EX_USAGE
    if status in (409, 422):
        return EX_FAILURE  # the core (or the dry run) said no, with its reason
    if status in (502, 503, 504):
        return EX_UNAVAILABLE
    return EX_SOFTWARE


def _client(args: argparse.Namespace) -> ApiClient:
    if args.url is None:
        if args.token_file is not None:
            raise _Usage("--token-file goes with --url (the unix socket knows who you are)")
        return ApiClient(socket_path=args.socket or os.environ.get("BATON_SOCKET") or DEFAULT_SOCKET)
    if args.token_file is None:
        raise _Usage("--url needs --token-file: the TCP API accepts only requests with a token")
    try:
        token = read_token(args.token_file)
    except ValueError as exc:
        # A missing or empty token file is a configuration problem, not a typo on the command line.
        raise _ConfigProblem(str(exc)) from None
    try:
        return ApiClient(url=args.url, token=token, ca_file=args.ca_file)
    except ValueError as exc:
        raise _Usage(str(exc)) from None


def _q(text: str) -> str:
    return urllib.parse.quote(text, safe="")


def _print_json(data: Any) -> None:
    print(_json_text(json.dumps(data, indent=2, ensure_ascii=False)))


_BIDI_JSON = re.compile("[\u202a-\u202e\u2066-\u2069\u200e\u200f\u061c]")


def _json_text(text: str) -> str:
    """JSON for a terminal: bidirectional overrides escaped too (JSON escapes control characters)."""
    return _BIDI_JSON.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def _width() -> int | None:
    return shutil.get_terminal_size().columns if sys.stdout.isatty() else None


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return dt.datetime.fromtimestamp(timestamp).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


# --- reading ----------------------------------------------------------------------------------


def _status(args: argparse.Namespace, client: ApiClient) -> int:
    data = client.get("/v1/status")
    if args.json:
        _print_json(data)
        return EX_OK
    now = float(data.get("now") or time.time())
    automation = "PAUSED (operator commands only)" if data["paused"] else "running"
    if data["shadow"]:
        automation += "; SHADOW mode (says what it would do, acts not)"
    phases = ", ".join(f"{n} {phase}" for phase, n in data["phases"].items() if n)
    rows = [
        ("vantage", f"{data['vantage']} (office {data['vantage_office']})"),
        ("lease", "held: this vantage acts" if data["leader"] else "not held: another vantage acts"),
        ("automation", automation),
        ("storm guard", "ENGAGED: automation frozen" if data["storm"] else "off"),
        ("offices", f"{data['offices']}: {phases or 'none'}"),
    ]
    if data.get("drills"):
        rows.append(("drills", ", ".join(data["drills"]) + " (closed in shadow mode: nothing runs)"))
    rows += _daemon_rows(data.get("daemon", {}), now)
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key.ljust(width)}  {safe_text(str(value))}")
    alerts = data.get("alerts", [])
    print(f"{'alerts'.ljust(width)}  {len(alerts) or 'none'}")
    if alerts:
        print(
            render_table(
                ["ALERT", "OFFICE", "SINCE", "MESSAGE"],
                [(a["alert"], a["office"], relative(a["at"], now), a["message"]) for a in alerts],
                width=_width(),
            )
        )
    return EX_OK


_SHOWN = frozenset({"vantage", "vantage_office", "leader", "storm", "paused", "shadow"})


def _daemon_rows(extra: dict[str, Any], now: float) -> list[tuple[str, str]]:
    rows = []
    for key, value in sorted(extra.items()):
        if key in _SHOWN:
            continue
        if key == "leadership" and isinstance(value, dict):
            rows += _leadership_rows(value)
        elif key == "uptime_s" and isinstance(value, int | float):
            rows.append(("uptime", duration(value)))
        elif key.endswith("_at") and isinstance(value, int | float):
            rows.append((key.removesuffix("_at").replace("_", " "), relative(value, now)))
        else:
            rows.append((key.replace("_", " "), _plain(value)))
    return rows


def _leadership_rows(view: dict[str, Any]) -> list[tuple[str, str]]:
    """Who leads, at which epoch, the lease time left, who is present and why (several vantages)."""
    leader, me = view.get("leader"), view.get("me")
    if view.get("held"):
        left = view.get("lease_left_s")
        lease = f"; lease {left:.1f} s left" if isinstance(left, int | float) else ""
        who = f"{me} (this vantage), epoch {view.get('epoch')}{lease}"
    elif leader:
        where = f" at {view['leader_api']}" if view.get("leader_api") else ""
        who = f"{leader}{where}"
    else:
        who = "none known"
    vantages = view.get("vantages") or []
    return [
        ("leader", who),
        ("vantages", ", ".join(map(str, vantages)) if vantages else "-"),
        ("leadership", str(view.get("reason") or "-")),
    ]


def _plain(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.1f}"
    if isinstance(value, dict | list):
        return json.dumps(value)
    return str(value)


def _offices(args: argparse.Namespace, client: ApiClient) -> int:
    data = client.get("/v1/offices")
    if args.json:
        _print_json(data)
        return EX_OK
    now = float(data.get("now") or time.time())
    rows = [
        (
            o["id"],
            o["phase"]
            + (" DRILL" if (o.get("closure") or {}).get("drill") else "")
            + (" (flapping)" if o["flapping"] else ""),
            o["verdict"],
            o["alternate"] or (f"({o['alternates'][0]})" if o["alternates"] else None),
            relative(o["since"], now),
            o["reason"],
        )
        for o in data["offices"]
    ]
    print(render_table(["OFFICE", "PHASE", "VERDICT", "ALTERNATE", "SINCE", "REASON"], rows, width=_width()))
    return EX_OK


def _devices(args: argparse.Namespace, client: ApiClient) -> int:
    data = client.get(f"/v1/offices/{_q(args.office)}/devices")
    if args.json:
        _print_json(data)
        return EX_OK
    rows = [
        (
            d.get("id"),
            d.get("role"),
            bool(d.get("critical")),
            d.get("address"),
            d.get("verdict"),
            d.get("reason"),
        )
        for d in data["devices"]
    ]
    print(render_table(["DEVICE", "ROLE", "CRIT", "ADDRESS", "VERDICT", "REASON"], rows, width=_width()))
    return EX_OK


def _runs(args: argparse.Namespace, client: ApiClient) -> int:
    if not 1 <= args.limit <= 1000:
        raise _Usage(f"--limit must be between 1 and 1000, not {args.limit}")
    params: dict[str, str | int] = {"limit": args.limit}
    if args.office:
        params["office"] = args.office
    data = client.get("/v1/runs", params)
    if args.json:
        _print_json(data)
        return EX_OK
    now = float(data.get("now") or time.time())
    rows = [
        (r["id"], r["office"], r["kind"], r["alternate"], r["status"], relative(r["started"], now), r["who"])
        for r in data["runs"]
    ]
    if not rows:
        print("no runs yet")
        return EX_OK
    print(
        render_table(["RUN", "OFFICE", "KIND", "ALTERNATE", "STATUS", "STARTED", "WHO"], rows, width=_width())
    )
    return EX_OK


def _run_detail(args: argparse.Namespace, client: ApiClient) -> int:
    run = client.get(f"/v1/runs/{_q(args.run_id)}")
    if args.json:
        _print_json(run)
        return EX_OK
    now = float(run.get("now") or time.time())
    _say(_result_line(run, now))
    _say(f"reason: {run.get('reason') or '-'} (by {run.get('who') or '-'})")
    print(f"started: {_when(run.get('started'))}; finished: {_when(run.get('finished'))}")
    steps = run.get("steps", [])
    if steps:
        rows = [(s["device"], s["name"], s["phase"], s["status"], s["detail"]) for s in steps]
        print(render_table(["DEVICE", "STEP", "PHASE", "STATUS", "DETAIL"], rows, width=_width()))
    if run.get("progress"):
        print("now:")
        print(_progress_table(run))
    return EX_OK if run["status"] in ("ok", "running") else EX_FAILURE


# --- commands ---------------------------------------------------------------------------------


def parse_when(text: str, now: float) -> float:
    """`--until` as epoch seconds: a duration from now (4h, 1d12h), epoch seconds, or ISO 8601
    (the operator's local time unless a zone is given)."""
    text = text.strip()
    match = _DURATION.match(text)
    if match and any(match.groups()):
        d, h, m, s = (int(g or 0) for g in match.groups())
        return now + d * 86400 + h * 3600 + m * 60 + s
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise _Usage(
            f"--until {text!r} is not a time: write e.g. 4h, 2025-06-01T08:00 or 2025-06-01T08:00+09:00"
        ) from None
    if when.tzinfo is None:
        when = when.astimezone()  # the operator's local time
    return when.timestamp()


def _confirm(question: str, office: str) -> int | None:
    """None if the operator typed the office id; else the exit code to return."""
    if not sys.stdin.isatty():
        _fail("this changes devices and needs confirmation, but stdin is not a terminal: pass --yes")
        return EX_USAGE
    sys.stderr.write(f"{question} Type the office id to confirm: ")
    sys.stderr.flush()
    answer = sys.stdin.readline().strip()
    if answer != office:
        _fail(f"not confirmed (expected '{office}'); nothing changed")
        return EX_FAILURE
    return None


def _office_label(office: dict[str, Any]) -> str:
    return (
        f"{office['id']} ({office['name']})"
        if office.get("name") not in (None, office["id"])
        else office["id"]
    )


def _devices_phrase(office: dict[str, Any]) -> str:
    n = int(office.get("devices") or 0)
    return f"This changes {n} device{'s' if n != 1 else ''}."


def _handover(args: argparse.Namespace, client: ApiClient) -> int:
    body: dict[str, Any] = {"reason": args.reason}
    if args.until is not None:
        body["until"] = parse_when(args.until, time.time())
    if args.to is not None:
        body["to"] = args.to
    office = client.get(f"/v1/offices/{_q(args.office)}")
    if not args.yes:
        if args.to is not None:
            target = args.to
        elif office["alternates"]:
            target = f"its alternate ({office['alternates'][0]} unless unavailable)"
        else:
            target = "its alternate (none is configured: nothing would run)"
        refused = _confirm(
            f"Hand over {_office_label(office)} to {target}? {_devices_phrase(office)}", args.office
        )
        if refused is not None:
            return refused
    answer = client.post(f"/v1/offices/{_q(args.office)}/handover", body)
    return _after_command(args, client, answer)


def _handback(args: argparse.Namespace, client: ApiClient) -> int:
    office = client.get(f"/v1/offices/{_q(args.office)}")
    if not args.yes:
        source = office.get("alternate") or "its alternate"
        refused = _confirm(
            f"Hand back {_office_label(office)} from {source}? {_devices_phrase(office)}", args.office
        )
        if refused is not None:
            return refused
    answer = client.post(f"/v1/offices/{_q(args.office)}/handback", {"reason": args.reason})
    return _after_command(args, client, answer)


def _after_command(args: argparse.Namespace, client: ApiClient, answer: dict[str, Any]) -> int:
    run_id = answer.get("run_id")
    approval_id = answer.get("approval_id")
    if run_id is None or args.no_follow:
        if args.json:
            _print_json(answer)
        else:
            _say(answer["reason"])
            if run_id is not None:
                _say(f"run {run_id} started; follow it with: baton run {run_id}")
            elif approval_id is not None:
                _say(
                    f"waiting for approval {approval_id}: another operator runs `baton approve {approval_id}`"
                )
        return EX_OK
    if not args.json:
        _say(answer["reason"])
    try:
        run = follow(client, run_id, show=not args.json)
    except KeyboardInterrupt:
        _fail(f"stopped following; run {run_id} goes on in the daemon (see: baton run {run_id})")
        return 130
    if args.json:
        _print_json({"command": answer, "run": run})
    else:
        _say(_result_line(run, float(run.get("now") or time.time())))
    return EX_OK if run["status"] == "ok" else EX_FAILURE


def _simple(args: argparse.Namespace, answer: dict[str, Any]) -> int:
    if args.json:
        _print_json(answer)
    else:
        _say(answer["reason"])
    return EX_OK


def _pause(args: argparse.Namespace, client: ApiClient) -> int:
    return _simple(args, client.post("/v1/pause", {"reason": args.reason}))


def _resume(args: argparse.Namespace, client: ApiClient) -> int:
    return _simple(args, client.post("/v1/resume", {"reason": args.reason}))


def _shadow(args: argparse.Namespace, client: ApiClient) -> int:
    return _simple(args, client.post("/v1/shadow", {"on": args.mode == "on", "reason": args.reason}))


def _ack(args: argparse.Namespace, client: ApiClient) -> int:
    return _simple(args, client.post(f"/v1/offices/{_q(args.office)}/ack", {"reason": args.reason}))


# --- approvals, abort, resolve, grants, audit ------------------------------------------------


def _approvals(args: argparse.Namespace, client: ApiClient) -> int:
    data = client.get("/v1/approvals")
    if args.json:
        _print_json(data)
        return EX_OK
    now = float(data.get("now") or time.time())
    rows = [
        (
            a["id"],
            a["office"],
            a["kind"] + (f" → {a['alternate']}" if a.get("alternate") else ""),
            a["requester"],
            f"{len(a['approvers'])}/{a['required']}"
            + (f" ({', '.join(a['approvers'])})" if a["approvers"] else ""),
            relative(a["expires"], now),
            a["reason"],
        )
        for a in data["approvals"]
    ]
    if not rows:
        print("no run waits for approvals")
        return EX_OK
    print(
        render_table(
            ["ID", "OFFICE", "RUN", "ASKED BY", "APPROVED", "EXPIRES", "REASON"], rows, width=_width()
        )
    )
    return EX_OK


def _approve(args: argparse.Namespace, client: ApiClient) -> int:
    answer = client.post(f"/v1/approvals/{_q(args.approval_id)}/approve", {"reason": args.reason})
    return _after_command(args, client, answer)


def _deny(args: argparse.Namespace, client: ApiClient) -> int:
    return _simple(args, client.post(f"/v1/approvals/{_q(args.approval_id)}/deny", {"reason": args.reason}))


def _abort(args: argparse.Namespace, client: ApiClient) -> int:
    answer = client.post(f"/v1/runs/{_q(args.run_id)}/abort", {"reason": args.reason})
    if args.no_follow:
        return _after_command(args, client, answer)
    code = _after_command(args, client, answer)
    if code == EX_OK:
        # It finished before it reached a point where it could stop: the abort came too late.
        _fail(f"run {args.run_id} finished before it could stop: it was not rolled back")
        return EX_FAILURE
    # The abort did what it was asked: the run ended rolled back.
    return EX_OK if code == EX_FAILURE else code


def _resolve(args: argparse.Namespace, client: ApiClient) -> int:
    office = client.get(f"/v1/offices/{_q(args.office)}")
    if not args.yes:
        refused = _confirm(
            f"Set {_office_label(office)} from {office['phase']} to {args.phase} by hand? Baton's own "
            "decision is overridden, loudly (journaled, an alert until an ack).",
            args.office,
        )
        if refused is not None:
            return refused
    body: dict[str, Any] = {"phase": args.phase, "reason": args.reason}
    if args.to is not None:
        body["to"] = args.to
    return _simple(args, client.post(f"/v1/offices/{_q(args.office)}/resolve", body))


def _grants(args: argparse.Namespace, client: ApiClient) -> int:
    data = client.get("/v1/grants")
    if args.json:
        _print_json(data)
        return EX_OK
    if not data["enforced"]:
        print("no operators are configured (baton.yaml operators:): everyone who gets in is an admin")
        return EX_OK
    groups = ", ".join(data.get("your_groups") or []) or "none"
    whose = "every grant" if data["all"] else "your grants"
    _say(f"you: {data['you']} (groups: {groups}); {whose}:")
    now = float(data.get("now") or time.time())
    rows = [
        (
            g["to"],
            g["role"],
            ", ".join(g["scope"]),
            "-" if g["until"] is None else f"{_when(g['until'])} ({relative(g['until'], now)})",
            "live" if g["live"] else "ENDED",
            ", ".join(g["members"]) if g.get("members") is not None else "",
        )
        for g in data["grants"]
    ]
    if not rows:
        print("none: every request of yours is refused (ask an admin)")
        return EX_OK
    print(render_table(["WHO", "ROLE", "SCOPE", "UNTIL", "STATE", "MEMBERS"], rows, width=_width()))
    return EX_OK


def _parse_since(text: str, now: float) -> float:
    """`--since`: a duration means that long ago; otherwise a time as `--until` takes it."""
    match = _DURATION.match(text.strip())
    if match and any(match.groups()):
        return 2 * now - parse_when(text, now)
    return parse_when(text, now)


def _audit(args: argparse.Namespace, client: ApiClient) -> int:
    if args.action == "verify":
        result = client.get("/v1/audit/verify")
        return _verified(args, result)
    params: dict[str, str | int] = {}
    if args.office:
        params["office"] = args.office
    if args.since:
        params["since"] = f"{_parse_since(args.since, time.time()):.3f}"
    if args.limit is not None:
        if not 1 <= args.limit <= 100_000:
            raise _Usage(f"--limit must be between 1 and 100000, not {args.limit}")
        params["limit"] = args.limit
    data = client.get("/v1/audit", params)
    if args.json:
        for record in data["records"]:  # JSON lines: one object per line, for a SIEM
            print(_json_text(json.dumps(record, ensure_ascii=False, sort_keys=True)))
        return EX_OK
    rows = [
        (r["id"], _when(r["at"]), r["kind"], r["office"], r["who"], r["what"], r["reason"])
        for r in data["records"]
    ]
    if not rows:
        print("the audit trail has no rows for that")
        return EX_OK
    print(render_table(["#", "AT", "KIND", "OFFICE", "WHO", "WHAT", "REASON"], rows, width=_width()))
    return EX_OK


def _verified(args: argparse.Namespace, result: dict[str, Any]) -> int:
    if args.json:
        _print_json(result)
    elif result["ok"]:
        print(f"audit trail intact: {result['rows']} row(s), every hash chained")
    else:
        _fail(f"audit trail broken at row {result['broken_id']}: {result['why']}")
    return EX_OK if result["ok"] else EX_FAILURE


def _verify_offline(args: argparse.Namespace) -> int:
    """`baton audit verify --journal FILE`: the chain of a journal file (a copy will do), read-only."""
    path = os.path.abspath(args.journal)
    if not os.path.isfile(path):
        _fail(f"no journal file {path}")
        return EX_USAGE
    try:
        conn = sqlite3.connect(f"file:{urllib.parse.quote(path)}?mode=ro", uri=True, timeout=5.0)
    except sqlite3.Error as exc:
        _fail(f"cannot open journal {path}: {exc}")
        return EX_FAILURE
    try:
        conn.row_factory = sqlite3.Row
        result = audit_chain.verify(conn.execute("SELECT * FROM audit ORDER BY id"))
    except sqlite3.Error as exc:
        _fail(f"cannot read the audit trail of {path}: {exc}")
        return EX_FAILURE
    finally:
        conn.close()
    view = {"ok": result.ok, "rows": result.rows, "broken_id": result.broken_id, "why": result.why}
    return _verified(args, view)


# --- following a run --------------------------------------------------------------------------


def device_progress(run: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """Device → (step, status): the last journaled step of each device, then the live progress."""
    devices: dict[str, tuple[str, str]] = {}
    for step in run.get("steps") or []:
        devices[step["device"]] = (step["name"], step["status"])
    for device, progress in (run.get("progress") or {}).items():
        if isinstance(progress, dict):
            devices[device] = (str(progress.get("step") or "-"), str(progress.get("status") or "-"))
        else:
            devices[device] = (str(progress), "")
    return devices


def _progress_table(run: dict[str, Any]) -> str:
    rows = [(device, step, status) for device, (step, status) in sorted(device_progress(run).items())]
    return render_table(["DEVICE", "STEP", "STATUS"], rows, width=_width())


def follow(client: ApiClient, run_id: str, *, show: bool) -> dict[str, Any]:
    """Poll the run until it is no longer running; show per-device progress. Returns the last view.

    On a terminal the compact table is redrawn in place; otherwise one line is printed per device
    state change, which reads well in a log or a CI job."""
    tty = show and sys.stdout.isatty()
    seen: dict[str, tuple[str, str]] = {}
    drawn = 0
    while True:
        run: dict[str, Any] = client.get(f"/v1/runs/{_q(run_id)}")
        devices = device_progress(run)
        if tty:
            now = float(run.get("now") or time.time())
            line = safe_text(_result_line(run, now))
            lines = [line, _progress_table(run)] if devices else [line]
            text = "\n".join(lines)
            if drawn:
                sys.stdout.write(f"\x1b[{drawn}F\x1b[J")  # back to the first line drawn, clear below
            sys.stdout.write(text + "\n")
            sys.stdout.flush()
            drawn = text.count("\n") + 1
        elif show:
            for device, state in sorted(devices.items()):
                if seen.get(device) != state:
                    step, status = state
                    print(safe_text(f"{device}: {step} {status}".rstrip()), flush=True)
            seen = devices
        if run.get("status") != "running":
            if tty and drawn:
                sys.stdout.write(f"\x1b[{drawn}F\x1b[J")  # the caller prints the result line
                sys.stdout.write(_progress_table(run) + "\n" if devices else "")
            return run
        time.sleep(POLL_INTERVAL_S)


def _result_line(run: dict[str, Any], now: float) -> str:
    kind = run.get("kind") or "run"
    preposition = "from" if kind == "handback" else "to"
    status = run.get("status", "unknown")
    end = run.get("finished") or now
    started = run.get("started")
    took = f" after {duration(end - started)}" if started else ""
    detail = f" ({run['detail']})" if run.get("detail") else ""
    label = {"running": "running", "ok": "ok", "unfinished": "UNFINISHED"}.get(status, status.upper())
    return (
        f"{kind} of {run.get('office')} {preposition} {run.get('alternate') or '-'}: "
        f"{label}{detail}{took} — run {run.get('id')}"
    )


__all__ = ["device_progress", "follow", "parse_when", "register"]
