"""The Debian package: built from this checkout, installed, run as its unit says, purged.

The package is built once per module (`./quickstart deb`, or `$BATON_DEB` when CI built it
already) and installed on this machine with apt. Without systemd as PID 1, `UnitRun` applies the
installed unit's settings itself as far as they can be: the ExecStart= command line, User= and
Group= with their supplementary groups, NoNewPrivileges=, the ambient and bounding capabilities,
UMask=, LimitNOFILE= (capped at this machine's hard limit), the state/runtime/logs directories,
LoadCredential= (copied into a $CREDENTIALS_DIRECTORY as systemd does), the notify socket
(READY=1 must come from the main process: NotifyAccess=main) and the watchdog. The sandbox
settings themselves are judged by `systemd-analyze security`.

The tests touch the machine (a system user, /etc/baton, /var/lib/baton), so they take a lock,
refuse to run over a Baton the machine already has, and purge the package even when they fail.
"""

from __future__ import annotations

import contextlib
import fcntl
import grp
import json
import os
import pwd
import re
import resource
import secrets
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.harness import LabProcess, free_port, wait_for
from tests.peers.util import require_binary, skip_or_fail

pytestmark = [pytest.mark.slow, pytest.mark.peer("dpkg")]

REPO = Path(__file__).resolve().parents[2]
UNIT = Path("/lib/systemd/system/baton.service")
WANTS = Path("/etc/systemd/system/multi-user.target.wants/baton.service")
BATON = Path("/usr/bin/baton")  # not whatever `baton` is first on this test's PATH
LOCK = Path("/run/lock/baton-package-test.lock")
# Present while a run of this module may have the package installed: a run that was killed
# leaves it behind, and the next run may then purge what it finds.
MARKER = Path("/run/baton-package-test")
STATE_DIR = Path("/var/lib/baton")
BUILD_TIMEOUT_S = 600.0
APT_TIMEOUT_S = 300.0
READY_TIMEOUT_S = 90.0
LAB_OFFICES = "busan-jung,busan-haeundae"
# Warnings the build backend printed for Baton's own metadata (`./quickstart setup` showed ~40
# lines of them about `project.license`). Other projects' builds do not run here: only wheels.
SETUPTOOLS_WARNINGS = re.compile(r"SetuptoolsDeprecationWarning|BuildBackendWarning|project\.license")


def run(
    argv: Sequence[str],
    *,
    timeout_s: float = 120.0,
    env: Mapping[str, str] | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run a command; on a non-zero exit (with `check`), fail with its output."""
    done = subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env=None if env is None else {**os.environ, **env},
        stdin=subprocess.DEVNULL,
        check=False,
    )
    if check and done.returncode != 0:
        pytest.fail(
            f"{shlex.join(argv)} exited {done.returncode}\nstdout:\n{done.stdout[-3000:]}\n"
            f"stderr:\n{done.stderr[-3000:]}",
            pytrace=False,
        )
    return done


def apt(*args: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run(
        ["apt-get", "-y", "-q", "--no-install-recommends", *args],
        timeout_s=APT_TIMEOUT_S,
        env={"DEBIAN_FRONTEND": "noninteractive", **(env or {})},
    )


def package_status() -> str:
    """dpkg's status of the baton package ('' when dpkg has never heard of it)."""
    done = run(["dpkg-query", "-W", "-f=${Status}", "baton"], check=False)
    return done.stdout.strip() if done.returncode == 0 else ""


def user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


def mode_of(path: Path) -> tuple[str, str, int]:
    st = path.stat()
    return pwd.getpwuid(st.st_uid).pw_name, grp.getgrgid(st.st_gid).gr_name, st.st_mode & 0o7777


# --- the installed unit ---------------------------------------------------------------------------


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """section → key → every value given, in order (keys like LoadCredential= repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{path}: a setting outside any section: {line!r}"
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def timespan_s(text: str) -> float:
    """A systemd time span ('30s', '1min 30s', '90') in seconds."""
    units = {"": 1.0, "s": 1.0, "sec": 1.0, "min": 60.0, "m": 60.0, "h": 3600.0, "ms": 0.001}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", text):
        total += float(number) * units[unit]
    return total


def last(service: Mapping[str, list[str]], key: str, default: str | None = None) -> str:
    values = service.get(key)
    if not values:
        assert default is not None, f"the unit has no {key}="
        return default
    return values[-1]


@dataclass
class Notification:
    fields: dict[str, str]
    pid: int


@dataclass
class NotifySocket:
    """systemd's end of the notify protocol: a datagram socket that learns each sender's pid."""

    path: Path
    messages: list[Notification] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(str(self.path))
        self.path.chmod(0o666)  # the daemon connects as its own user
        self.sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name="notify-socket", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        ucred = struct.Struct("3i")
        while not self._stop.is_set():
            try:
                data, ancdata, _flags, _addr = self.sock.recvmsg(65536, socket.CMSG_SPACE(ucred.size))
            except TimeoutError:
                continue
            except OSError:
                return
            pid = -1
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = ucred.unpack(payload[: ucred.size])[0]
            lines = data.decode(errors="replace").splitlines()
            self.messages.append(Notification(dict(x.split("=", 1) for x in lines if "=" in x), pid))

    def having(self, key: str) -> list[Notification]:
        return [m for m in list(self.messages) if key in m.fields]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


class UnitRun:
    """The installed unit's service, started the way systemd would start it (as far as can be)."""

    def __init__(self, unit: Path, base: Path) -> None:
        self.unit = parse_unit(unit)
        self.service = self.unit["Service"]
        self.base = base
        self.name = unit.name
        self.user = last(self.service, "User")
        self.group = last(self.service, "Group", self.user)
        self.log = base / "daemon.log"
        self.credentials = base / "credentials" / self.name
        self.notify = NotifySocket(base / "notify.sock")
        self.popen: subprocess.Popen[bytes] | None = None
        self.created: list[Path] = []

    @property
    def exec_start(self) -> list[str]:
        (line,) = self.service["ExecStart"]
        assert not line.startswith(("-", "@", "+", "!", ":")), f"unhandled ExecStart= prefix: {line}"
        return shlex.split(line)

    def _directory(self, kind: str, root: Path, default_mode: str) -> dict[str, str]:
        """StateDirectory= and friends: create, chown to the service user, set the mode."""
        env: dict[str, str] = {}
        for name in self.service.get(f"{kind}Directory", []):
            path = root / name
            if not path.exists():
                self.created.append(path)
            path.mkdir(parents=True, exist_ok=True)
            if kind != "Configuration":  # systemd never chowns the configuration directory
                shutil.chown(path, self.user, self.group)
            path.chmod(int(last(self.service, f"{kind}DirectoryMode", default_mode), 8))
            env[f"{kind.upper()}_DIRECTORY"] = str(path)
        return env

    def _load_credentials(self) -> dict[str, str]:
        """LoadCredential=ID:PATH → $CREDENTIALS_DIRECTORY/ID, readable by the service user only."""
        self.credentials.mkdir(parents=True)
        uid, gid = pwd.getpwnam(self.user).pw_uid, grp.getgrnam(self.group).gr_gid
        for entry in self.service.get("LoadCredential", []):
            cred_id, _, source = entry.partition(":")
            if not Path(source).is_file():
                pytest.fail(f"the unit would fail (243/CREDENTIALS): LoadCredential= {source} is missing")
            target = self.credentials / cred_id
            shutil.copyfile(source, target)
            os.chown(target, uid, gid)
            target.chmod(0o400)
        os.chown(self.credentials, uid, gid)
        self.credentials.chmod(0o500)
        return {"CREDENTIALS_DIRECTORY": str(self.credentials)}

    def environment(self) -> dict[str, str]:
        assert "Environment" not in self.service
        assert "EnvironmentFile" not in self.service
        account = pwd.getpwnam(self.user)
        env = {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin",
            "LANG": "C.UTF-8",
            "USER": self.user,
            "LOGNAME": self.user,
            "HOME": account.pw_dir,
            "SHELL": account.pw_shell,
            "NOTIFY_SOCKET": str(self.notify.path),
            "WATCHDOG_USEC": str(int(timespan_s(last(self.service, "WatchdogSec")) * 1_000_000)),
        }
        env.update(self._directory("State", Path("/var/lib"), "0755"))
        env.update(self._directory("Runtime", Path("/run"), "0755"))
        env.update(self._directory("Logs", Path("/var/log"), "0755"))
        env.update(self._directory("Configuration", Path("/etc"), "0755"))
        env.update(self._load_credentials())
        return env

    def argv(self) -> list[str]:
        caps = [c.lower() for c in last(self.service, "AmbientCapabilities", "").split()]
        bounding = [c.lower() for c in last(self.service, "CapabilityBoundingSet", "").split()]
        setpriv = [
            "setpriv",
            f"--reuid={self.user}",
            f"--regid={self.group}",
            "--init-groups",  # systemd sets the user's supplementary groups too
        ]
        if last(self.service, "NoNewPrivileges", "no") == "yes":
            setpriv.append("--no-new-privs")
        if caps:
            names = ",".join(f"+{c.removeprefix('cap_')}" for c in caps)
            setpriv += [f"--inh-caps={names}", f"--ambient-caps={names}"]
        if bounding:
            setpriv.append("--bounding-set=-all," + ",".join(f"+{c.removeprefix('cap_')}" for c in bounding))
        argv = [*setpriv, "--", *self.exec_start]
        nofile = last(self.service, "LimitNOFILE", "")
        if nofile:
            # Raising the hard limit needs CAP_SYS_RESOURCE, which a container may not have.
            limit = min(int(nofile), resource.getrlimit(resource.RLIMIT_NOFILE)[1])
            argv = ["prlimit", f"--nofile={limit}:{limit}", "--", *argv]
        return argv

    def start(self) -> None:
        env = self.environment()
        umask = int(last(self.service, "UMask", "0022"), 8)
        with self.log.open("ab") as log:
            self.popen = subprocess.Popen(
                self.argv(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd="/",
                umask=umask,
                start_new_session=True,
            )

    def wait_ready(self, timeout_s: float) -> Notification:
        def ready() -> Notification | None:
            if self.popen is not None and self.popen.poll() is not None:
                pytest.fail(f"the daemon exited {self.popen.returncode} before READY=1:\n{self.log_tail()}")
            found = [m for m in self.notify.having("READY") if m.fields["READY"] == "1"]
            return found[0] if found else None

        try:
            return wait_for(ready, timeout_s, "READY=1 on the notify socket")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.log_tail()}") from None

    def stop(self) -> int | None:
        """SIGTERM (KillMode=mixed: the main process first), then SIGKILL after TimeoutStopSec."""
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timespan_s(last(self.service, "TimeoutStopSec", "90s")))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout=10)
        return self.popen.returncode

    def cleanup(self) -> None:
        """What systemd does after the stop: runtime directory and credentials go."""
        self.stop()
        self.notify.close()
        shutil.rmtree(self.credentials.parent, ignore_errors=True)
        for name in self.service.get("RuntimeDirectory", []):
            shutil.rmtree(Path("/run") / name, ignore_errors=True)

    def log_tail(self, max_chars: int = 4000) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return f"daemon log {self.log} ends:\n{text[-max_chars:]}"


# --- building and installing ------------------------------------------------------------------------


@dataclass(frozen=True)
class Built:
    deb: Path
    build_log: str


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """The package: $BATON_DEB (with its .build.log beside it) or `./quickstart deb` now."""
    if os.geteuid() != 0:
        skip_or_fail("building and installing the package needs root")
    for name, package in (("dpkg-buildpackage", "dpkg-dev"), ("dh_virtualenv", "dh-virtualenv")):
        require_binary(name, package)
    prebuilt = os.environ.get("BATON_DEB")
    if prebuilt:
        deb = Path(prebuilt).resolve()
        log = deb.with_suffix(".build.log")
        return Built(deb, log.read_text() if log.exists() else "")
    out = tmp_path_factory.mktemp("deb")
    done = run([str(REPO / "quickstart"), "deb", "--out", str(out)], timeout_s=BUILD_TIMEOUT_S)
    deb = Path(done.stdout.strip().splitlines()[-1])
    return Built(deb, deb.with_suffix(".build.log").read_text())


def leftovers() -> list[str]:
    """What of an installed Baton this machine has (a package, its accounts, its directories)."""
    found = []
    if package_status():
        found.append(f"the baton package ({package_status()})")
    found += [f"user or group {n}" for n in ("baton", "baton-operators") if user_exists(n) or group_exists(n)]
    found += [str(p) for p in (Path("/etc/baton"), STATE_DIR, Path("/opt/baton")) if p.exists()]
    return found


def purge_everything() -> None:
    """Purge the package (journal too) and whatever a failed run may have left."""
    if package_status():
        run(
            ["apt-get", "purge", "-y", "-q", "baton"],
            env={"DEBIAN_FRONTEND": "noninteractive", "BATON_PURGE_JOURNAL": "yes"},
            timeout_s=APT_TIMEOUT_S,
            check=False,
        )
    for path in ("/etc/baton", "/opt/baton", "/var/lib/baton", "/var/log/baton", "/run/baton"):
        shutil.rmtree(path, ignore_errors=True)
    if user_exists("baton"):
        run(["userdel", "baton"], check=False)
    for name in ("baton", "baton-operators"):
        if group_exists(name):
            run(["groupdel", name], check=False)


@contextlib.contextmanager
def machine_lock(timeout_s: float = 600.0) -> Iterator[None]:
    """One run of this module at a time on a machine (they share /etc/baton and the accounts)."""
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    with LOCK.open("w") as lock:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.fail(f"another run holds {LOCK} for more than {timeout_s} s", pytrace=False)
                time.sleep(1.0)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture(scope="module")
def installed(built: Built) -> Iterator[Built]:
    """The package installed with apt; purged (journal and all) at the end, whatever happened."""
    for name, package in (
        ("systemd-analyze", "systemd"),
        ("setpriv", "util-linux"),
        ("runuser", "util-linux"),
        ("prlimit", "util-linux"),
    ):
        require_binary(name, package)
    with machine_lock():
        if MARKER.exists():
            purge_everything()  # a killed run of this module left it
        found = leftovers()
        if found:
            skip_or_fail(
                "this machine has a Baton the test would remove: " + ", ".join(found) + " (purge it first)"
            )
        MARKER.touch()
        try:
            apt("install", str(built.deb))
            yield built
        finally:
            purge_everything()
            MARKER.unlink(missing_ok=True)


# --- the tests ---------------------------------------------------------------------------------------


def test_package_version_is_the_project_version() -> None:
    """debian/changelog names the version pyproject.toml has (the .deb's file name carries it)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    first = (REPO / "debian" / "changelog").read_text().splitlines()[0]
    match = re.match(r"^baton \(([^)]+)\) ", first)
    assert match is not None, first
    assert project["version"] == match.group(1)


def test_license_metadata_is_an_spdx_expression() -> None:
    """project.license is an SPDX string and the build needs a setuptools that reads it (>= 77)."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "Apache-2.0" == pyproject["project"]["license"]
    requires = pyproject["build-system"]["requires"]
    assert any(re.fullmatch(r"setuptools>=(7[7-9]|[89]\d|\d{3,})(\.\d+)*", r) for r in requires), requires


@pytest.mark.timeout(BUILD_TIMEOUT_S + 60)  # the build runs in this test's setup
def test_build_names_the_file_and_prints_no_setuptools_warnings(built: Built) -> None:
    """The build writes baton_<version>_<arch>.deb, and Baton's metadata draws no deprecation warning."""
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    arch = run(["dpkg", "--print-architecture"]).stdout.strip()
    assert f"baton_{version}_{arch}.deb" == built.deb.name
    fields = run(["dpkg-deb", "-f", str(built.deb), "Package", "Version", "Architecture"]).stdout
    assert f"Package: baton\nVersion: {version}\nArchitecture: {arch}\n" == fields
    if built.build_log:
        assert [] == [line for line in built.build_log.splitlines() if SETUPTOOLS_WARNINGS.search(line)]


def test_install_creates_accounts_directories_and_conffiles(installed: Built) -> None:
    """Accounts, modes, the enabled (not started) unit, rules, docs and /usr/bin/baton are in place."""
    assert "install ok installed" == package_status()
    assert user_exists("baton")
    assert group_exists("baton-operators")
    assert "baton" in grp.getgrnam("baton-operators").gr_mem  # it hands its API socket to that group
    assert pwd.getpwnam("baton").pw_shell == "/usr/sbin/nologin"
    assert ("root", "baton", 0o750) == mode_of(Path("/etc/baton"))
    assert ("root", "baton", 0o750) == mode_of(Path("/etc/baton/credentials"))
    assert ("baton", "baton", 0o750) == mode_of(STATE_DIR)
    for name in ("api-token", "snmp-community"):
        assert ("root", "baton", 0o640) == mode_of(Path("/etc/baton/inventory/credentials") / name)
    conffiles = set(Path("/var/lib/dpkg/info/baton.conffiles").read_text().split())
    for path in (
        "baton.yaml",
        "inventory/offices.yaml",
        "inventory/credentials/api-token",
        "playbooks/handover.yaml",
    ):
        assert f"/etc/baton/{path}" in conffiles
    assert str(UNIT) == os.readlink(WANTS)
    doc = re.search(r"^Documentation=file://(\S+)$", UNIT.read_text(), re.M)
    assert doc is not None
    assert Path(doc.group(1)).is_file()
    assert Path("/usr/share/baton/prometheus/baton-rules.yml").is_file()
    assert Path("/usr/share/baton/grafana/baton.json").is_file()
    assert "/opt/baton/venv/bin/baton" == os.readlink(BATON)
    assert Path(shlex.split(parse_unit(UNIT)["Service"]["ExecStart"][0])[0]).is_file()
    # Only these files get credentials placeholders; the daemon never started.
    for entry in parse_unit(UNIT)["Service"]["LoadCredential"]:
        assert ("root", "root", 0o600) == mode_of(Path(entry.partition(":")[2]))
    assert not Path("/run/baton").exists()


def test_installed_unit_passes_systemd_analyze_verify(installed: Built) -> None:
    """systemd-analyze verify accepts the installed unit without a word on stderr."""
    done = run(["systemd-analyze", "verify", str(UNIT)], check=False)
    assert (0, "") == (done.returncode, done.stderr)


def test_installed_unit_exposure_is_at_most_2(installed: Built) -> None:
    """systemd-analyze security rates the installed unit's sandbox at 2.0 or less."""
    done = run(["systemd-analyze", "security", "--offline=true", str(UNIT)], check=False)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", done.stdout)
    assert match is not None, done.stdout[-500:]
    assert float(match.group(1)) <= 2.0


def test_validate_passes_on_the_installed_configuration_as_baton(installed: Built) -> None:
    """`baton validate` run as the baton user accepts the shipped /etc/baton as installed."""
    done = run(
        ["runuser", "-u", "baton", "--", str(BATON), "validate", "--config", "/etc/baton/baton.yaml"],
        check=False,
    )
    assert 0 == done.returncode, done.stdout + done.stderr
    assert "/etc/baton/baton.yaml valid" in done.stdout


def _configure_for_lab(lab: LabProcess, token: str) -> dict[str, Any]:
    """Edit /etc/baton for the lab as an operator would: secrets into /etc/baton/credentials
    (referenced as credential:NAME), baton.yaml pointing at the lab's inventory."""
    creds = lab.dir / "inventory" / "credentials"
    # lab credential file → the LoadCredential= id the installed unit gives it
    ids = {
        "snmp-community": "snmp-community",
        "snmp-v3-auth": "snmp-v3-auth",
        "snmp-v3-priv": "snmp-v3-priv",
        "baton_ed25519": "netconf-key",
    }
    for path in (lab.dir / "inventory").rglob("*.yaml"):
        text = path.read_text()
        for ref in set(re.findall(r"file:credentials/([\w.-]+)", text)):
            assert ref in ids, f"{path}: the unit loads no credential for file:credentials/{ref}"
            text = text.replace(f"file:credentials/{ref}", f"credential:{ids[ref]}")
        path.write_text(text)
    secrets_dir = Path("/etc/baton/credentials")
    for lab_name, cred_id in ids.items():
        target = secrets_dir / cred_id
        shutil.copyfile(creds / lab_name, target)
        target.chmod(0o600)
    (secrets_dir / "api-token").write_text(token + "\n")

    config: dict[str, Any] = yaml.safe_load(lab.config_path.read_text())
    metrics_port = free_port()
    config.update(
        inventory=str(lab.dir / "inventory"),
        playbooks="playbooks",  # the installed /etc/baton/playbooks
        journal_path=str(STATE_DIR / "journal.sqlite3"),
        metrics_listen=f"127.0.0.1:{metrics_port}",
        api={
            "unix_socket": "/run/baton/api.sock",
            "socket_group": "baton-operators",
            "tokens": ["credential:api-token"],
        },
    )
    config["traps"]["communities"] = ["credential:snmp-community"]
    Path("/etc/baton/baton.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return config


def test_installed_daemon_runs_as_its_unit_says(installed: Built) -> None:
    """As the unit would run it: READY=1 from the main process, status for root and for a member of
    baton-operators over /run/baton/api.sock, the journal in /var/lib/baton, exit 0 on SIGTERM."""
    base = Path(tempfile.mkdtemp(prefix="baton-package-", dir="/var/tmp"))
    base.chmod(0o755)  # the daemon (user baton) reads the lab's inventory below it
    lab = LabProcess(base / "lab", LAB_OFFICES, 2)
    unit: UnitRun | None = None
    try:
        lab.start()
        config = _configure_for_lab(lab, secrets.token_hex(16))
        unit = UnitRun(UNIT, base)
        unit.start()
        assert unit.popen is not None
        ready = unit.wait_ready(READY_TIMEOUT_S)
        assert unit.popen.pid == ready.pid  # NotifyAccess=main

        status = run([str(BATON), "status", "--json"], check=False)
        assert 0 == status.returncode, status.stdout + status.stderr + unit.log_tail()
        offices = json.loads(run([str(BATON), "offices", "--json"]).stdout)["offices"]
        assert sorted(LAB_OFFICES.split(",")) == sorted(o["id"] for o in offices)
        # An operator is whoever is in baton-operators: nobody else needs to be root or baton.
        as_operator = run(
            ["runuser", "-u", "nobody", "-g", "nogroup", "-G", "baton-operators", "--", str(BATON), "status"],
            check=False,
        )
        assert 0 == as_operator.returncode, as_operator.stdout + as_operator.stderr
        outsider = run(["runuser", "-u", "nobody", "-g", "nogroup", "--", str(BATON), "status"], check=False)
        assert 77 == outsider.returncode, outsider.stdout + outsider.stderr

        assert ("baton", "baton-operators", 0o660) == mode_of(Path("/run/baton/api.sock"))
        journal = Path(config["journal_path"])
        assert "baton" == mode_of(journal)[0]
        assert 0 == unit.stop(), unit.log_tail()
        assert unit.notify.having("STOPPING")
    finally:
        try:
            if unit is not None:
                unit.cleanup()
        finally:
            lab.stop()
            shutil.rmtree(base, ignore_errors=True)


def test_reinstall_keeps_local_edits(installed: Built) -> None:
    """Installing the package again leaves an edited conffile and the secrets as they are."""
    conf = Path("/etc/baton/baton.yaml")
    conf.write_text(conf.read_text() + "\n# edited by the operator\n")
    edited = conf.read_text()
    secret = Path("/etc/baton/credentials/snmp-community")
    secret.write_text("operator secret\n")
    apt("install", "--reinstall", str(installed.deb))
    assert edited == conf.read_text()
    assert "operator secret\n" == secret.read_text()
    assert ("root", "baton", 0o750) == mode_of(Path("/etc/baton"))


def test_remove_keeps_config_and_purge_keeps_the_journal_unless_asked(installed: Built) -> None:
    """remove keeps /etc/baton; purge removes it all but the journal (and its owner), and takes the
    journal too with /etc/baton/purge-journal or BATON_PURGE_JOURNAL=yes."""
    journal = STATE_DIR / "journal.sqlite3"
    if not journal.exists():  # when run alone, without the daemon test
        journal.write_text("")
        shutil.chown(journal, "baton", "baton")

    apt("remove", "baton")
    assert "deinstall ok config-files" == package_status()
    assert Path("/etc/baton/baton.yaml").exists()
    assert Path("/etc/baton/credentials").is_dir()
    assert not Path("/usr/bin/baton").exists()
    assert not Path("/opt/baton").exists()

    apt("purge", "baton")
    assert "" == package_status() or "not-installed" in package_status()
    gone = [
        "/etc/baton",
        "/opt/baton",
        "/usr/share/baton",
        "/usr/share/doc/baton",
        str(UNIT),
        str(WANTS),
        "/var/log/baton",
    ]
    assert [] == [p for p in gone if os.path.lexists(p)]
    assert not group_exists("baton-operators")
    assert [] == run(["dpkg-statoverride", "--list", "/etc/baton*"], check=False).stdout.split()
    assert journal.exists()
    assert user_exists("baton")

    apt("install", str(installed.deb))
    assert journal.exists()  # a new install finds the old journal
    Path("/etc/baton/purge-journal").touch()  # the switch as a file
    apt("purge", "baton")
    assert not STATE_DIR.exists()
    assert not user_exists("baton")

    apt("install", str(installed.deb))
    journal.write_text("")
    apt("purge", "baton", env={"BATON_PURGE_JOURNAL": "yes"})  # the switch as an environment variable
    assert not STATE_DIR.exists()
    assert [] == [p for p in gone if os.path.lexists(p)]
    assert not user_exists("baton")
    assert not group_exists("baton")
