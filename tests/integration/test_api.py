"""The control API on a real unix socket and on loopback TCP, over a real Controller and journal."""

from __future__ import annotations

import datetime as dt
import grp
import io
import json
import os
import pwd
import shutil
import socket
import ssl
import stat
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import aiohttp
import pytest
import structlog

from baton.api import ApiSetupError, Listeners, create_app, start_listeners
from baton.config import ApiSettings, Config, VantageSettings
from baton.controller import Controller, config_event
from baton.core.actions import AbortRun, StartRun
from baton.core.events import OfficeObserved, RunFinished
from baton.core.model import Device, Inventory, Office, OfficeVerdict, Policy, RunKind, SecretRef, State
from baton.journal import Journal, StepStatus
from baton.logs import configure
from baton.secrets import resolve

TOKEN = "s3cret-api-token-0123456789abcdef"

OFFICES = {
    "seoul-geumcheon": Office(
        "seoul-geumcheon", "Seoul Geumcheon", "seoul", ("seoul-bangbae", "suwon-paldal")
    ),
    "seoul-bangbae": Office("seoul-bangbae", "Seoul Bangbae", "seoul", ("seoul-geumcheon",)),
    "suwon-paldal": Office("suwon-paldal", "Suwon Paldal", "gyeonggi", ("seoul-geumcheon",)),
}
DEVICES = {
    d.id: d
    for d in (
        Device("gc-core1", "seoul-geumcheon", "core", "10.1.0.1", critical=True),
        Device("gc-agg1", "seoul-geumcheon", "aggregation", "10.1.0.2", critical=True),
        Device("gc-olt1", "seoul-geumcheon", "olt", "10.1.0.3"),
        Device("bb-core1", "seoul-bangbae", "core", "10.2.0.1", critical=True),
        Device("sw-core1", "suwon-paldal", "core", "10.3.0.1", critical=True),
    )
}
INVENTORY = Inventory(offices=OFFICES, devices=DEVICES)


class RecordingRunner:
    """The actuator: records run actions and journals what a runner would (the run, one step per device)."""

    def __init__(self, journal: Journal, inventory: Inventory) -> None:
        self.journal = journal
        self.inventory = inventory
        self.started: list[StartRun] = []
        self.aborted: list[AbortRun] = []
        self.progress: dict[str, dict[str, dict[str, str]]] = {}
        self.on_start: Callable[[StartRun], None] | None = None  # a test's hook, called last

    def start_run(self, action: StartRun) -> None:
        self.started.append(action)
        now = time.time()  # the run's row came with the decision that started it
        progress = self.progress.setdefault(action.run_id, {})
        for device in self.inventory.devices_of(action.office):
            self.journal.step_intent(action.run_id, device.id, 0, "reroute-uplinks", now)
            progress[device.id] = {"step": "reroute-uplinks", "status": "running"}
        if self.on_start is not None:
            self.on_start(action)

    def abort_run(self, action: AbortRun) -> None:
        self.aborted.append(action)

    def finish(self, run_id: str, device: str) -> None:
        """One device's step is done (as the runner would journal it)."""
        [step] = [s for s in self.journal.steps_of(run_id) if s.device == device]
        self.journal.step_result(step.id, StepStatus.DONE, "uplinks moved", time.time())
        self.progress[run_id][device] = {"step": "reroute-uplinks", "status": "done"}


@dataclass
class ApiTestBackend:
    """A real daemon backend for the API: Controller + journal + inventory, runs recorded not run."""

    controller: Controller
    journal: Journal
    inventory: Inventory
    config: Config
    runner: RecordingRunner
    plans: list[tuple[str, str | None]] = field(default_factory=list)
    shared_waits: int = 0

    def device_views(self, office: str) -> list[dict[str, Any]]:
        return [
            {
                "id": d.id,
                "role": d.role,
                "critical": d.critical,
                "address": d.address,
                "verdict": "UP",
                "reason": "answers SNMP",
                "last_seen": {"snmp": 1_700_000_000.0},
            }
            for d in self.inventory.devices_of(office)
        ]

    def run_progress(self, run_id: str) -> dict[str, Any] | None:
        return self.runner.progress.get(run_id)

    async def plan(self, office: str, to: str | None) -> dict[str, Any]:
        self.plans.append((office, to))
        if office == "suwon-paldal":
            raise ValueError("playbook handover.yaml: step 'reroute-uplinks' has no template for role core")
        return {"office": office, "alternate": to or "seoul-bangbae", "devices": ["gc-core1"]}

    def status_extra(self) -> dict[str, Any]:
        return {"vantage": self.config.vantage.id, "uptime_s": 75.0, "last_loop_at": time.time() - 2}

    async def shared(self) -> None:
        self.shared_waits += 1  # the daemon's waits until the leader's state is published

    def finish_run(self, run_id: str, ok: bool) -> None:
        """The run's result reaches the core, as the service feeds it back."""
        office = next(o for o in self.controller.state.offices.values() if o.run_id == run_id)
        assert office.run_kind is not None
        self.controller.apply(RunFinished(office.office, run_id, office.run_kind, ok))


def make_backend(directory: Path) -> ApiTestBackend:
    journal = Journal.open(directory / "journal.sqlite3")
    runner = RecordingRunner(journal, INVENTORY)
    controller = Controller(State(offices=MappingProxyType({})), Policy(), journal, runner, time.time)
    controller.apply(config_event({o.id: o.alternates for o in INVENTORY.offices.values()}, False, Policy()))
    config = Config(
        policy=Policy(),
        vantage=VantageSettings("vantage-seoul-1", "seoul-bangbae"),
        inventory=directory,
        playbooks=directory,
    )
    return ApiTestBackend(controller, journal, INVENTORY, config, runner)


def short_tmpdir() -> Iterator[Path]:
    # Unix socket paths are limited to ~107 bytes: pytest's tmp_path can be longer.
    directory = Path(tempfile.mkdtemp(prefix="baton-api-", dir="/tmp"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@dataclass
class Served:
    backend: ApiTestBackend
    listeners: Listeners
    directory: Path

    @property
    def port(self) -> int:
        assert self.listeners.tcp is not None
        return self.listeners.tcp[1]


@pytest.fixture
def workdir() -> Iterator[Path]:
    yield from short_tmpdir()


@pytest.fixture
async def served(workdir: Path) -> AsyncIterator[Served]:
    backend = make_backend(workdir)
    (workdir / "api-ops").write_text(TOKEN + "\n")
    settings = ApiSettings(
        unix_socket=workdir / "run" / "api.sock",  # "run/" does not exist yet: the API creates it
        tcp_listen="127.0.0.1:0",
        tokens=(SecretRef("file", str(workdir / "api-ops")),),
    )
    app = create_app(backend, tokens=(), allow_peercred=True)
    listeners = await start_listeners(app, settings, resolve)
    try:
        yield Served(backend, listeners, workdir)
    finally:
        await listeners.close()
        backend.journal.close()


async def call(
    served: Served,
    method: str,
    path: str,
    *,
    via: str = "unix",
    token: str | None = None,
    body: Any = None,
    raw: bytes | None = None,
) -> tuple[int, Any]:
    """One request; the status and the parsed JSON body."""
    connector = aiohttp.UnixConnector(path=str(served.listeners.unix_socket)) if via == "unix" else None
    base = "http://localhost" if via == "unix" else f"http://127.0.0.1:{served.port}"
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    if raw is not None:
        headers["Content-Type"] = "application/json"
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.request(method, base + path, json=body, data=raw, headers=headers) as response,
    ):
        return response.status, json.loads(await response.text())


ME = pwd.getpwuid(os.getuid()).pw_name


# --- authentication ----------------------------------------------------------------------------


async def test_tcp_without_token_is_unauthorized(served: Served) -> None:
    """A TCP request without a bearer token gets 401 and a JSON error, and no data."""
    status, body = await call(served, "GET", "/v1/offices", via="tcp")
    assert 401 == status
    assert ["error"] == list(body)
    assert "Bearer" in body["error"]


async def test_tcp_with_wrong_token_is_unauthorized(served: Served) -> None:
    """A TCP request with a token the daemon does not know gets 401, and no command is journaled."""
    status, body = await call(
        served, "POST", "/v1/pause", via="tcp", token=TOKEN[:-1] + "X", body={"reason": "x"}
    )
    assert (401, ["error"]) == (status, list(body))
    assert [] == served.backend.journal.commands()
    assert served.backend.controller.state.paused is False


async def test_tcp_with_good_token_is_served_and_named_after_the_token(served: Served) -> None:
    """With the right token the TCP API answers, and commands are journaled as the token's name."""
    status, body = await call(served, "GET", "/v1/offices", via="tcp", token=TOKEN)
    assert 200 == status
    assert ["seoul-bangbae", "seoul-geumcheon", "suwon-paldal"] == [o["id"] for o in body["offices"]]
    status, _ = await call(served, "POST", "/v1/pause", via="tcp", token=TOKEN, body={"reason": "drill"})
    assert 200 == status
    [command] = served.backend.journal.commands()
    assert ("token:api-ops", "pause", "drill") == (command.who, command.command, command.reason)
    # Leading, a command is answered once what it decided is shared with the other vantages;
    # a read waits for nothing.
    assert 1 == served.backend.shared_waits
    await call(served, "GET", "/v1/status", via="tcp", token=TOKEN)
    assert 1 == served.backend.shared_waits


async def test_unix_socket_operator_is_the_peer_user(served: Served) -> None:
    """On the unix socket the kernel-reported peer user is who the command is journaled for."""
    status, body = await call(
        served, "POST", "/v1/offices/seoul-geumcheon/handover", body={"reason": "fire alarm"}
    )
    assert 202 == status
    [command] = served.backend.journal.commands()
    assert (ME, "handover") == (command.who, command.command)
    assert ME == body["office"]["closure"]["who"]


async def test_healthz_needs_no_token_and_says_nothing(served: Served) -> None:
    """/healthz answers without authentication, with no data about offices."""
    assert (200, {"ok": True}) == await call(served, "GET", "/healthz", via="tcp")


async def test_the_unix_socket_is_0660_in_the_configured_group(workdir: Path) -> None:
    """The socket is created 0660 and chgrp'd to socket_group: its mode and group are the authentication."""
    others = [g for g in grp.getgrall() if g.gr_gid != os.getgid()]
    if os.geteuid() != 0 or not others:
        pytest.skip("chgrp to another group needs root and a second group")
    group = others[0]
    backend = make_backend(workdir)
    app = create_app(backend, tokens=(), allow_peercred=True)
    settings = ApiSettings(unix_socket=workdir / "api.sock", socket_group=group.gr_name)
    listeners = await start_listeners(app, settings, resolve)
    try:
        info = (workdir / "api.sock").stat()
        assert (0o660, group.gr_gid) == (stat.S_IMODE(info.st_mode), info.st_gid)
    finally:
        await listeners.close()
        backend.journal.close()
    assert not (workdir / "api.sock").exists()


async def test_an_api_nobody_could_authenticate_to_is_refused(workdir: Path) -> None:
    """Without tokens, TCP is refused; without tokens and peer credentials, the whole API is."""
    backend = make_backend(workdir)
    try:
        tcp = ApiSettings(unix_socket=workdir / "a.sock", tcp_listen="127.0.0.1:0")
        with pytest.raises(ApiSetupError, match="has no tokens"):
            await start_listeners(create_app(backend, tokens=(), allow_peercred=True), tcp, resolve)
        unix = ApiSettings(unix_socket=workdir / "b.sock")
        with pytest.raises(ApiSetupError, match="no way to authenticate"):
            await start_listeners(create_app(backend, tokens=(), allow_peercred=False), unix, resolve)
        assert not (workdir / "a.sock").exists()
        assert not (workdir / "b.sock").exists()
    finally:
        backend.journal.close()


async def test_tls_listener_serves_with_token(workdir: Path) -> None:
    """With tls_cert/tls_key the TCP API speaks TLS, and still requires the token."""
    cert, key = _self_signed(workdir)
    backend = make_backend(workdir)
    settings = ApiSettings(
        unix_socket=workdir / "api.sock", tcp_listen="127.0.0.1:0", tls_cert=cert, tls_key=key
    )
    listeners = await start_listeners(
        create_app(backend, tokens=[TOKEN], allow_peercred=True), settings, resolve
    )
    try:
        assert listeners.tcp is not None
        context = ssl.create_default_context(cafile=str(cert))
        url = f"https://localhost:{listeners.tcp[1]}/v1/status"
        async with aiohttp.ClientSession() as session:
            async with session.get(url, ssl=context) as response:
                assert 401 == response.status
            headers = {"Authorization": f"Bearer {TOKEN}"}
            async with session.get(url, ssl=context, headers=headers) as response:
                assert (200, "vantage-seoul-1") == (response.status, (await response.json())["vantage"])
    finally:
        await listeners.close()
        backend.journal.close()


def _self_signed(directory: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "api.crt", directory / "api.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


# --- validation and errors ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b'{"reason": ', "malformed JSON body"),
        (b'["fire"]', "the body must be a JSON object, not an array"),
        (b"{}", "'reason' is required"),
        (b'{"reason": 5}', "'reason' must be a string, not a number"),
        (b'{"reason": "   "}', "'reason' must not be empty"),
        (b'{"reason": "fire", "until": "tomorrow"}', "'until' is not an ISO 8601 time"),
        (b'{"reason": "fire", "until": "2030-01-01T08:00"}', "'until' has no time zone"),
        (b'{"reason": "fire", "until": true}', "'until' must be an ISO 8601 time or epoch seconds"),
        (b'{"reason": "fire", "to": 3}', "'to' must be a non-empty string, not a number"),
        (b'{"reason": "fire", "reasons": "typo"}', "unknown field 'reasons'"),
    ],
)
async def test_malformed_handover_is_400_naming_the_problem(
    served: Served, raw: bytes, expected: str
) -> None:
    """A bad handover body is refused with 400 saying what is wrong, and nothing is journaled."""
    status, body = await call(served, "POST", "/v1/offices/seoul-geumcheon/handover", raw=raw)
    assert 400 == status
    assert expected in body["error"], body["error"]
    assert [] == served.backend.journal.commands()


async def test_shadow_needs_a_boolean(served: Served) -> None:
    """`on` must be a JSON boolean: "yes" is refused, true switches shadow mode on."""
    status, body = await call(served, "POST", "/v1/shadow", body={"on": "yes"})
    assert (400, "'on' must be true or false (a string)") == (status, body["error"])
    status, _ = await call(served, "POST", "/v1/shadow", body={"on": True})
    assert (200, True) == (status, served.backend.controller.state.shadow)


async def test_unknown_office_is_404_listing_the_known_ones(served: Served) -> None:
    """An unknown office id is 404 with the known offices in the message."""
    status, body = await call(served, "POST", "/v1/offices/seoul-gumchon/handover", body={"reason": "x"})
    expected = "unknown office 'seoul-gumchon'; known offices: seoul-bangbae, seoul-geumcheon, suwon-paldal"
    assert (404, expected) == (status, body["error"])


async def test_unknown_endpoint_and_method_are_json_errors(served: Served) -> None:
    """Routing errors are JSON too: 404 for a path, 405 for a method."""
    status, body = await call(served, "GET", "/v1/nothing")
    assert (404, "no such endpoint: GET /v1/nothing") == (status, body["error"])
    status, body = await call(served, "GET", "/v1/pause")
    assert 405 == status
    assert "GET is not allowed on /v1/pause" in body["error"]


async def test_refused_command_is_409_with_the_core_reason(served: Served) -> None:
    """A handback of an OPEN office is refused by the core: 409 with its sentence, journaled anyway."""
    status, body = await call(served, "POST", "/v1/offices/seoul-geumcheon/handback", body={"reason": "ok"})
    expected = f"handback of seoul-geumcheon requested by {ME} (ok) refused: OPEN, nothing is handed over"
    assert (409, expected) == (status, body["error"])
    assert ["handback"] == [c.command for c in served.backend.journal.commands()]


# --- commands and reads ------------------------------------------------------------------------


async def test_accepted_handover_is_journaled_and_starts_the_run(served: Served) -> None:
    """An accepted handover: 202 with the run id, the command journaled with until/to, StartRun acted on."""
    served.backend.controller.apply(
        OfficeObserved("suwon-paldal", OfficeVerdict.HEALTHY, "3/3 up")
    )  # --to needs it
    status, body = await call(
        served,
        "POST",
        "/v1/offices/seoul-geumcheon/handover",
        body={"reason": "flooding", "until": "2099-01-01T00:00:00+09:00", "to": "suwon-paldal"},
    )
    assert 202 == status
    [started] = served.backend.runner.started
    assert (body["run_id"], "seoul-geumcheon", RunKind.HANDOVER, "suwon-paldal") == (
        started.run_id,
        started.office,
        started.kind,
        started.alternate,
    )
    [command] = served.backend.journal.commands()
    until = dt.datetime(2099, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=9))).timestamp()
    expected_args = {"office": "seoul-geumcheon", "until": until, "to": "suwon-paldal"}
    assert (ME, "handover", "flooding", expected_args) == (
        command.who,
        command.command,
        command.reason,
        dict(command.args),
    )
    assert ("HANDING_OVER", "suwon-paldal", until) == (
        body["office"]["phase"],
        body["office"]["alternate"],
        body["office"]["closure"]["until"],
    )


async def test_office_views_show_phase_reason_and_closure(served: Served) -> None:
    """/v1/offices/{id} shows the phase, the last transition's reason and the closure."""
    await call(served, "POST", "/v1/offices/seoul-geumcheon/handover", body={"reason": "fire"})
    status, office = await call(served, "GET", "/v1/offices/seoul-geumcheon")
    assert 200 == status
    assert ("HANDING_OVER", "seoul-bangbae", 3) == (office["phase"], office["alternate"], office["devices"])
    assert served.backend.controller.last_reason["seoul-geumcheon"] == office["reason"]
    assert {"kind": "declared", "who": ME, "reason": "fire", "until": None} == {
        k: office["closure"][k] for k in ("kind", "who", "reason", "until")
    }


async def test_devices_status_and_plan(served: Served) -> None:
    """Devices come from the backend, status counts phases, a failing dry run is 422 with its cause."""
    status, body = await call(served, "GET", "/v1/offices/seoul-geumcheon/devices")
    assert (200, ["gc-core1", "gc-agg1", "gc-olt1"]) == (status, [d["id"] for d in body["devices"]])
    await call(served, "POST", "/v1/pause", body={"reason": "maintenance window"})
    status, body = await call(served, "GET", "/v1/status")
    assert (200, True, 3) == (status, body["paused"], body["phases"]["OPEN"])
    status, body = await call(served, "GET", "/v1/offices/seoul-geumcheon/plan?to=suwon-paldal")
    assert (200, ("seoul-geumcheon", "suwon-paldal")) == (status, served.backend.plans[-1])
    status, body = await call(served, "GET", "/v1/offices/suwon-paldal/plan")
    assert 422 == status
    assert "has no template for role core" in body["error"]


async def test_run_shows_steps_live_progress_then_result(served: Served) -> None:
    """GET /v1/runs/{id}: steps and live progress while running; the core's result once it finished."""
    _, answer = await call(served, "POST", "/v1/offices/seoul-geumcheon/handover", body={"reason": "fire"})
    run_id = answer["run_id"]
    served.backend.runner.finish(run_id, "gc-core1")
    status, run = await call(served, "GET", f"/v1/runs/{run_id}")
    assert (200, "running") == (status, run["status"])
    assert {"device": "gc-core1", "name": "reroute-uplinks", "status": "done"} == {
        k: run["steps"][0][k] for k in ("device", "name", "status")
    }
    assert {"step": "reroute-uplinks", "status": "done"} == run["progress"]["gc-core1"]
    assert "persist_id" not in run
    served.backend.finish_run(run_id, ok=True)
    _, run = await call(served, "GET", f"/v1/runs/{run_id}")
    assert ("ok", None) == (run["status"], run["progress"])
    _, runs = await call(served, "GET", "/v1/runs?office=seoul-geumcheon&limit=5")
    assert [(run_id, "ok")] == [(r["id"], r["status"]) for r in runs["runs"]]


async def test_runs_query_and_unknown_run(served: Served) -> None:
    """A bad limit is 400, an unknown run 404."""
    status, body = await call(served, "GET", "/v1/runs?limit=many")
    assert (400, "query parameter 'limit' must be an integer, not 'many'") == (status, body["error"])
    status, body = await call(served, "GET", "/v1/runs/r-nope")
    assert 404 == status
    assert "no run 'r-nope'" in body["error"]


async def test_the_token_never_appears_in_logs_or_responses(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    """Neither a good nor a wrong token shows up in any log line or any response body."""
    stream = io.StringIO()
    configure(json=True, stream=stream)
    bodies = []
    try:
        for token in (None, TOKEN[:-3] + "zzz", TOKEN + "x", TOKEN):
            for method, path, body in (
                ("GET", "/v1/status", None),
                ("POST", "/v1/offices/seoul-geumcheon/handover", {"reason": f"drill {token is None}"}),
                ("POST", "/v1/offices/nowhere/ack", {}),
                ("POST", "/v1/pause", {"reason": 1}),
            ):
                _, answer = await call(served, method, path, via="tcp", token=token, body=body)
                bodies.append(json.dumps(answer))
    finally:
        structlog.reset_defaults()
    logged = stream.getvalue()
    assert "api.unauthorized" in logged  # the capture works: refusals were logged
    assert "api.command" in logged
    everything = logged + "\n".join(bodies) + caplog.text
    assert TOKEN[:12] not in everything


async def test_reclaims_a_stale_socket_but_not_a_live_one(served: Served, workdir: Path) -> None:
    """A second daemon on a live socket is refused; a socket file nobody answers on is replaced."""
    backend = served.backend
    live = ApiSettings(unix_socket=served.listeners.unix_socket)
    with pytest.raises(ApiSetupError, match="another process answers"):
        await start_listeners(create_app(backend, tokens=(), allow_peercred=True), live, resolve)
    stale = workdir / "stale.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(stale))  # left behind, as by a daemon that was killed
    listeners = await start_listeners(
        create_app(backend, tokens=(), allow_peercred=True), ApiSettings(unix_socket=stale), resolve
    )
    try:
        connector = aiohttp.UnixConnector(path=str(stale))
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            session.get("http://localhost/v1/status") as response,
        ):
            assert 200 == response.status
    finally:
        await listeners.close()
