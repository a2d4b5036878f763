"""Third-party SNMPv3 clients, measured the way bench/poll.py measures Baton (run by poll.py).

Runs in an interpreter that has the candidates installed (poll.py --candidates PYTHON; poll.py
creates /var/tmp/baton-bench/venv-v3 with `pip install ezsnmp gufo-snmp netsnmp-cffi` on first
use), never in Baton's venv. argv[1] is JSON: {"agents": [[host, port], ...], "user": ...,
"auth": "SHA", "priv": "AES", "auth_key": ..., "priv_key": ..., "targets": T, "gets": N,
"oids": [...]}. For each candidate: build T sessions (one per simulated device, engine discovery
included, not timed), then N authPriv GETs of the OIDs round-robin over the sessions, and print
one JSON line per candidate with this process's CPU per GET. Nothing but loopback is contacted.

* gufo-snmp (Rust core, asyncio): 50 GETs in flight, one SnmpSession (one socket) per device.
* ezsnmp (SWIG over net-snmp's C library, synchronous): sequential GETs, one Session per device.
* netsnmp-cffi: its SNMPSession has no SNMPv3 (0.2.1: "TODO ... SNMPv3"); reported, not run.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any


def gufo(cfg: dict[str, Any]) -> dict[str, Any]:
    from gufo.snmp import Aes128Key, Aes256Key, Sha1Key, Sha256Key, Sha512Key, User
    from gufo.snmp.aio.client import SnmpSession

    auth_cls = {"SHA": Sha1Key, "SHA256": Sha256Key, "SHA512": Sha512Key}[cfg["auth"]]
    priv_cls = {"AES": Aes128Key, "AES256": Aes256Key}[cfg["priv"]]

    async def main() -> dict[str, Any]:
        user = User(
            cfg["user"],
            auth_key=auth_cls(cfg["auth_key"].encode()),
            priv_key=priv_cls(cfg["priv_key"].encode()),
        )
        agents = cfg["agents"]
        sessions = []
        for i in range(cfg["targets"]):
            host, port = agents[i % len(agents)]
            session = SnmpSession(host, port=port, user=user, timeout=2.0)
            await session.refresh()  # engine discovery
            sessions.append(session)
        oids = cfg["oids"]
        ok = 0
        cpu0 = time.process_time()
        wall0 = time.perf_counter()
        n = cfg["gets"]
        for start in range(0, n, 50):
            batch = [sessions[i % len(sessions)] for i in range(start, min(n, start + 50))]
            results = await asyncio.gather(*(s.get_many(oids) for s in batch), return_exceptions=True)
            ok += sum(isinstance(r, dict) and len(r) == len(oids) for r in results)
        cpu = time.process_time() - cpu0
        return {"gets": n, "ok": ok, "cpu_s": cpu, "wall_s": time.perf_counter() - wall0}

    return asyncio.run(main())


def ezsnmp(cfg: dict[str, Any]) -> dict[str, Any]:
    from ezsnmp import Session

    names = {"SHA": "SHA", "SHA256": "SHA-256", "SHA512": "SHA-512", "AES": "AES", "AES256": "AES-256"}
    agents = cfg["agents"]
    sessions = []
    for i in range(cfg["targets"]):
        host, port = agents[i % len(agents)]
        session = Session(
            hostname=host,
            port_number=str(port),
            version="3",
            security_level="authPriv",
            security_username=cfg["user"],
            auth_protocol=names[cfg["auth"]],
            auth_passphrase=cfg["auth_key"],
            privacy_protocol=names[cfg["priv"]],
            privacy_passphrase=cfg["priv_key"],
            timeout="2",
            retries="1",
        )
        session.get(cfg["oids"][0])  # engine discovery
        sessions.append(session)
    oids = cfg["oids"]
    ok = 0
    cpu0 = time.process_time()
    wall0 = time.perf_counter()
    for i in range(cfg["gets"]):
        try:
            ok += len(sessions[i % len(sessions)].get(oids)) == len(oids)
        except Exception:  # noqa: S112 - a failed GET is counted as not ok
            continue
    cpu = time.process_time() - cpu0
    return {"gets": cfg["gets"], "ok": ok, "cpu_s": cpu, "wall_s": time.perf_counter() - wall0}


def main() -> None:
    cfg = json.loads(sys.argv[1])
    for name, run in (("gufo-snmp", gufo), ("ezsnmp", ezsnmp)):
        try:
            result = run(cfg)
        except ImportError as exc:
            print(json.dumps({"candidate": name, "error": f"not installed ({exc})"}), flush=True)
            continue
        except Exception as exc:
            print(json.dumps({"candidate": name, "error": f"{type(exc).__name__}: {exc}"}), flush=True)
            continue
        print(json.dumps({"candidate": name, **result}), flush=True)
    print(json.dumps({"candidate": "netsnmp-cffi", "error": "no SNMPv3 in its SNMPSession (0.2.1)"}))


if __name__ == "__main__":
    main()
