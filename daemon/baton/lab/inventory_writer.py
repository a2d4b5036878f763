"""Writes a ready-to-use Baton inventory (and a baton.yaml) for a running lab.

Layout under `<dir>`:

    inventory/offices.yaml          offices, alternates, vars (noc_prefixes, aaa_servers, ...)
    inventory/defaults.yaml         ports and credential references shared by every device
    inventory/groups.yaml           roles (core-router, agg-router, olt) and SNMP per region
    inventory/devices/<office>.yaml one file per office: address, parent, pinned host key
    inventory/credentials/*         the secrets (0600, directory 0700), referenced as file:...
    playbooks/lab-handover.yaml     the shipped lab playbooks, copied (`find_lab_playbooks`)
    playbooks/lab-handback.yaml
    baton.yaml                      a policy tuned for the lab: short poll, short hold-down

`baton daemon --config <dir>/baton.yaml` runs with it as written, and every handover renders:
each office has every variable the lab playbooks use (`trap_collectors` is empty when the lab
sends its traps nowhere).

Seoul offices poll with SNMPv3 authPriv (SHA-256/AES), the others with v2c, as in the example
inventory; the lab's agent accepts both on every device, so the split is only what Baton uses.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from baton.lab.network import LAB_USER, Lab, LabError, public_key_line, write_private
from baton.lab.snmp_agent import OID_LAB_OFFICE_POWER
from baton.lab.traps import TRAP_POWER_FAIL, TRAP_POWER_RESTORED

GROUP_OF_ROLE = {"core": "core-router", "agg": "agg-router", "olt": "olt"}
CREDENTIALS = "credentials"
PLAYBOOKS = "playbooks"
LAB_PLAYBOOKS = ("lab-handover", "lab-handback")  # the names baton.yaml chooses


def playbook_places() -> list[Path]:
    """Where the shipped playbooks may be: the source tree, the Debian package's /etc/baton, the
    current directory."""
    return [
        Path(__file__).resolve().parents[3] / PLAYBOOKS,
        Path("/etc/baton") / PLAYBOOKS,
        Path.cwd() / PLAYBOOKS,
    ]


def find_lab_playbooks(explicit: Path | None = None) -> dict[str, Path]:
    """The files of the lab playbooks by name: from `explicit`, else from the first of
    `playbook_places()` that has them all. LabError saying where it looked if none has."""
    places = [explicit] if explicit is not None else playbook_places()
    for place in places:
        found: dict[str, Path] = {}
        for path in sorted(place.glob("*.y*ml")) if place.is_dir() else []:
            try:
                data = yaml.safe_load(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, yaml.YAMLError):
                continue
            name = data.get("name") if isinstance(data, dict) else None
            if name in LAB_PLAYBOOKS and name not in found:
                found[name] = path
        if len(found) == len(LAB_PLAYBOOKS):
            return found
    raise LabError(
        f"the lab playbooks ({', '.join(LAB_PLAYBOOKS)}) are not in {', '.join(map(str, places))}; "
        "pass --playbooks DIR (the playbooks/ directory of a Baton checkout)"
    )


def write_playbooks(base: Path, sources: dict[str, Path]) -> Path:
    """Copy the lab playbooks into `<base>/playbooks/` (other files there are left alone)."""
    target = base / PLAYBOOKS
    target.mkdir(parents=True, exist_ok=True)
    for name, source in sorted(sources.items()):
        header = f"# Copied by `baton lab` from {source}; rewritten on each start.\n"
        (target / f"{name}.yaml").write_text(header + source.read_text(encoding="utf-8"))
    return target


def _dump(path: Path, header: str, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    body = yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True, width=120)
    path.write_text(header + body)


def _snmp_group(office_region: str) -> str:
    return "snmp-v3-seoul" if office_region == "seoul" else "snmp-v2c"


def _dotted(oid: tuple[int, ...]) -> str:
    return ".".join(map(str, oid))


def write_inventory(
    lab: Lab, trap_collector: str | None = None, playbooks: dict[str, Path] | None = None
) -> Path:
    """Write `<dir>/inventory/`, `<dir>/playbooks/` and `<dir>/baton.yaml` for `lab` (started);
    return the inventory dir. `playbooks`: the lab playbooks' files (default: found)."""
    assert lab.secrets is not None, "the lab must be started (it owns the secrets and keys)"
    base = lab.config.dir
    write_playbooks(base, playbooks if playbooks is not None else find_lab_playbooks())
    inv = base / "inventory"
    creds = inv / CREDENTIALS
    creds.mkdir(parents=True, exist_ok=True)
    os.chmod(creds, 0o700)
    s = lab.secrets
    write_private(creds / "snmp-community", s.community.encode() + b"\n")
    write_private(creds / "snmp-v3-auth", s.v3_auth_key.encode() + b"\n")
    write_private(creds / "snmp-v3-priv", s.v3_priv_key.encode() + b"\n")
    write_private(creds / "automation-password", s.ssh_password.encode() + b"\n")
    write_private(creds / "baton_ed25519", lab.client_key.export_private_key())
    (creds / "baton_ed25519.pub").write_text(public_key_line(lab.client_key) + "\n")
    # For people with OpenSSH/ncclient: the same pins as the inventory, so nobody needs to
    # turn host key checking off to try the lab.
    (base / "known_hosts").write_text(
        "".join(f"[{dp.address}]:{lab.config.ssh_port} {lab.host_key(dp.id)}\n" for dp in lab.plan.devices)
    )

    trap_host = trap_collector or (lab.config.trap_target[0] if lab.config.trap_target else None)
    offices = []
    for office in lab.plan.offices:
        office_vars: dict[str, Any] = {
            "noc_prefixes": [office.noc_prefix],
            "noc_address": str(office.noc_prefix).replace(".0/24", ".1"),
            "aaa_servers": list(office.aaa_servers),
            "syslog_collectors": list(office.syslog_servers),
            "contact": office.contact,
        }
        # The lab playbooks move trap targets to the alternate: without a collector there is
        # nothing to move, but the variable is there (an undefined one fails every handover).
        office_vars["trap_collectors"] = [trap_host] if trap_host else []
        offices.append(
            {
                "id": office.id,
                "name": office.name,
                "region": office.region,
                "alternates": list(office.alternates),
                "vars": office_vars,
            }
        )
    header = (
        "# Written by `baton lab` for the simulated network in this directory; rewritten on each start.\n"
    )
    _dump(inv / "offices.yaml", header, {"offices": offices})

    ref = f"file:{CREDENTIALS}/"
    remote: dict[str, Any] = {
        "enabled": False,
        "port": lab.config.ssh_port,
        "username": LAB_USER,
        "private_key": ref + "baton_ed25519",
        "timeout_s": 5.0,
    }
    _dump(
        inv / "defaults.yaml",
        header,
        {
            "defaults": {
                "critical": False,
                "snmp": {"version": "2c", "port": lab.config.snmp_port, "timeout_s": 1.0, "retries": 1},
                "netconf": remote,
                "ssh": remote,
            }
        },
    )
    power_oid = ".".join(map(str, OID_LAB_OFFICE_POWER))
    probe = '<interfaces-state xmlns="urn:ietf:params:xml:ns:yang:ietf-interfaces"/>'
    _dump(
        inv / "groups.yaml",
        header,
        {
            "groups": {
                "core-router": {
                    "role": "core-router",
                    "critical": True,
                    "tags": ["router", "core"],
                    "netconf": {"enabled": True, "probe_filter": probe},
                    "ssh": {"enabled": True},
                    "snmp": {"oids": {"office_power": power_oid}, "critical_interfaces": [1]},
                },
                "agg-router": {
                    "role": "agg-router",
                    "critical": True,
                    "tags": ["router", "aggregation"],
                    "netconf": {"enabled": True},
                    "ssh": {"enabled": True},
                    "snmp": {"critical_interfaces": [1]},
                },
                "olt": {"role": "olt", "critical": False, "tags": ["access", "gpon"]},
                "snmp-v3-seoul": {
                    "snmp": {
                        "version": "3",
                        "user": s.v3_user,
                        "auth_protocol": s.snmp.v3_auth_protocol,
                        "auth_key": ref + "snmp-v3-auth",
                        "priv_protocol": s.snmp.v3_priv_protocol,
                        "priv_key": ref + "snmp-v3-priv",
                    }
                },
                "snmp-v2c": {"snmp": {"version": "2c", "community": ref + "snmp-community"}},
            }
        },
    )
    devices_dir = inv / "devices"
    devices_dir.mkdir(exist_ok=True)
    for old in devices_dir.glob("*.yaml"):
        old.unlink()  # a smaller lab must not leave the last run's devices behind
    for office in lab.plan.offices:
        entries = []
        for dp in lab.plan.devices:
            if dp.office != office.id:
                continue
            entry: dict[str, Any] = {"id": dp.id, "office": dp.office, "address": dp.address}
            if dp.parent:
                entry["parent"] = dp.parent
            entry["groups"] = [GROUP_OF_ROLE[dp.role], _snmp_group(office.region)]
            entry["host_key"] = lab.host_key(dp.id)
            entries.append(entry)
        _dump(devices_dir / f"{office.id}.yaml", header, {"devices": entries})

    traps: dict[str, Any] = {"enabled": False}
    if lab.config.trap_target is not None:
        host, port = lab.config.trap_target
        traps = {
            "enabled": True,
            "listen": host,
            "port": port,
            "communities": [f"file:inventory/{CREDENTIALS}/snmp-community"],
            # The lab's UPS alarms: office-level, so Baton re-polls the whole office at once.
            "vendor_traps": [
                {"oid": ".".join(map(str, TRAP_POWER_FAIL)), "kind": "powerFail", "office_level": True},
                {
                    "oid": ".".join(map(str, TRAP_POWER_RESTORED)),
                    "kind": "powerRestored",
                    "office_level": True,
                },
            ],
        }
    first_office = lab.plan.offices[0].id
    _dump(
        base / "baton.yaml",
        "# Written by `baton lab`: a policy with short timers so lab drills take seconds, not minutes.\n",
        {
            "inventory": "inventory",
            "playbooks": PLAYBOOKS,
            "handover_playbook": LAB_PLAYBOOKS[0],
            "handback_playbook": LAB_PLAYBOOKS[1],
            "journal_path": str(base / "journal.sqlite3"),
            "api": {"unix_socket": str(base / "baton.sock")},
            "metrics_listen": "127.0.0.1:9180",
            "traps": traps,
            "vantage": {"id": f"lab-{first_office}", "office": first_office},
            "policy": {
                "poll_interval_s": 2.0,
                "failures_to_down": 3,
                "office_down_ratio": 0.5,
                "hold_down_s": 6.0,
                "confirm_window_s": 120.0,
                "run_timeout_s": 60.0,
                "anti_flap_block_s": 60.0,
                "handback_hold_s": 20.0,
            },
        },
    )
    return inv
