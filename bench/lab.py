"""Bench the lab network: start-up time, RSS and lab-side CPU per request, for 100 and 1,000 devices.

    .venv/bin/python bench/lab.py [--sizes 100,1000] [--gets 2000] [--v3-gets 300] [--hellos 20]

The lab runs in this process (in a thread); the load comes from a client in a SEPARATE process
(`bench/lab.py --client ...`), so the CPU this process spends while the client runs is the lab's
cost of answering. Results go to stdout as a table; record them in bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "daemon"))

SYS_NAME = "1.3.6.1.2.1.1.5.0"


def cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


# --- the client (separate process) -------------------------------------------------------------


async def client_snmp(spec: dict[str, Any]) -> dict[str, Any]:
    from pysnmp.hlapi.v3arch.asyncio import (
        CommunityData,
        ContextData,
        ObjectIdentity,
        ObjectType,
        SnmpEngine,
        UdpTransportTarget,
        UsmUserData,
        get_cmd,
        usmAesCfb128Protocol,
        usmHMAC192SHA256AuthProtocol,
    )

    eng = SnmpEngine()
    if spec["v3"]:
        auth: Any = UsmUserData(
            spec["user"],
            spec["auth_key"],
            spec["priv_key"],
            authProtocol=usmHMAC192SHA256AuthProtocol,
            privProtocol=usmAesCfb128Protocol,
        )
    else:
        auth = CommunityData(spec["community"], mpModel=1)  # noqa: S508 (what the lab serves)
    addresses = spec["addresses"]
    targets = [await UdpTransportTarget.create((a, spec["port"]), timeout=2, retries=1) for a in addresses]
    ok = 0
    sem = asyncio.Semaphore(50)

    async def one(i: int) -> None:
        nonlocal ok
        async with sem:
            err, status, _, _ = await get_cmd(
                eng, auth, targets[i % len(targets)], ContextData(), ObjectType(ObjectIdentity(SYS_NAME))
            )
            if err is None and not status:
                ok += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(spec["count"])))
    wall = time.perf_counter() - t0
    eng.close_dispatcher()
    return {"ok": ok, "wall_s": wall}


async def client_hello(spec: dict[str, Any]) -> dict[str, Any]:
    import asyncssh

    key = asyncssh.read_private_key(spec["key"])
    hello = (
        b'<?xml version="1.0" encoding="UTF-8"?><hello xmlns="urn:ietf:params:xml:ns:netconf:base:1.0">'
        b"<capabilities><capability>urn:ietf:params:netconf:base:1.0</capability></capabilities></hello>]]>]]>"
    )
    get = (
        b'<rpc message-id="1" xmlns="urn:ietf:params:xml:ns:netconf:base:1.0"><get-config><source><running/>'
        b"</source></get-config></rpc>]]>]]>"
    )
    ok = 0
    t0 = time.perf_counter()
    for i in range(spec["count"]):
        address = spec["addresses"][i % len(spec["addresses"])]
        async with asyncssh.connect(
            address, spec["port"], username="baton", client_keys=[key], known_hosts=None, connect_timeout=10
        ) as conn:
            writer, reader, _ = await conn.open_session(subsystem="netconf", encoding=None)
            writer.write(hello + get)
            data = b""
            while data.count(b"]]>]]>") < 2:
                chunk = await asyncio.wait_for(reader.read(65536), 10)
                if not chunk:
                    break
                data += chunk
            if b"<data" in data:
                ok += 1
            writer.close()
    return {"ok": ok, "wall_s": time.perf_counter() - t0}


def run_client(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, __file__, "--client", kind, json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


# --- the lab side ------------------------------------------------------------------------------


def bench_size(n: int, args: argparse.Namespace) -> dict[str, Any]:
    import structlog

    from baton.lab.network import LabConfig, LabThread, select_offices

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))  # warnings only
    per_office = max(1, n // 10)
    with tempfile.TemporaryDirectory() as tmp:
        config = LabConfig(
            dir=Path(tmp),
            offices=select_offices("10"),
            devices_per_office=per_office,
            snmp_port=args.snmp_port,
            ssh_port=args.ssh_port,
        )
        t0 = time.perf_counter()
        cold_lab = LabThread(config)
        cold_lab.start(timeout_s=600)  # cold: generates and writes every host key
        cold = time.perf_counter() - t0
        cold_lab.stop()
        thread = LabThread(config)
        t0 = time.perf_counter()
        lab = thread.start(timeout_s=600)  # warm: keys exist, as on every later `baton lab run`
        startup = time.perf_counter() - t0
        rss = rss_mb()
        assert lab.secrets is not None
        addresses = [d.address for d in lab.devices.values()]
        base = {"addresses": addresses, "port": args.snmp_port, "community": lab.secrets.community}
        v3 = {
            "user": lab.secrets.v3_user,
            "auth_key": lab.secrets.v3_auth_key,
            "priv_key": lab.secrets.v3_priv_key,
        }
        row: dict[str, Any] = {
            "devices": len(addresses),
            "startup_s": startup,
            "cold_s": cold,
            "rss_mb": rss,
            "netconf": lab.netconf_available,
        }
        c0 = cpu_s()
        r = run_client("snmp", {**base, "v3": False, "count": args.gets})
        row["v2c_cpu_ms"] = (cpu_s() - c0) * 1000 / max(1, r["ok"])
        row["v2c_ok"] = f"{r['ok']}/{args.gets}"
        c0 = cpu_s()
        r = run_client("snmp", {**base, **v3, "v3": True, "count": args.v3_gets})
        row["v3_cpu_ms"] = (cpu_s() - c0) * 1000 / max(1, r["ok"])
        row["v3_ok"] = f"{r['ok']}/{args.v3_gets}"
        if lab.netconf_available and args.hellos:
            key = str(Path(tmp) / "lab" / "client_ed25519")
            c0 = cpu_s()
            r = run_client(
                "hello", {"addresses": addresses, "port": args.ssh_port, "key": key, "count": args.hellos}
            )
            row["nc_cpu_ms"] = (cpu_s() - c0) * 1000 / max(1, r["ok"])
            row["nc_ok"] = f"{r['ok']}/{args.hellos}"
            row["nc_wall_ms"] = r["wall_s"] * 1000 / max(1, args.hellos)
        thread.stop()
    return row


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--client", nargs=2, metavar=("KIND", "SPEC"), help=argparse.SUPPRESS)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--sizes", default="100,1000")
    parser.add_argument("--gets", type=int, default=2000)
    parser.add_argument("--v3-gets", type=int, default=300)
    parser.add_argument("--hellos", type=int, default=20)
    parser.add_argument("--snmp-port", type=int, default=26100)
    parser.add_argument("--ssh-port", type=int, default=28300)
    args = parser.parse_args()
    if args.client:
        kind, spec = args.client[0], json.loads(args.client[1])
        fn = client_snmp if kind == "snmp" else client_hello
        print(json.dumps(asyncio.run(fn(spec))))
        return 0
    if args.one:
        print(json.dumps(bench_size(args.one, args)))
        return 0
    rows = []
    for n in args.sizes.split(","):  # one process per size, so RSS is that lab's alone
        argv = [
            sys.executable,
            __file__,
            "--one",
            n,
            "--gets",
            str(args.gets),
            "--v3-gets",
            str(args.v3_gets),
        ]
        argv += [
            "--hellos",
            str(args.hellos),
            "--snmp-port",
            str(args.snmp_port),
            "--ssh-port",
            str(args.ssh_port),
        ]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=1800, check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    header = (
        f"{'devices':>7} {'cold s':>7} {'start s':>8} {'RSS MB':>7} {'v2c ok':>10} {'lab CPU/GET v2c':>16} "
        f"{'v3 ok':>8} {'lab CPU/GET v3':>15} {'NETCONF ok':>10} {'lab CPU/hello+get':>18}"
    )
    print(header)
    for r in rows:
        nc = f"{r['nc_ok']:>10} {r['nc_cpu_ms']:>15.2f} ms" if "nc_ok" in r else f"{'n/a':>10} {'n/a':>18}"
        print(
            f"{r['devices']:>7} {r['cold_s']:>7.2f} {r['startup_s']:>8.2f} {r['rss_mb']:>7.0f} "
            f"{r['v2c_ok']:>10} "
            f"{r['v2c_cpu_ms']:>13.2f} ms {r['v3_ok']:>8} {r['v3_cpu_ms']:>12.2f} ms {nc}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
