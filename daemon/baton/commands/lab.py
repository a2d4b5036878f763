"""`baton lab`: run the simulated multi-office network, and inject faults into a running one.

`baton lab run` runs in the foreground until SIGINT/SIGTERM; every other subcommand talks to it
through the control socket in `--dir` (exit 69 when no lab runs there).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Any

from baton.cli import EX_FAILURE, EX_OK, EX_SOFTWARE, EX_UNAVAILABLE, EX_USAGE

DEFAULT_DIR = Path("baton-lab")


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def _on_off(text: str) -> bool:
    if text not in ("on", "off"):
        raise argparse.ArgumentTypeError("expected on or off")
    return text == "on"


def _roles(text: str) -> list[str]:
    roles = [r.strip() for r in text.split(",") if r.strip()]
    unknown = [r for r in roles if r not in ("core", "agg", "olt")]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown role(s) {', '.join(unknown)}; roles: core, agg, olt")
    return roles


def register(sub: Any) -> None:
    lab = sub.add_parser("lab", help="run a simulated multi-office network on loopback (demo, drills, bench)")
    lab.add_argument(
        "--dir", type=Path, default=DEFAULT_DIR, help="lab state directory (default: ./baton-lab)"
    )
    lab.add_argument("--json", action="store_true", help="machine-readable output")
    # the same options after the subcommand too (`baton lab run --dir X`); SUPPRESS keeps the above
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--dir", type=Path, default=argparse.SUPPRESS, help="lab state directory")
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output"
    )
    cmds = lab.add_subparsers(dest="lab_command", metavar="LAB_COMMAND")
    lab.set_defaults(func=lambda a: _usage(lab))

    run = cmds.add_parser("run", parents=[common], help="run the lab in the foreground until Ctrl-C")
    run.add_argument("--offices", help="count (e.g. 20) or comma-separated built-in office ids")
    run.add_argument("--devices-per-office", type=int, default=4, metavar="N")
    run.add_argument("--trap-target", type=_host_port, metavar="HOST:PORT", help="Baton's trap listener")
    run.add_argument("--snmp-port", type=int, default=16100, metavar="P")
    run.add_argument("--ssh-port", type=int, default=18300, metavar="P")
    run.add_argument(
        "--playbooks",
        type=Path,
        metavar="DIR",
        help="where the lab playbooks are (default: the source tree's, /etc/baton's or ./playbooks); "
        "they are copied into DIR/playbooks",
    )
    run.set_defaults(func=_run)

    def simple(name: str, help_text: str, cmd: str, *params: tuple[str, Any, str]) -> None:
        p = cmds.add_parser(name, parents=[common], help=help_text)
        for pname, ptype, phelp in params:
            p.add_argument(pname, type=ptype, help=phelp)
        p.set_defaults(func=lambda a: _control(a, cmd, [x[0] for x in params]))

    office = ("office", str, "office id")
    device = ("device", str, "device id")
    simple("status", "offices, devices, faults and addresses of the running lab", "status")
    simple("show", "one device: interfaces, faults, running mgmt config", "show", device)
    power_off = cmds.add_parser(
        "power-off", parents=[common], help="power an office off (power alarm first, then every device dies)"
    )
    power_off.add_argument("office", help="office id")
    power_off.add_argument(
        "--ups",
        type=_roles,
        default=[],
        metavar="ROLES",
        help="comma-separated roles a UPS keeps up (core, agg, olt), e.g. --ups core",
    )
    power_off.set_defaults(func=lambda a: _control(a, "power_off", ["office", "ups"]))
    simple("power-on", "power an office on (devices boot, coldStart traps)", "power_on", office)
    for name, help_text, from_help in (
        (
            "cut",
            "cut an office's uplink: its devices become unreachable",
            "only the path from this source address (one vantage's, e.g. 127.0.0.13): what it sends "
            "is dropped, everyone else still reaches the office",
        ),
        (
            "uncut",
            "restore an office's uplink (and every path cut from one source)",
            "only the path from this source address",
        ),
    ):
        cut = cmds.add_parser(name, parents=[common], help=help_text)
        cut.add_argument("office", help="office id")
        cut.add_argument("--from", dest="source", metavar="ADDRESS", help=from_help)
        cut.set_defaults(func=lambda a, cmd=name: _control(a, cmd, ["office", "source"]))
    simple("device-down", "take one device down", "device_down", device)
    simple("device-up", "bring one device back (it reboots)", "device_up", device)
    simple("slow", "delay every answer of a device", "slow", device, ("seconds", float, "delay in seconds"))
    simple(
        "refuse-commits", "make NETCONF <commit> fail", "refuse_commits", device, ("on", _on_off, "on|off")
    )
    simple("drop-session", "drop the session on the device's next NETCONF RPC", "drop_mid_rpc", device)

    def one_shot(name: str, help_text: str, cmd: str, *, rpc: bool = True) -> None:
        p = cmds.add_parser(name, parents=[common], help=help_text)
        p.add_argument("device", help="device id")
        p.add_argument(
            "on", nargs="?", type=_on_off, default=True, help="on (default: arm it for once) or off (disarm)"
        )
        names = ["device", "on"]
        if rpc:
            p.add_argument(
                "--rpc",
                metavar="OPERATION",
                help="only an RPC of this operation sets it off (commit, edit-config, get...; default any)",
            )
            names.append("rpc")
        p.set_defaults(func=lambda a: _control(a, cmd, names))

    one_shot(
        "drop-after-commit",
        "apply the device's next NETCONF <commit>, then close the session without a reply",
        "drop_after_commit",
        rpc=False,
    )
    one_shot(
        "no-reply",
        "carry out the device's next NETCONF RPC (a commit is applied) and never answer it",
        "no_reply",
    )
    one_shot(
        "endless-reply",
        "carry out the device's next NETCONF RPC (a commit is applied), answer without end-of-message",
        "endless_reply",
    )
    one_shot(
        "garbage-reply",
        "carry out the device's next NETCONF RPC (a commit is applied), answer with malformed XML",
        "garbage_reply",
    )
    simple(
        "link-down",
        "set an interface down (linkDown trap)",
        "link_down",
        device,
        ("if_index", int, "ifIndex"),
    )
    simple("link-up", "set an interface up (linkUp trap)", "link_up", device, ("if_index", int, "ifIndex"))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return EX_USAGE


def _control(args: argparse.Namespace, cmd: str, names: list[str]) -> int:
    from baton.lab.control import ControlError, LabNotRunning, request

    try:
        result = request(args.dir, cmd, **{n: getattr(args, n) for n in names})
    except LabNotRunning as exc:
        print(f"baton lab: {exc}", file=sys.stderr)
        return EX_UNAVAILABLE
    except ControlError as exc:
        print(f"baton lab: {exc}", file=sys.stderr)
        return EX_FAILURE
    if args.json:
        print(json.dumps(result, indent=2))
    elif cmd == "status":
        print(_status_table(result))
    elif cmd == "show":
        print(_show_text(result))
    else:
        print(result)
    return EX_OK


def _status_table(st: dict[str, Any]) -> str:
    def uplink(o: dict[str, Any]) -> str:
        if o["cut"]:
            return "CUT"
        cut_from = o.get("cut_from") or []
        return f"cut from {', '.join(cut_from)}" if cut_from else "ok"

    width = max([7, *(len(uplink(o)) for o in st["offices"])])
    lines = [
        f"lab in {st['dir']} (pid {st['pid']}): SNMP udp/{st['snmp_port']}, "
        f"NETCONF/SSH tcp/{st['ssh_port']}{'' if st['netconf'] else ' (not running)'}",
        "",
        f"{'OFFICE':<20} {'POWER':<6} {'UPLINK':<{width}} {'REACHABLE':<10} NOC PREFIX",
    ]
    for o in st["offices"]:
        reach = f"{o['devices_reachable']}/{o['devices']}"
        power = "on" if o["powered"] else "OFF"
        lines.append(f"{o['id']:<20} {power:<6} {uplink(o):<{width}} {reach:<10} {o['noc_prefix']}")
    faulty = [d for d in st["devices"] if d["faults"]]
    lines += ["", f"{len(st['devices'])} devices, {len(faulty)} with faults"]
    for d in faulty[:50]:
        lines.append(f"  {d['id']:<28} {d['address']:<15} {', '.join(d['faults'])}")
    if len(faulty) > 50:
        lines.append(f"  ... and {len(faulty) - 50} more (--json for all)")
    return "\n".join(lines)


def _show_text(d: dict[str, Any]) -> str:
    m = d["mgmt"]
    lines = [
        f"{d['id']}  ({d['role']}, office {d['office']}, {d['address']})",
        f"  reachable: {'yes' if d['reachable'] else 'NO'}   uptime: {d['uptime_s']} s   "
        f"faults: {', '.join(d['faults']) or 'none'}",
        "  interfaces: " + ", ".join(f"{i['if_index']}:{i['name']}={i['oper']}" for i in d["interfaces"]),
        f"  host key: {d['host_key']}",
        "  running mgmt config:",
        "    acl: " + ", ".join(f"{a['name']}={a['prefix']}" for a in m["acl"]),
        "    aaa: " + ", ".join(m["aaa_servers"]),
        "    trap targets: " + (", ".join(m["trap_targets"]) or "none"),
        "    syslog: " + ", ".join(m["syslog_servers"]),
        f"    contact: {m['contact']}",
    ]
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    from baton import logs
    from baton.lab.control import ControlError
    from baton.lab.network import LabError

    # People read this terminal: readable lines, and no per-session debug chatter.
    logs.configure(json=False, level="info")
    try:
        return asyncio.run(_run_lab(args))
    except (LabError, ControlError) as exc:
        print(f"baton lab: {exc}", file=sys.stderr)
        return EX_USAGE if isinstance(exc, LabError) else EX_UNAVAILABLE
    except OSError as exc:
        print(f"baton lab: cannot start the lab: {exc.strerror or exc}", file=sys.stderr)
        return EX_SOFTWARE


async def _run_lab(args: argparse.Namespace) -> int:
    from baton.lab.inventory_writer import find_lab_playbooks, write_inventory
    from baton.lab.network import Lab, LabConfig, build_plan, select_offices

    offices = select_offices(args.offices)
    build_plan(offices, args.devices_per_office)  # refuse bad sizes before binding anything
    playbooks = find_lab_playbooks(args.playbooks)  # and a config the daemon could not run
    config = LabConfig(
        dir=args.dir.resolve(),
        offices=offices,
        devices_per_office=args.devices_per_office,
        trap_target=args.trap_target,
        snmp_port=args.snmp_port,
        ssh_port=args.ssh_port,
    )
    lab = Lab(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await lab.start()
    try:
        inventory = write_inventory(lab, playbooks=playbooks)
        print(_summary(lab, inventory), flush=True)
        await stop.wait()
        print("baton lab: stopping", flush=True)
    finally:
        await lab.stop()
    return EX_OK


def _summary(lab: Any, inventory: Path) -> str:
    cfg = lab.config
    first = lab.plan.devices[0]
    secrets = lab.secrets
    creds = inventory / "credentials"
    other_noc = lab.plan.offices[-1].noc_prefix.replace(".0/24", ".1")
    lines = [
        f"baton lab: {len(lab.plan.offices)} offices, {len(lab.plan.devices)} devices, "
        f"started in {lab.startup_s:.2f} s",
        f"  state dir:  {cfg.dir}",
        f"  inventory:  {inventory}   (policy: {cfg.dir / 'baton.yaml'}, playbooks: {cfg.dir / 'playbooks'})",
        f"  SNMP:       udp/{cfg.snmp_port} on each device address; NETCONF+SSH: tcp/{cfg.ssh_port}"
        + ("" if lab.netconf_available else " (NETCONF server not available)"),
        f"  traps to:   {f'{cfg.trap_target[0]}:{cfg.trap_target[1]}' if cfg.trap_target else 'nowhere'}",
        "",
        f"{'OFFICE':<20} {'DEVICES':<8} {'ADDRESSES':<26} NOC PREFIX",
    ]
    for office in lab.plan.offices:
        devs = [d for d in lab.plan.devices if d.office == office.id]
        span = f"{devs[0].address} - {devs[-1].address}"
        lines.append(f"{office.id:<20} {len(devs):<8} {span:<26} {office.noc_prefix}")
    lines += [
        "",
        "Try:",
        f"  snmpget -m '' -v2c -c $(cat {creds}/snmp-community) {first.address}:{cfg.snmp_port} "
        "1.3.6.1.2.1.1.5.0",
        f"  snmpget -m '' -v3 -l authPriv -u {secrets.v3_user} -a SHA-256 -A $(cat {creds}/snmp-v3-auth) "
        f"-x AES -X $(cat {creds}/snmp-v3-priv) {first.address}:{cfg.snmp_port} 1.3.6.1.2.1.1.3.0",
        f"  ssh -o UserKnownHostsFile={cfg.dir}/known_hosts -i {creds}/baton_ed25519 -p {cfg.ssh_port} "
        f"baton@{first.address} show management",
        f"      (allowed from 127.0.0.1 and the office's NOC prefix; add -b {other_noc} "
        "to try from another office: refused)",
        f"  ncclient: manager.connect(host='{first.address}', port={cfg.ssh_port}, username='baton', "
        f"key_filename='{creds}/baton_ed25519', allow_agent=False, look_for_keys=False, "
        f"ssh_config=None, hostkey_b64='{lab.host_key(first.id).split()[1]}')",
        f"  baton lab --dir {cfg.dir} status | power-off OFFICE | cut OFFICE | link-down DEVICE IFINDEX ...",
        f"  baton daemon --config {cfg.dir / 'baton.yaml'} --log-format console   (in another terminal)",
        "",
        "Ctrl-C stops the lab.",
    ]
    return "\n".join(lines)
