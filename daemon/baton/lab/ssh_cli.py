"""A vendor-like CLI of a lab device, over SSH exec (`ssh dev 'show version'`) or a shell.

`configure ...` commands are a candidate edit plus a commit in the device's datastore, the same
path NETCONF takes, so a change made here is what get-config shows and what the ACL enforces.
The CLI refuses to commit over somebody else's uncommitted candidate changes, because the
candidate is shared and a CLI commit would otherwise publish half of a NETCONF edit.
"""

from __future__ import annotations

import asyncio
import shlex
from typing import TYPE_CHECKING
from xml.sax.saxutils import escape

import structlog
from lxml import etree  # type: ignore[import-untyped]  # no lxml-stubs in the env

from baton.lab.datastore import LAB_NS, NC_NS, RpcError, parse_xml

if TYPE_CHECKING:
    import asyncssh

    from baton.lab.netconf_server import DeviceServer

log = structlog.get_logger(__name__)

HELP = """\
show version | management | interfaces | running-config | sessions
configure management acl add OFFICE PREFIX
configure management acl remove OFFICE
configure aaa server add ADDR
configure contact TEXT
announce TEXT | retract TEXT
exit"""


class _CliError(Exception):
    pass


def _show(server: DeviceServer, what: str) -> str:
    device = server.device
    if what == "version":
        return (
            f"{device.sys_descr}\nhostname {device.id}\nrole {device.role}\noffice {device.office}\n"
            f"interfaces {len(device.interfaces)}"
        )
    if what == "management":
        mgmt = device.mgmt
        lines = [f"acl {office} {net}" for office, net in zip(mgmt.acl_offices, mgmt.acl, strict=False)]
        lines += [f"aaa server {s}" for s in mgmt.aaa_servers]
        lines += [f"trap-target {t.address} port {t.port}" for t in mgmt.trap_targets]
        lines += [f"syslog server {s}" for s in mgmt.syslog_servers]
        lines.append(f"contact {mgmt.contact}")
        return "\n".join(lines)
    if what == "interfaces":
        return "\n".join(
            f"{i.if_index:>4} {i.name:<16} {'up' if i.oper_up else 'down'}" for i in device.interfaces
        )
    if what == "running-config":
        nodes = device.datastore.config("running")
        return "\n".join(etree.tostring(n, encoding="unicode", pretty_print=True).rstrip() for n in nodes)
    if what == "sessions":
        return "\n".join(f"{s.id:>4} {s.kind:<8} {s.username:<12} {s.peer}" for s in server.sessions.values())
    raise _CliError(f"show {what}")


def _configure_xml(words: list[str]) -> str:
    """The `<config>` payload a configure command stands for."""
    match words:
        case ["management", "acl", "add", office, prefix]:
            body = f"<acl><entry><name>{escape(office)}</name><prefix>{escape(prefix)}</prefix></entry></acl>"
        case ["management", "acl", "remove", office]:
            body = f'<acl><entry nc:operation="delete"><name>{escape(office)}</name></entry></acl>'
        case ["aaa", "server", "add", addr]:
            body = f"<aaa><server>{escape(addr)}</server></aaa>"
        case ["contact", *text] if text:
            body = f"<contact>{escape(' '.join(text))}</contact>"
        case _:
            raise _CliError("configure " + " ".join(words))
    return f'<config xmlns:nc="{NC_NS}"><management xmlns="{LAB_NS}">{body}</management></config>'


def _configure(server: DeviceServer, session_id: int, words: list[str]) -> str:
    config = parse_xml(_configure_xml(words))
    ds = server.device.datastore
    if ds.is_candidate_dirty:
        return "% Error: candidate has uncommitted changes of another session"
    if server.device.faults.refuse_commits:
        return "% Error: commit refused (lab fault)"
    try:
        ds.edit_config("candidate", config, session_id)
        ds.commit(session_id)
    except RpcError as err:
        ds.discard_changes()
        return f"% Error: {err.message}"
    server.datastore_changed()
    log.info("lab.cli.committed", device=server.device.id, session=session_id, command=words[:3])
    return "commit complete"


def execute(server: DeviceServer, session_id: int, line: str) -> tuple[str, int]:
    """Run one CLI command: (output, exit status). Status 1 for unknown or failed commands."""
    try:
        words = shlex.split(line)
    except ValueError:
        words = line.split()
    try:
        match words:
            case []:
                return "", 0
            case ["show", what]:
                return _show(server, what), 0
            case ["configure", *rest]:
                out = _configure(server, session_id, rest)
                return out, 1 if out.startswith("%") else 0
            case ["announce" | "retract" as verb, *text] if text:
                # A command with an effect but no configuration (a notice to the NOC): the lab
                # remembers each one, so a test can tell a step that ran twice.
                server.device.history.append(f"{verb} {' '.join(text)}")
                return f"{verb}d: {' '.join(text)}", 0
            case ["help" | "?"]:
                return HELP, 0
            case _:
                raise _CliError(line.strip())
    except _CliError:
        return f"% Unknown command: {line.strip()}", 1


async def serve(
    server: DeviceServer, process: asyncssh.SSHServerProcess[bytes], username: str, peer: str
) -> None:
    """Serve one exec request or interactive shell on `process` (a bytes-mode channel)."""
    info = server.open_session("cli", username, peer, process.close)
    faults = server.device.faults
    try:
        if process.command is not None:
            out, status = execute(server, info.id, process.command)
            if faults.slow_s > 0:
                await asyncio.sleep(faults.slow_s)
            process.stdout.write((out + "\n").encode() if out else b"")
            process.exit(status)
            return
        tty = process.get_terminal_type() is not None
        newline = b"\r\n" if tty else b"\n"
        prompt = f"{server.device.id}#".encode()
        process.stdout.write(prompt)
        buf = b""
        while True:
            data = await process.stdin.read(4096)
            if not data or not faults.reaches(info.peer):
                break
            if tty:
                process.stdout.write(data.replace(b"\r", b"\r\n"))  # a terminal expects the echo
            buf += data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            while b"\n" in buf:
                raw, buf = buf.split(b"\n", 1)
                line = raw.decode(errors="replace").strip()
                if line in ("exit", "quit", "logout"):
                    process.exit(0)
                    return
                out, _ = execute(server, info.id, line)
                if faults.slow_s > 0:
                    await asyncio.sleep(faults.slow_s)
                if out:
                    process.stdout.write(out.encode().replace(b"\n", newline) + newline)
                process.stdout.write(prompt)
        process.exit(0)
    finally:
        server.end_session(info.id)
