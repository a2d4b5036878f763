"""The lab's control socket: JSON lines over a unix socket in the lab's state directory.

One request per line, `{"cmd": "power_off", "office": "busan-jung"}`; one reply per line,
`{"ok": true, "result": ...}` or `{"ok": false, "error": "one line"}`. The socket file is 0600:
whoever can reach it can break the lab, so only its owner may.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

if TYPE_CHECKING:
    from baton.lab.network import Lab

log = structlog.get_logger("baton.lab.control")

MAX_LINE = 64 * 1024
UNIX_PATH_MAX = 107


class ControlError(Exception):
    """The lab refused a request, or answered something unreadable."""


class LabNotRunning(ControlError):
    """Nothing listens on the control socket."""


def _arg(req: dict[str, Any], name: str, kind: type) -> Any:
    if name not in req:
        raise ControlError(f"missing argument {name!r}")
    value = req[name]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ControlError(f"argument {name!r} must be {kind.__name__}")
    return value


def _on(req: dict[str, Any]) -> bool:
    """A one-shot fault's optional "on" (default true: arm it; false disarms it)."""
    return True if "on" not in req else bool(_arg(req, "on", bool))


def _rpc(req: dict[str, Any]) -> str | None:
    """A reply fault's optional "rpc": the operation it waits for (absent or null: any RPC)."""
    return None if req.get("rpc") is None else str(_arg(req, "rpc", str))


def _source(req: dict[str, Any]) -> str | None:
    """A cut's optional "source": only the path from that address (absent or null: every path)."""
    return None if req.get("source") is None else str(_arg(req, "source", str))


def _roles(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ControlError("argument 'ups' must be a list of roles")
    return tuple(value)


def _commands(lab: Lab) -> dict[str, Callable[[dict[str, Any]], Awaitable[Any]]]:
    async def status(_: dict[str, Any]) -> Any:
        return lab.status()

    async def show(r: dict[str, Any]) -> Any:
        return lab.show(_arg(r, "device", str))

    return {
        "status": status,
        "show": show,
        "power_off": lambda r: lab.power_off(
            _arg(r, "office", str), float(r.get("grace_s", 0.0)), _roles(r.get("ups", []))
        ),
        "power_on": lambda r: lab.power_on(_arg(r, "office", str)),
        "cut": lambda r: lab.cut(_arg(r, "office", str), _source(r)),
        "uncut": lambda r: lab.uncut(_arg(r, "office", str), _source(r)),
        "device_down": lambda r: lab.device_down(_arg(r, "device", str)),
        "device_up": lambda r: lab.device_up(_arg(r, "device", str)),
        "link_down": lambda r: lab.link_down(_arg(r, "device", str), _arg(r, "if_index", int)),
        "link_up": lambda r: lab.link_up(_arg(r, "device", str), _arg(r, "if_index", int)),
        "slow": lambda r: lab.slow(_arg(r, "device", str), _arg(r, "seconds", float)),
        "refuse_commits": lambda r: lab.refuse_commits(_arg(r, "device", str), _arg(r, "on", bool)),
        "set_confirmed_commit": lambda r: lab.set_confirmed_commit(
            _arg(r, "device", str), _arg(r, "on", bool)
        ),
        "reset_config": lambda r: lab.reset_config(_arg(r, "device", str)),
        "load_config": lambda r: lab.load_config(_arg(r, "device", str), _arg(r, "running", str)),
        "drop_mid_rpc": lambda r: lab.drop_mid_rpc(_arg(r, "device", str), _on(r)),
        "drop_after_commit": lambda r: lab.drop_after_commit(_arg(r, "device", str), _on(r)),
        "no_reply": lambda r: lab.no_reply(_arg(r, "device", str), _on(r), _rpc(r)),
        "endless_reply": lambda r: lab.endless_reply(_arg(r, "device", str), _on(r), _rpc(r)),
        "garbage_reply": lambda r: lab.garbage_reply(_arg(r, "device", str), _on(r), _rpc(r)),
    }


class ControlServer:
    def __init__(self, lab: Lab, path: Path) -> None:
        self._lab = lab
        self.path = path
        self._server: asyncio.AbstractServer | None = None
        self._commands = _commands(lab)

    async def start(self) -> None:
        if len(os.fsencode(self.path)) > UNIX_PATH_MAX:
            raise ControlError(f"control socket path too long for a unix socket: {self.path}")
        if self.path.exists():
            if _is_listening(self.path):
                raise ControlError(f"a lab is already running with state dir {self.path.parent.parent}")
            self.path.unlink()  # left over by a lab that died
        old_umask = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(self._serve, path=str(self.path), limit=MAX_LINE)
        finally:
            os.umask(old_umask)
        log.info("lab.control_listening", path=str(self.path))

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                reply = await self.handle(line)
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def handle(self, line: bytes) -> dict[str, Any]:
        from baton.lab.network import LabError

        try:
            req = json.loads(line)
            if not isinstance(req, dict) or not isinstance(req.get("cmd"), str):
                raise ControlError('a request is a JSON object with a "cmd" string')
            command = self._commands.get(req["cmd"])
            if command is None:
                raise ControlError(
                    f"unknown command {req['cmd']!r}; known: {', '.join(sorted(self._commands))}"
                )
            result = await command(req)
        except (ControlError, LabError) as exc:
            return {"ok": False, "error": str(exc)}
        except json.JSONDecodeError:
            return {"ok": False, "error": "request is not JSON"}
        log.info("lab.control_command", cmd=req["cmd"])
        return {"ok": True, "result": result}


def _is_listening(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(str(path))
        except OSError:
            return False
        return True


def control_path(lab_dir: Path) -> Path:
    return lab_dir / "lab" / "control.sock"


def request(lab_dir: Path, cmd: str, timeout_s: float = 30.0, **args: Any) -> Any:
    """Send one command to the lab running in `lab_dir` (blocking); return its result."""
    path = control_path(lab_dir)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout_s)
        try:
            s.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise LabNotRunning(f"no lab running in {lab_dir} (no control socket at {path})") from exc
        except OSError as exc:
            raise LabNotRunning(f"cannot reach the lab in {lab_dir}: {exc.strerror}") from exc
        s.sendall(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                raise ControlError("the lab closed the control connection without answering")
            buf += chunk
    reply = json.loads(buf)
    if not reply.get("ok"):
        raise ControlError(str(reply.get("error", "unknown error")))
    return reply.get("result")
