"""Bench the NETCONF session model of a handover, side by side on the same lab devices, the same
RPCs and the same edits:

* `baton`: Baton's `NetconfClient` (asyncssh: sessions on the event loop, no thread each);
* `ncclient`: ncclient's Manager over paramiko, blocking calls in a 128-thread pool (how Baton's
  adapter worked before; two threads per open session);
* `asyncssh`: a bare asyncssh prototype (framing and parsing only): the floor.

    .venv/bin/python bench/netconf_sessions.py [--devices 200[,1000]] [--repeat 3]
                                               [--concurrency 64] [--models baton,ncclient,asyncssh]

What each device gets, as the runner does it with one session per device: SSH (host key pinned,
the lab's client key), the hellos, <lock> candidate, <discard-changes>, the handover playbook's
two <edit-config>s (rendered by Baton's plan), a confirmed <commit> with a persist id, then —
once every device is committed (the office-wide barrier) — <get-config> of running, the
confirming <commit> with the persist id, <unlock>, <close-session>. Sessions stay open across the
barrier, as the runner holds them.

Each model runs in a child process of its own (clean CPU, RSS and thread counts); the lab runs in
another (`bench/handover.py --serve-lab`) and its CPU is reported separately. Every run is
checked in the lab (every device carries the alternate's ACL entry and contact, nothing pending)
and the lab is reset before the next. Measured: wall and CPU of the child from the first connect
to the last close, peak threads (sampled every 50 ms) and peak RSS (ru_maxrss).

The asyncssh model is a measurement prototype, not Baton's adapter: RFC 6242 framing through
Baton's own `Deframer`, replies parsed with lxml, <rpc-error> refused; none of the adapter's
bounds, error classification or fault handling. It answers one question: what would the session
model cost if Baton's adapter were built on it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent / "daemon"))

from handover import (  # noqa: E402  # the lab process and the rendered edits of bench/handover.py
    DEFAULT_WORKDIR,
    PLAYBOOKS,
    LabProcess,
    ansible_edits,
    cpu_self,
    log,
)

BASE = "urn:ietf:params:xml:ns:netconf:base:1.0"
HELLO = (
    f'<?xml version="1.0" encoding="UTF-8"?><hello xmlns="{BASE}"><capabilities>'
    f"<capability>{BASE}</capability><capability>urn:ietf:params:netconf:base:1.1</capability>"
    "</capabilities></hello>]]>]]>"
)
CONFIRM_TIMEOUT_S = 300


class Peak(threading.Thread):
    """The process's thread count, sampled every 50 ms; the peak."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.05):
            self.peak = max(self.peak, threading.active_count(), _threads())


def _threads() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return 0


# --- model: Baton's NetconfClient ---------------------------------------------------------------


async def _baton(spec: dict[str, Any]) -> list[str]:
    from baton.adapters.netconf import NetconfClient
    from baton.secrets import resolve

    inv_dir = Path(spec["inventory"])
    inventory = spec["loaded"]
    devices = [inventory.devices[t["id"]] for t in spec["targets"]]
    sem = asyncio.Semaphore(spec["concurrency"])
    persist = "bench-persist"
    sessions: dict[str, NetconfClient] = {}
    errors: list[str] = []

    async def first(device: Any) -> None:
        async with sem:
            nc = await NetconfClient.connect(device, resolve=lambda ref: resolve(ref, base_dir=inv_dir))
            sessions[device.id] = nc
            await nc.lock("candidate")
            await nc.discard_changes()
            for edit in spec["edits"]:
                await nc.edit_config("candidate", edit)
            await nc.commit(confirmed=True, timeout_s=CONFIRM_TIMEOUT_S, persist=persist)

    async def second(device: Any) -> None:
        async with sem:
            nc = sessions[device.id]
            running = await nc.get_config("running", spec["verify_filter"] or None)
            if spec["alternate"] not in running:
                errors.append(f"{device.id}: running lacks the alternate")
            await nc.commit(persist_id=persist)
            await nc.unlock("candidate")
            await nc.close()

    for phase in (first, second):
        for result in await asyncio.gather(*(phase(d) for d in devices), return_exceptions=True):
            if isinstance(result, BaseException):
                errors.append(f"{type(result).__name__}: {result}")
    return errors


# --- model: ncclient (as Baton used it until its sessions moved to asyncssh) --------------------


async def _ncclient(spec: dict[str, Any]) -> list[str]:
    """ncclient's own Manager over paramiko, every blocking call in a worker thread of a
    128-thread pool (what Baton's adapter did, minus its TICK-free session)."""
    from concurrent.futures import ThreadPoolExecutor

    from ncclient import manager

    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(max_workers=128, thread_name_prefix="ncclient"))
    sem = asyncio.Semaphore(spec["concurrency"])
    persist = "bench-persist"
    sessions: dict[str, Any] = {}
    errors: list[str] = []

    def connect(target: dict[str, Any]) -> Any:
        return manager.connect_ssh(
            host=target["address"],
            port=spec["ssh_port"],
            username="baton",
            key_filename=spec["client_key"],
            hostkey_b64=target["host_key"].split()[1],
            allow_agent=False,
            look_for_keys=False,
            timeout=30,
        )

    async def first(target: dict[str, Any]) -> None:
        async with sem:
            m = sessions[target["id"]] = await asyncio.to_thread(connect, target)
            await asyncio.to_thread(m.lock, "candidate")
            await asyncio.to_thread(m.discard_changes)
            for edit in spec["edits"]:
                await asyncio.to_thread(m.edit_config, config=edit, target="candidate")
            await asyncio.to_thread(m.commit, confirmed=True, timeout=str(CONFIRM_TIMEOUT_S), persist=persist)

    async def second(target: dict[str, Any]) -> None:
        async with sem:
            m = sessions[target["id"]]
            flt = spec["verify_filter"]
            spec_filter = flt if flt.startswith("<filter") else ("subtree", flt)
            reply = await asyncio.to_thread(m.get_config, source="running", filter=spec_filter)
            if spec["alternate"] not in str(reply.data_xml):
                errors.append(f"{target['id']}: running lacks the alternate")
            await asyncio.to_thread(m.commit, persist_id=persist)
            await asyncio.to_thread(m.unlock, "candidate")
            await asyncio.to_thread(m.close_session)

    for phase in (first, second):
        for result in await asyncio.gather(*(phase(t) for t in spec["targets"]), return_exceptions=True):
            if isinstance(result, BaseException):
                errors.append(f"{type(result).__name__}: {result}")
    return errors


# --- model: asyncssh (prototype) -----------------------------------------------------------------


class _AsyncSession:
    def __init__(self, conn: Any, writer: Any, reader: Any) -> None:
        from baton.adapters.netconf import Deframer

        self.conn, self.writer, self.reader = conn, writer, reader
        self.deframer = Deframer()
        self.chunked = False
        self.replies: list[bytes] = []
        self.next_id = 0

    async def _message(self) -> bytes:
        while not self.replies:
            data = await self.reader.read(65536)
            if not data:
                raise ConnectionError("session closed")
            self.replies.extend(self.deframer.feed(data, chunked=self.chunked))
        return self.replies.pop(0)

    async def hello(self) -> None:
        from lxml import etree  # type: ignore[import-untyped]

        self.writer.write(HELLO.encode())
        theirs = etree.fromstring(await self._message())
        caps = {c.text for c in theirs.iter(f"{{{BASE}}}capability")}
        self.chunked = "urn:ietf:params:netconf:base:1.1" in caps

    async def rpc(self, body: str) -> Any:
        from lxml import etree

        self.next_id += 1
        text = f'<rpc message-id="{self.next_id}" xmlns="{BASE}">{body}</rpc>'.encode()
        frame = b"\n#%d\n%s\n##\n" % (len(text), text) if self.chunked else text + b"]]>]]>"
        self.writer.write(frame)
        reply = etree.fromstring(await self._message())
        error = reply.find(f"{{{BASE}}}rpc-error")
        if error is not None:
            raise RuntimeError(etree.tostring(error, encoding="unicode")[:300])
        return reply


async def _asyncssh(spec: dict[str, Any]) -> list[str]:
    import asyncssh
    from lxml import etree

    key = asyncssh.read_private_key(spec["client_key"])
    sem = asyncio.Semaphore(spec["concurrency"])
    persist = "bench-persist"
    sessions: dict[str, _AsyncSession] = {}
    errors: list[str] = []
    edits = list(spec["edits"])

    async def first(target: dict[str, Any]) -> None:
        async with sem:
            pinned = asyncssh.import_public_key(target["host_key"])
            conn = await asyncssh.connect(
                target["address"],
                spec["ssh_port"],
                username="baton",
                client_keys=[key],
                known_hosts=([pinned], [], []),
                agent_path=None,
                config=[],
            )
            writer, reader, _ = await conn.open_session(subsystem="netconf", encoding=None)
            s = _AsyncSession(conn, writer, reader)
            sessions[target["id"]] = s
            await s.hello()
            await s.rpc("<lock><target><candidate/></target></lock>")
            await s.rpc("<discard-changes/>")
            for edit in edits:
                await s.rpc(f"<edit-config><target><candidate/></target>{edit}</edit-config>")
            await s.rpc(
                f"<commit><confirmed/><confirm-timeout>{CONFIRM_TIMEOUT_S}</confirm-timeout>"
                f"<persist>{persist}</persist></commit>"
            )

    async def second(target: dict[str, Any]) -> None:
        async with sem:
            s = sessions[target["id"]]
            flt = spec["verify_filter"]
            body = f'<filter type="subtree">{flt}</filter>' if flt and not flt.startswith("<filter") else flt
            running = await s.rpc(f"<get-config><source><running/></source>{body}</get-config>")
            if spec["alternate"] not in etree.tostring(running, encoding="unicode"):
                errors.append(f"{target['id']}: running lacks the alternate")
            await s.rpc(f"<commit><persist-id>{persist}</persist-id></commit>")
            await s.rpc("<unlock><target><candidate/></target></unlock>")
            await s.rpc("<close-session/>")
            s.conn.close()
            await s.conn.wait_closed()

    for phase in (first, second):
        for result in await asyncio.gather(*(phase(t) for t in spec["targets"]), return_exceptions=True):
            if isinstance(result, BaseException):
                errors.append(f"{type(result).__name__}: {result}")
    return errors


MODELS = {"baton": _baton, "ncclient": _ncclient, "asyncssh": _asyncssh}


def child(spec: dict[str, Any]) -> int:
    """One model, one run: print its figures as JSON."""
    from baton.logs import configure

    configure(level="warning", stream=sys.stderr)
    # Imports and the inventory before the clock starts: the figures are the sessions' only.
    import asyncssh  # noqa: F401
    import ncclient.manager  # noqa: F401

    import baton.adapters.netconf  # noqa: F401
    from baton.inventory import load_inventory

    spec["loaded"] = load_inventory(Path(spec["inventory"]))
    peak = Peak()
    peak.start()
    c0, t0 = cpu_self(), time.perf_counter()
    errors = asyncio.run(MODELS[spec["model"]](spec))
    wall, cpu = time.perf_counter() - t0, cpu_self() - c0
    peak.done.set()
    peak.join()
    figures = {
        "wall_s": wall,
        "cpu_s": cpu,
        "threads": peak.peak,
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "errors": errors[:5],
        "error_count": len(errors),
    }
    print(json.dumps(figures), flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)  # the spec on stdin
    parser.add_argument("--devices", default="200", help="lab sizes N, comma-separated")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--models", default="baton,ncclient,asyncssh")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR / "sessions")
    parser.add_argument("--ssh-port", type=int, default=38400)
    parser.add_argument("--snmp-port", type=int, default=36200)
    args = parser.parse_args()
    if args.child:
        return child(json.loads(sys.stdin.read()))

    from baton.inventory import load_inventory

    models = args.models.split(",")
    rows: list[str] = []
    ok = True
    for n in (int(x) for x in args.devices.split(",")):
        workdir = args.workdir / f"lab-{n}"
        workdir.mkdir(parents=True, exist_ok=True)
        log(f"lab: starting 2 offices × {n} devices (separate process)")
        lab = LabProcess(workdir, n, args.ssh_port, args.snmp_port)
        try:
            info = lab.info
            inventory = load_inventory(Path(info["inventory"]))
            edits, verify_filter = ansible_edits(
                inventory, PLAYBOOKS / "handover.yaml", info["office"], info["alternate"]
            )
            spec = {
                "inventory": info["inventory"],
                "client_key": info["client_key"],
                "ssh_port": info["ssh_port"],
                "targets": info["targets"],
                "edits": edits,
                "verify_filter": verify_filter,
                "alternate": info["alternate_contact"],
                "concurrency": args.concurrency,
            }
            samples: dict[str, list[dict[str, Any]]] = {m: [] for m in models}
            for rep in range(args.repeat):
                for model in models:  # interleaved: both models see the same box
                    p0 = lab.cpu()
                    out = subprocess.run(
                        [sys.executable, __file__, "--child"],
                        input=json.dumps({**spec, "model": model}),
                        capture_output=True,
                        text=True,
                        timeout=900,
                        check=False,
                    )
                    lines = out.stdout.strip().splitlines()
                    if out.returncode != 0 or not lines:
                        raise RuntimeError(f"{model} child failed ({out.returncode}): {out.stderr[-2000:]}")
                    figures = json.loads(lines[-1])
                    figures["lab_cpu_s"] = lab.cpu() - p0
                    check = lab.ask("check")
                    wrong = check["bad_count"] or check["checked"] != n
                    figures["ok"] = not figures["error_count"] and not wrong
                    if not figures["ok"]:
                        ok = False
                        log(f"  {model} N={n} run {rep}: NOT OK: {figures['errors']} {check['bad']}")
                    lab.ask("reset")
                    samples[model].append(figures)
                    log(
                        f"  {model} N={n} run {rep}: wall {figures['wall_s']:.2f} s, "
                        f"CPU {figures['cpu_s']:.2f} s, threads {figures['threads']}, "
                        f"RSS {figures['rss_mb']:.0f} MB, lab CPU {figures['lab_cpu_s']:.2f} s"
                    )
            for model in models:
                runs = samples[model]

                def med(key: str, runs: list[dict[str, Any]] = runs) -> float:
                    return statistics.median(r[key] for r in runs)

                rows.append(
                    f"| {n} | {model} | {med('wall_s'):.2f} s | {med('cpu_s'):.2f} s | "
                    f"{med('cpu_s') / n * 1000:.1f} ms | {med('threads'):.0f} | {med('rss_mb'):.0f} MB | "
                    f"{med('lab_cpu_s'):.2f} s | {sum(r['ok'] for r in runs)}/{len(runs)} |"
                )
        finally:
            lab.close()
    print("| N | session model | wall | CPU | CPU / device | peak threads | peak RSS | lab CPU | ok |")
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    load = os.getloadavg()
    print(f"\nload average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
