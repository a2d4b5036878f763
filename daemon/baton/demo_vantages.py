"""`baton demo --vantages 3`: three Baton vantages over etcd, told for someone who has never seen them.

Theory of operation. The same director as `baton.demo` (whose parts it reuses): children in
process groups of their own, in one directory — a three-member etcd cluster on loopback
(Debian's `etcd-server` binary, data in `etcd/`), `baton lab run`, and three `baton daemon`s,
each with a baton.yaml of its own written from the lab's (`<id>.yaml`: its vantage id and office,
API socket, journal, metrics, trap port, and `vantage.source_address` — 127.0.0.11, .12, .13 —
so that every probe of a vantage leaves from its own address, and the lab can cut one
vantage's path to an office with `baton lab cut OFFICE --from ADDRESS`). The story is driven
through the doors an operator uses, and checked as it goes (a deviation: exit code 1):

1. who leads: `baton status` on each vantage (the first one started leads);
2. one vantage's path to seoul-geumcheon is cut: it sees the office dark, the other two see it
   HEALTHY; the leader calls it UNREACHABLE from that vantage, raises `split_view` and closes
   nothing (checked for longer than the hold-down);
3. mains power fails at seoul-geumcheon: every vantage sees it dark, a quorum says DOWN, the
   leader hands the office over — and dies in the middle of the run (SIGKILL);
4. another vantage takes the lease (a greater epoch), adopts the run from etcd and finishes it:
   HANDED_OVER by that one run, which its `baton runs` lists;
5. power returns: the new leader catches up the router the run could not reach, and an operator
   on the other follower hands the office back (forwarded to the leader): every router then
   holds the new leader's epoch (the core router from the takeover's confirming commit on, if
   that confirm was the new leader's), which the dead leader's is below;
6. a clean stop: the daemons (SIGTERM, exit 0), the lab, etcd.

When to kill, deterministically: the lab makes the core router answer 0.5 s late, so the run
lasts a few seconds; the demo reads the run's record in etcd (`<prefix>runs/<run id>/run`) and
SIGKILLs the leader as soon as it says "forward" (every device passed verify, and the decision
was shared before the runner went on) while the run is unfinished. From that point on the next
leader must finish the run forward, whatever else the dead one had sent; before it, it would roll
the run back (both cases: tests/e2e/test_vantage_takeover.py).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from baton.apiclient import ApiClient, ClientError
from baton.demo import (
    ALTERNATE,
    CLOSED_OFFICE,
    DEVICES_PER_OFFICE,
    Child,
    Demo,
    DemoError,
    DemoOptions,
    DemoUnavailable,
    find_playbooks,
    free_ports,
    play,
    skips_unreachable,
)

ETCD_INSTALL = "apt-get install etcd-server"
ETCD_PREFIX = "/baton/"
LEASE_TTL_S = 3.0
REQUEST_TIMEOUT_S = 0.5
ROUTER = f"{CLOSED_OFFICE}-core1"  # on the UPS: what the handover changes while the power is off
AGG = f"{CLOSED_OFFICE}-agg1"  # dark with the office: handed over when it answers again
ROUTER_SLOW_S = 0.5  # every answer of the router this late: the run lasts long enough to die in
KILL_POLL_S = 0.05
HOLD_DOWN_S = 4.0
EPOCH_LEAF = re.compile(r"<epoch>(\d+)</epoch>")


@dataclass(frozen=True, slots=True)
class VantageSpec:
    id: str
    office: str
    source_address: str


# The first leads (it starts alone); the last is the one whose path to the office is cut.
VANTAGES = (
    VantageSpec("noc-gwacheon", "seoul-gwacheon", "127.0.0.11"),
    VantageSpec("noc-bangbae", "seoul-bangbae", "127.0.0.12"),
    VantageSpec("noc-suwon", "seoul-suwon", "127.0.0.13"),
)


class EtcdMissing(DemoUnavailable):
    """No etcd binary: the scene cannot run here."""


def etcd_binary(search_path: str | None = None) -> str:
    """The etcd binary on `search_path` (default $PATH), or EtcdMissing saying how to install it."""
    found = shutil.which("etcd", path=search_path)
    if found is None:
        raise EtcdMissing(
            "baton demo --vantages 3 runs a three-member etcd cluster on this machine, and no `etcd` "
            f"binary was found. On Debian: {ETCD_INSTALL} (as root; `./quickstart setup` installs it too)."
        )
    return found


def etcd_get(endpoints: list[str], key: str, timeout_s: float = 1.0) -> dict[str, Any] | None:
    """The JSON value of `key` (None: absent), from the first member that answers (JSON gateway)."""
    body = json.dumps({"key": base64.b64encode(key.encode()).decode()}).encode()
    errors = []
    for url in endpoints:
        request = urllib.request.Request(  # noqa: S310 - http://127.0.0.1 only
            f"{url}/v3/kv/range", data=body, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as answer:  # noqa: S310
                kvs = json.load(answer).get("kvs") or []
        except (OSError, ValueError, urllib.error.URLError) as exc:
            errors.append(f"{url}: {exc}")
            continue
        if not kvs:
            return None
        value: dict[str, Any] = json.loads(base64.b64decode(kvs[0]["value"]))
        return value
    raise DemoError("etcd to answer the demo", "; ".join(errors))


def etcd_healthy(url: str, timeout_s: float = 0.5) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout_s) as response:  # noqa: S310
            return bool(json.load(response).get("health") == "true")
    except (OSError, ValueError, urllib.error.URLError):
        return False


@dataclass
class EtcdCluster:
    """Three etcd members on loopback (free ports), data and logs in `dir`."""

    dir: Path
    binary: str
    members: list[Child] = field(default_factory=list)
    endpoints: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        names = ("etcd1", "etcd2", "etcd3")
        ports = free_ports(2 * len(names))
        token = f"baton-demo-{secrets.token_hex(4)}"  # two demos' clusters never join each other
        peers = ",".join(f"{n}=http://127.0.0.1:{ports[2 * i + 1]}" for i, n in enumerate(names))
        self.dir.mkdir(parents=True, exist_ok=True)
        for i, name in enumerate(names):
            client, peer = f"http://127.0.0.1:{ports[2 * i]}", f"http://127.0.0.1:{ports[2 * i + 1]}"
            argv = [
                self.binary,
                "--name", name,
                "--data-dir", str(self.dir / name),
                "--listen-client-urls", client,
                "--advertise-client-urls", client,
                "--listen-peer-urls", peer,
                "--initial-advertise-peer-urls", peer,
                "--initial-cluster", peers,
                "--initial-cluster-state", "new",
                "--initial-cluster-token", token,
                # etcd's defaults: stable on two loaded cores (tests/peers/etcd.py says why)
                "--heartbeat-interval", "100",
                "--election-timeout", "1000",
                "--logger", "zap",
                "--log-level", "warn",
            ]  # fmt: skip
            self.members.append(Child(f"etcd member {name}", argv, self.dir / f"{name}.log"))
            self.endpoints.append(client)

    def start(self, env: dict[str, str], *, outlive_parent: bool) -> None:
        for member in self.members:  # all at once: each needs the others for a quorum
            member.outlive_parent = outlive_parent
            member.log.write_text("")
            member.start(env)

    def healthy(self) -> bool:
        return all(etcd_healthy(url) for url in self.endpoints)

    def raft_leader(self) -> Child | None:
        """The member that is raft leader now, as the members say (None: none known)."""
        for member, url in zip(self.members, self.endpoints, strict=True):
            request = urllib.request.Request(  # noqa: S310 - http://127.0.0.1 only
                f"{url}/v3/maintenance/status", data=b"{}", headers={"Content-Type": "application/json"}
            )
            try:
                with urllib.request.urlopen(request, timeout=0.5) as answer:  # noqa: S310
                    status = json.load(answer)
            except (OSError, ValueError, urllib.error.URLError):
                continue
            if status.get("leader") and status.get("leader") == status.get("header", {}).get("member_id"):
                return member
        return None

    def stop(self) -> None:
        """The followers first, then the raft leader: a raft leader told to stop first tries to
        hand its leadership to a peer, and when its peers are going too it waits for that in vain
        (7 s here); alone, it stops at once."""
        leader = self.raft_leader()
        followers = [m for m in self.members if m is not leader]
        stop_together(followers)
        if leader is not None:
            leader.stop()


def stop_together(children: list[Child]) -> None:
    """SIGTERM to each child's process group at once (they stop side by side), then wait for
    each, without a second SIGTERM (SIGKILL after the grace)."""
    for child in children:
        if child.proc is not None and child.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.proc.pid, signal.SIGTERM)
    for child in children:
        child.stop(signalled=True)


@dataclass
class Vantage:
    spec: VantageSpec
    config: Path
    socket: Path
    trap_port: int
    metrics_port: int
    child: Child
    killed: bool = False

    @property
    def id(self) -> str:
        return self.spec.id

    def client(self) -> ApiClient:
        return ApiClient(socket_path=self.socket, timeout_s=10.0)

    def status(self) -> dict[str, Any]:
        data: dict[str, Any] = self.client().get("/v1/status")
        return data

    def leadership(self) -> dict[str, Any]:
        found: dict[str, Any] = self.status().get("daemon", {}).get("leadership") or {}
        return found


@dataclass
class VantagesDemo(Demo):
    """The scene (module docstring). Demo's narration, CLI and waits, over three vantages; the
    API it reads is the one of `viewer`."""

    etcd: EtcdCluster | None = field(init=False, default=None)
    vantages: dict[str, Vantage] = field(init=False, default_factory=dict)
    viewer: str = field(init=False, default=VANTAGES[0].id)
    leader: str = field(init=False, default=VANTAGES[0].id)
    old_epoch: int = field(init=False, default=0)
    killed_at: float = field(init=False, default=0.0)

    STEPS = 7

    # --- reading the vantages

    @property
    def socket_path(self) -> Path:
        return self.vantages[self.viewer].socket

    def check_children(self) -> None:
        children = [self.lab, *(self.etcd.members if self.etcd else [])]
        children += [v.child for v in self.vantages.values() if not v.killed]
        for child in children:
            if child is not None and (code := child.exited()) is not None:
                raise DemoError(f"{child.name} to keep running", f"it exited with code {code}")

    def on(self, vantage: str, shown: str, argv: list[str], *, ok: tuple[int, ...] = (0,)) -> int:
        """`baton ARGV` against one vantage's API, shown as typed."""
        sock = self.vantages[vantage].socket
        return self.cli(f'baton {shown} --socket "$DEMO/{sock.name}"', [*argv, "--socket", str(sock)], ok=ok)

    def leaders(self) -> list[str]:
        held = []
        for vantage in self.vantages.values():
            if vantage.killed:
                continue
            with contextlib.suppress(ClientError):
                if vantage.leadership().get("held"):
                    held.append(vantage.id)
        return held

    def run_record(self, run_id: str) -> dict[str, Any] | None:
        assert self.etcd is not None
        return etcd_get(self.etcd.endpoints, f"{ETCD_PREFIX}runs/{run_id}/run")

    def router_epoch(self, device: str) -> int:
        from baton.lab.control import request

        found = EPOCH_LEAF.search(request(self.dir, "show", device=device)["running"])
        return int(found.group(1)) if found else 0

    # --- the story

    def run(self) -> int:
        self.setup()
        self.who_leads()
        self.uplink_cut()
        run_id = self.leader_dies_mid_handover()
        self.takeover(run_id)
        self.power_returns_under_the_new_epoch()
        self.summary()
        return 0

    def setup(self) -> None:
        opts = self.options
        binary = etcd_binary()
        self.dir = (opts.dir or Path(tempfile.mkdtemp(prefix="baton-demo-vantages-"))).resolve()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.playbooks = find_playbooks(opts.playbooks)
        self.skip = skips_unreachable(self.playbooks)
        if not self.skip:
            raise DemoError(
                "a lab handover playbook that skips dark devices (unreachable: skip)",
                f"none in {self.playbooks}: the scene needs the source tree's playbooks",
            )
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        ssh_port, snmp_port, *trap_ports = free_ports(2 + len(VANTAGES))

        self.say("One Baton alone is lost with the office it runs in. So Baton runs as several vantages,")
        self.say("one per office you trust, over an etcd cluster: one of them leads (it holds a lease in")
        self.say(
            "etcd, with an epoch that only grows) and acts; all of them watch the offices, and an office"
        )
        self.say("is DOWN only when a quorum of them sees it so. This scene runs three vantages, etcd and a")
        self.say("simulated network on this machine (loopback only).")
        self.title("Setting up: etcd, a lab of simulated offices, and three Baton vantages")
        self.say(f"Everything lives in {self.dir}; to type the commands below yourself (with --keep):")
        self.say(f"  export DEMO={self.dir}")
        self.etcd = EtcdCluster(self.dir / "etcd", binary)
        self.etcd.start(env, outlive_parent=opts.keep)
        self.wait_for("etcd's three members healthy", self.etcd.healthy, 60)
        ports = ", ".join(url.rpartition(":")[2] for url in self.etcd.endpoints)
        self.say(f"etcd: 3 members ({binary}), client ports {ports}, data and logs in $DEMO/etcd/")

        # the devices trap to the first vantage
        self.start_lab(env, opts, f"127.0.0.1:{trap_ports[0]}", snmp_port, ssh_port)
        self.say(
            f"lab: {opts.offices} offices × {DEVICES_PER_OFFICE} devices, SNMP on udp/{snmp_port}, "
            f"NETCONF over SSH on tcp/{ssh_port} — log: lab.log"
        )
        self.write_configs(trap_ports)
        first, *others = self.vantages.values()
        first.child.start(env)
        self.wait_for(f"{first.id} to lead", lambda: first.id in self.leaders(), 90)
        for vantage in others:
            vantage.child.start(env)
        for vantage in self.vantages.values():
            self.say(
                f"vantage {vantage.id}: baton daemon --config $DEMO/{vantage.config.name} (pid "
                f"{vantage.child.pid}), in office {vantage.spec.office}, probing from "
                f"{vantage.spec.source_address} — log: {vantage.child.log.name}"
            )
        for vantage in self.vantages.values():
            self.viewer = vantage.id
            self.wait_for(f"every office HEALTHY as {vantage.id} sees it", self.all_healthy, 90)
        self.viewer = self.leader

    def all_healthy(self) -> Any:
        client = self.client()
        offices = client.get("/v1/offices")["offices"]
        bad = [f"{o['id']} {o['phase']}/{o['verdict']}" for o in offices if o["verdict"] != "HEALTHY"]
        present = self.vantages[self.viewer].leadership().get("vantages") or []
        if len(present) < len(VANTAGES):
            bad.append(f"vantages present: {', '.join(present) or 'none yet'}")
        return offices if not bad else "not yet: " + ", ".join(bad)

    def write_configs(self, trap_ports: list[int]) -> None:
        """One baton.yaml per vantage, from the lab's: the same inventory and playbooks, its own
        id, office, address, API, journal and ports; etcd in common; timers for a one-minute story."""
        base = yaml.safe_load((self.dir / "baton.yaml").read_text(encoding="utf-8"))
        peer_token = self.dir / "inventory" / "credentials" / "vantages-peer-token"
        peer_token.write_text(secrets.token_urlsafe(24) + "\n")
        peer_token.chmod(0o600)
        assert self.etcd is not None
        for spec, trap_port in zip(VANTAGES, trap_ports, strict=True):
            metrics_port, api_port = free_ports(2)
            config = json.loads(json.dumps(base))  # a deep copy
            config["playbooks"] = str(self.playbooks)
            config["vantage"] = {"id": spec.id, "office": spec.office, "source_address": spec.source_address}
            config["journal_path"] = f"{spec.id}.sqlite3"
            config["metrics_listen"] = f"127.0.0.1:{metrics_port}"
            config["api"] = {
                "unix_socket": f"{spec.id}.sock",
                "tcp_listen": f"127.0.0.1:{api_port}",  # where the others forward operator commands
                "tokens": [],
                "peer_token": f"file:{peer_token.relative_to(self.dir)}",
            }
            config["traps"] = {**config.get("traps", {}), "port": trap_port}
            config["shadow"] = False
            config["policy"].update(
                {
                    "poll_interval_s": 2.0,
                    "failures_to_down": 2,
                    "hold_down_s": HOLD_DOWN_S,
                    "anti_flap_block_s": 30.0,
                    "handback_hold_s": 10.0,
                    "auto_handback": False,
                    "storm_max_ratio": 0.5,  # one office of four DOWN is not a storm
                }
            )
            config["etcd"] = {
                "endpoints": list(self.etcd.endpoints),
                "prefix": ETCD_PREFIX,
                "lease_ttl_s": LEASE_TTL_S,
                "request_timeout_s": REQUEST_TIMEOUT_S,
                "vantages": [v.id for v in VANTAGES],
            }
            path = self.dir / f"{spec.id}.yaml"
            path.write_text(
                f"# Written by `baton demo --vantages 3` from the lab's baton.yaml: vantage {spec.id}.\n"
                + yaml.safe_dump(config, sort_keys=False)
            )
            child = Child(
                f"vantage {spec.id} (baton daemon)",
                [sys.executable, "-m", "baton.cli", "daemon", "--config", str(path), "--log-format", "json"],
                self.dir / f"{spec.id}.log",
                outlive_parent=self.options.keep,
            )
            child.log.write_text("")
            self.vantages[spec.id] = Vantage(
                spec, path, self.dir / f"{spec.id}.sock", trap_port, metrics_port, child
            )

    def who_leads(self) -> None:
        self.title("Three vantages, one leader")
        self.say(f"{self.leader} started first and took the lease in etcd: it leads, and only it acts.")
        self.say("The others follow: they probe every office too, publish what they see, and answer the CLI.")
        for vantage in self.vantages.values():
            self.on(vantage.id, "status", ["status"])
            self.say()
        epoch = self.vantages[self.leader].leadership().get("epoch")
        self.checkpoint(f"{self.leader} leads at epoch {epoch}; {len(VANTAGES)} vantages present")
        self.pause()

    def uplink_cut(self) -> None:
        cut_off = VANTAGES[-1]
        self.title(f"An uplink cut seen by one vantage: {cut_off.id} loses its path to {CLOSED_OFFICE}")
        self.say(f"A backhoe cuts the fibre between {cut_off.office} and {CLOSED_OFFICE}: {cut_off.id}'s")
        self.say(f"probes (from {cut_off.source_address}) get no answer; the other vantages still reach it.")
        self.lab_cli("cut", CLOSED_OFFICE, "--from", cut_off.source_address)
        self.say()
        self.say(f"The leader's view of {CLOSED_OFFICE}, as it changes (from its API):")
        runs_before = self.client().get("/v1/runs")["runs"]

        def split() -> Any:
            view = self.office(CLOSED_OFFICE)
            alerts = [
                a
                for a in self.vantages[self.leader].status().get("alerts", [])
                if a["alert"] == "split_view" and a["office"] == CLOSED_OFFICE
            ]
            if view["verdict"] == "UNREACHABLE" and alerts:
                return view
            return f"verdict {view['verdict']}, {len(alerts)} split_view alert(s)"

        def dark_to_it() -> Any:
            devices = (
                self.vantages[cut_off.id].client().get(f"/v1/offices/{CLOSED_OFFICE}/devices")["devices"]
            )
            dark = [d for d in devices if d["verdict"] in ("DOWN", "UNREACHABLE")]
            return devices if len(dark) == len(devices) else f"{len(dark)}/{len(devices)} devices dark to it"

        cut_at = time.monotonic()
        # Said apart, because it is what a daemon that does not bind its source address gets wrong.
        self.wait_for(
            f"{cut_off.id}'s probes, sent from {cut_off.source_address} (its vantage.source_address), "
            "to go unanswered",
            dark_to_it,
            30,
        )
        view = self.wait_for(f"{CLOSED_OFFICE} UNREACHABLE with a split_view alert", split, 60)
        detail = view.get("verdict_detail")
        took = f"+{time.monotonic() - cut_at:4.1f}s"
        self.say(
            f"  {took}  {CLOSED_OFFICE}  phase {view['phase']:<12} verdict {view['verdict']:<9} {detail}"
        )
        self.say()
        self.say(f"{cut_off.id}'s own view: every device of {CLOSED_OFFICE} is dark.")
        self.on(cut_off.id, f"devices {CLOSED_OFFICE}", ["devices", CLOSED_OFFICE])
        self.say()
        self.say("The leader's: the office is UNREACHABLE from one vantage, not DOWN, and an alert says who")
        self.say("sees what. One vantage of three is no quorum: nothing closes.")
        self.on(self.leader, "status", ["status"])
        deadline = time.monotonic() + HOLD_DOWN_S + 1.0  # longer than the hold-down: nothing moves
        while time.monotonic() < deadline:
            self.check_children()
            self.expect_phase(CLOSED_OFFICE, "OPEN")
            time.sleep(0.5)
        if self.client().get("/v1/runs")["runs"] != runs_before:
            raise DemoError(f"no run for {CLOSED_OFFICE}", "a run started")
        self.checkpoint(
            f"{CLOSED_OFFICE} still OPEN after more than the hold-down: split_view raised, nothing closed"
        )
        self.pause()
        self.say()
        self.say("The fibre is spliced:")
        self.lab_cli("uncut", CLOSED_OFFICE, "--from", cut_off.source_address)

        def healed() -> Any:
            view = self.office(CLOSED_OFFICE)
            alerts = [
                a for a in self.vantages[self.leader].status().get("alerts", []) if a["alert"] == "split_view"
            ]
            return view if view["verdict"] == "HEALTHY" and not alerts else f"verdict {view['verdict']}"

        self.wait_for(f"{CLOSED_OFFICE} HEALTHY again, the alert cleared", healed, 60)
        self.checkpoint(f"{CLOSED_OFFICE} HEALTHY from every vantage again; the split_view alert cleared")

    def leader_dies_mid_handover(self) -> str:
        self.title(f"Mains power fails at {CLOSED_OFFICE}, and the leader dies mid-handover")
        self.say(
            f"So that the handover lasts long enough to die in, {ROUTER} answers {ROUTER_SLOW_S:g} s late:"
        )
        self.lab_cli("slow", ROUTER, f"{ROUTER_SLOW_S:g}")
        self.say("The UPS carries the core router; the aggregation router and both OLTs go dark. This time")
        self.say("every vantage sees it: a quorum says DOWN.")
        self.lab_cli("power-off", CLOSED_OFFICE, "--ups", "core")
        self.say()
        self.say(f"The leader's view of {CLOSED_OFFICE}:")
        view = self.watch_office(CLOSED_OFFICE, ("HANDING_OVER", "HANDED_OVER", "FAILED"), 60)
        self.say(
            f"(The devices send their traps to {VANTAGES[0].id}: it re-polls at once and may see the office"
        )
        self.say("dark a little before the others; DOWN waits for a quorum of vantages, then the hold-down.)")
        run_id = view.get("run_id")
        if view["phase"] != "HANDING_OVER" or not run_id:
            raise DemoError(
                f"{CLOSED_OFFICE} HANDING_OVER on {self.leader}",
                f"phase {view['phase']}: {view.get('reason')}",
            )
        self.say()
        self.say(f"{self.leader} runs handover {run_id}. Every record of the run goes to etcd before the run")
        self.say('goes on. The demo watches that record and kills the leader as soon as it says "forward":')
        self.say("every device passed verify, so from here on the office must end handed over, whoever")
        self.say("finishes the run.")
        leader = self.vantages[self.leader]
        self.old_epoch = int(leader.leadership().get("epoch") or 0)
        deadline = time.monotonic() + 60
        record: dict[str, Any] | None = None
        while True:
            record = self.run_record(str(run_id))
            if record is not None and record.get("finished") is not None:
                raise DemoError(
                    f"run {run_id} unfinished when it decided forward",
                    f"it ended first ({record.get('result')}): the kill came too late on this busy machine",
                )
            if record is not None and record.get("decision") == "forward":
                break
            if record is not None and record.get("decision") == "back":
                raise DemoError(
                    f"run {run_id} to go forward", f"it turned back: {record.get('decision_reason')}"
                )
            if time.monotonic() > deadline:
                raise DemoError(f"run {run_id} to decide forward within 60 s", str(record))
            self.check_children()
            time.sleep(KILL_POLL_S)
        assert leader.child.pid is not None
        os.killpg(leader.child.pid, signal.SIGKILL)
        leader.killed = True
        killed_at = time.monotonic()
        self.say(f"$ kill -KILL {leader.child.pid}   # {leader.id}, the leader")
        assert leader.child.proc is not None
        leader.child.proc.wait(10)
        self.say(
            f'  etcd {ETCD_PREFIX}runs/{run_id}/run: decision "{record.get("decision")}", finished: not yet'
        )
        self.checkpoint(f"{leader.id} killed in the middle of run {run_id}")
        self.killed_at = killed_at
        self.pause()
        return str(run_id)

    def takeover(self, run_id: str) -> None:
        old = self.leader
        self.title("Another vantage takes over and finishes the same run")
        self.say(f"{old}'s lease runs out in etcd (TTL {LEASE_TTL_S:g} s); another vantage takes it, with a")
        self.say("greater epoch, adopts the run from etcd and finishes it: forward, as decided.")

        def one_leader() -> Any:
            leaders = self.leaders()
            return leaders if len(leaders) == 1 else f"leading: {', '.join(leaders) or 'nobody yet'}"

        new = str(self.wait_for("a new leader", one_leader, 60, interval_s=0.1)[0])
        took_s = time.monotonic() - self.killed_at
        self.leader = self.viewer = new
        epoch = int(self.vantages[new].leadership().get("epoch") or 0)
        if epoch <= self.old_epoch:
            raise DemoError(f"{new}'s epoch above {old}'s ({self.old_epoch})", f"epoch {epoch}")
        self.say(
            f"{new} leads {took_s:.1f} s after the kill, at epoch {epoch} (was {self.old_epoch}; the epoch is"
        )
        self.say("the etcd revision at which the leader's key was created: it only grows):")
        self.on(new, "status", ["status"])
        self.say()
        view = self.watch_office(CLOSED_OFFICE, ("HANDED_OVER", "FAILED", "OPEN"), 90)
        self.expect_phase(CLOSED_OFFICE, "HANDED_OVER", view)
        self.say()
        runs = self.client().get("/v1/runs", {"office": CLOSED_OFFICE})["runs"]
        if [r["id"] for r in runs] != [run_id]:
            raise DemoError(f"one run for {CLOSED_OFFICE}, {run_id}", f"runs {[r['id'] for r in runs]}")
        self.say(f"The run on {new}: the same id, finished here (the dead leader's steps are in it too):")
        self.on(new, "runs", ["runs"])
        self.on(new, f"run {run_id}", ["run", run_id])
        steps = self.client().get(f"/v1/runs/{run_id}").get("steps") or []
        if any(st.get("name") == "confirm" and st.get("status") == "unknown" for st in steps):
            self.say(
                f"{old} had sent the confirm; its answer never came back. {new} confirmed again: nothing"
            )
            self.say("was pending any more (the first confirm had landed), so it read the router's running")
            self.say("configuration with the verify steps: the change holds. Nothing was done twice.")
        else:
            self.say(
                f"{new} confirmed the pending commit with the run's persist id, from a session of its own."
            )
        self.checkpoint(
            f"{CLOSED_OFFICE} HANDED_OVER to {ALTERNATE} by run {run_id}, finished by {new} "
            f"{time.monotonic() - self.killed_at:.1f} s after {old} died"
        )
        self.pause()

    def power_returns_under_the_new_epoch(self) -> None:
        self.title("Power returns; the new leader's epoch on the devices")
        epoch = int(self.vantages[self.leader].leadership().get("epoch") or 0)
        epochs = {device: self.router_epoch(device) for device in (ROUTER, AGG)}
        self.say(
            "Every commit of a run writes the leader's epoch into the device (the playbook's fence leaf),"
        )
        self.say("and a device refuses a run whose epoch is below the one it holds. Right now:")
        if epochs[ROUTER] == epoch:
            why = f"{self.leader}'s: its confirming commit carried it; the dead leader's is refused there"
        else:
            why = "the dead leader's: its confirm reached the router before it died, nothing left to confirm"
        self.say(f"  {ROUTER}: epoch {epochs[ROUTER]} ({why})")
        self.say(f"  {AGG}: epoch {epochs[AGG]} (dark since before the run: left pending)")
        run_ids = {r["id"] for r in self.client().get("/v1/runs", {"office": CLOSED_OFFICE})["runs"]}
        self.say(
            f"Mains power returns; {self.leader} catches the aggregation router up, under epoch {epoch}:"
        )
        self.lab_cli("slow", ROUTER, "0")
        self.lab_cli("power-on", CLOSED_OFFICE)

        def catch_up() -> Any:
            runs = self.client().get("/v1/runs", {"office": CLOSED_OFFICE})["runs"]
            fresh = [r for r in runs if r["id"] not in run_ids]
            return fresh[0] if fresh else "no catch-up run yet"

        self.follow(str(self.wait_for("a catch-up run", catch_up, 60)["id"]))
        self.say()
        follower = next(v for v in self.vantages.values() if not v.killed and v.id != self.leader)
        self.say(f"The building is fit again. An operator on {follower.id} hands the office back; a follower")
        self.say(f"forwards the command to the leader, whose run changes both routers under epoch {epoch}:")
        self.on(
            follower.id,
            f'handback {CLOSED_OFFICE} --reason "power is back" --yes',
            ["handback", CLOSED_OFFICE, "--reason", "power is back", "--yes"],
        )
        self.viewer = self.leader
        # The run's end reaches the leader's core a loop turn after the CLI has printed it.
        self.wait_for(
            f"{CLOSED_OFFICE} to leave HANDING_BACK",
            lambda: self.office(CLOSED_OFFICE)["phase"] != "HANDING_BACK",
            30,
        )
        self.expect_phase(CLOSED_OFFICE, "OPEN")
        epochs = {device: self.router_epoch(device) for device in (ROUTER, AGG)}
        for device, seen in epochs.items():
            self.say(f"  {device}: epoch {seen}")
        if set(epochs.values()) != {epoch}:
            raise DemoError(
                f"both routers at epoch {epoch}", ", ".join(f"{d} {e}" for d, e in epochs.items())
            )
        self.checkpoint(
            f"{CLOSED_OFFICE} OPEN again; its routers carry {self.leader}'s epoch {epoch}: "
            f"the dead leader's {self.old_epoch} is refused there now"
        )
        self.pause()

    def summary(self) -> None:
        self.title("What happened")
        took = time.monotonic() - self.started
        self.say(f"In {took:.0f} s, three Baton vantages over etcd:")
        self.say(
            f"  - kept {CLOSED_OFFICE} OPEN while one vantage's path to it was cut (split_view, no closure);"
        )
        self.say(f"  - closed it when a quorum of them saw it dark, and handed it over to {ALTERNATE};")
        self.say("  - lost the leader in the middle of that handover, and finished the same run from another")
        self.say(
            f"    vantage under a greater epoch, once; then handed the office back: {self.leader} leads now."
        )
        self.say()
        for vantage in self.vantages.values():
            self.say(
                f"{vantage.id}: journal $DEMO/{vantage.spec.id}.sqlite3, log $DEMO/{vantage.child.log.name}"
            )
        self.say("etcd: $DEMO/etcd/; lab: $DEMO/lab.log")
        live = [v for v in self.vantages.values() if not v.killed]
        if self.options.keep:
            exe = "baton" if shutil.which("baton") else str(Path(sys.executable).with_name("baton"))
            self.say()
            self.say("The lab, etcd and the live vantages keep running (--keep). Explore:")
            self.say(f"  export DEMO={self.dir}")
            for vantage in live:
                self.say(f'  {exe} status --socket "$DEMO/{vantage.socket.name}"')
            children = [self.lab, *(self.etcd.members if self.etcd else []), *(v.child for v in live)]
            self.say(f"Stop them with: kill -TERM {' '.join(f'-{c.pid}' for c in children if c and c.pid)}")
            return
        self.say("(run `baton demo --vantages 3 --keep` to keep them running and explore)")
        self.say()
        self.say("Stopping: the vantages (SIGTERM: each gives up its lease and stops), the lab, etcd.")
        stopping = time.monotonic()
        stop_together([v.child for v in live])
        codes = {v.id: v.child.proc.returncode if v.child.proc else None for v in live}
        said = ", ".join(f"{vantage} exit {code}" for vantage, code in codes.items())
        if set(codes.values()) != {0}:
            raise DemoError("every vantage to stop with exit code 0", said)
        self.stop(failed=False)
        self.checkpoint(f"stopped in {time.monotonic() - stopping:.1f} s: {said}; the lab; etcd")

    def stop(self, *, failed: bool) -> None:
        """Stop the children: the vantages first (they talk to the lab and etcd); idempotent."""
        if self.options.keep and not failed:
            return
        live = [v.child for v in self.vantages.values() if not v.killed]
        stop_together(live)
        if self.lab is not None:
            self.lab.stop()
        if self.etcd is not None:
            self.etcd.stop()


def run_vantages_demo(options: DemoOptions) -> int:
    """The scene (`baton.demo.play`; 69: no etcd here)."""
    demo = VantagesDemo(options)
    return play(
        demo,
        lambda: [*(v.child for v in demo.vantages.values()), demo.lab],
        "the vantages, the lab and etcd",
    )
