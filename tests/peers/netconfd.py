"""yuma123 netconfd behind its own OpenSSH sshd: one pair per simulated NETCONF device.

Per device: a directory under the session dir (the user's ``netconf-subsystem`` must reach the
unix socket) with its own YUMA_HOME, a pristine copy of ``data/netconfd-startup.xml`` (netconfd
rewrites it on every commit, so a restart keeps committed config, as a real device would), the
``get-interface-ipv4`` helper Debian omits, and an sshd whose ``netconf`` subsystem maps its port
to the device's socket (``--ncxserver-sockname=PORT@PATH``; netconfd's ``--port`` must equal the
sshd port or sessions are refused). Capabilities: candidate, confirmed-commit 1.0/1.1, validate,
rollback-on-error, ietf-interfaces. The startup config has one interface, ``ge-0/0/1``.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.peers.endpoints import SshEndpoint
from tests.peers.sshd import SshdProcess, TestUser
from tests.peers.util import PeerProcess, PeerStartError, free_port, require_binary, skip_or_fail

DATA = Path(__file__).parent / "data"
STARTUP_TEMPLATE = DATA / "netconfd-startup.xml"
IETF_INTERFACES_NS = "urn:ietf:params:xml:ns:yang:ietf-interfaces"


def netconf_hello(endpoint: SshEndpoint, timeout_s: float = 3.0) -> list[str]:
    """Connect with ncclient (host key pinned, client key), return the server's capabilities."""
    from ncclient import manager  # imported lazily: only NETCONF tests pay for paramiko

    with manager.connect(
        host=endpoint.host,
        port=endpoint.port,
        username=endpoint.username,
        key_filename=str(endpoint.private_key),
        allow_agent=False,
        look_for_keys=False,
        hostkey_verify=True,
        hostkey_b64=endpoint.host_key_b64,
        timeout=timeout_s,
    ) as session:
        return list(session.server_capabilities)


def _hello_works(endpoint: SshEndpoint) -> bool:
    # ncclient logs every failed attempt at ERROR; readiness polling expects a few
    logger = logging.getLogger("ncclient")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        return bool(netconf_hello(endpoint, timeout_s=2.0))
    except Exception:
        return False
    finally:
        logger.setLevel(level)


class NetconfdProcess:
    """One NETCONF device: ``.endpoint`` (SshEndpoint, password set too), ``.start()`` (restart on
    the same port with the config it has), ``.stop()``, ``.kill()`` (SIGKILL both), ``.pid``."""

    def __init__(
        self,
        workdir: Path,
        port: int,
        user: TestUser,
        *,
        startup: Path = STARTUP_TEMPLATE,
        interface_prefix: str = "lo",
        ready_timeout_s: float = 15.0,
    ) -> None:
        self.netconfd = require_binary("netconfd", "netconfd", paths=["/usr/sbin/netconfd"])
        subsystem = require_binary("netconf-subsystem", "netconfd", paths=["/usr/sbin/netconf-subsystem"])
        if not any(Path("/usr/lib").glob("*/yuma/libietf-interfaces.so*")):
            skip_or_fail(
                "netconfd's ietf-interfaces module not installed "
                "(apt-get install netconfd-module-ietf-interfaces)"
            )
        self.workdir = workdir
        self.port = port
        self.user = user
        self.ready_timeout_s = ready_timeout_s
        self.ready_after_s: float | None = None
        workdir.mkdir(parents=True, exist_ok=True)
        workdir.chmod(0o755)
        (workdir / "data").mkdir(exist_ok=True)  # YUMA_HOME/data: the txid file lands here
        bindir = workdir / "bin"
        bindir.mkdir(exist_ok=True)
        helper = bindir / "get-interface-ipv4"
        shutil.copyfile(DATA / "get-interface-ipv4", helper)
        helper.chmod(0o755)
        self.startup_path = workdir / "startup-cfg.xml"
        shutil.copyfile(startup, self.startup_path)
        self.socket_path = workdir / "ncxserver.sock"
        env = {
            "HOME": str(workdir),
            "YUMA_HOME": str(workdir),
            "PATH": f"{bindir}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}",
            "INTERFACE_NAME_PREFIX": interface_prefix,
            "LANG": "C.UTF-8",
        }
        argv = [
            self.netconfd,
            f"--ncxserver-sockname={self.socket_path}",
            f"--port={port}",
            "--module=ietf-interfaces",
            "--target=candidate",
            f"--startup={self.startup_path}",
            f"--superuser={user.name}",
            f"--log={workdir / 'netconfd.log'}",
            "--log-level=info",
        ]
        self._netconfd = PeerProcess(f"netconfd :{port}", argv, workdir / "netconfd.out", env=env)
        self.sshd = SshdProcess(
            workdir / "sshd",
            port,
            user,
            password_auth=True,
            subsystems={"netconf": f"{subsystem} --ncxserver-sockname={port}@{self.socket_path}"},
        )

    @property
    def endpoint(self) -> SshEndpoint:
        return self.sshd.endpoint

    @property
    def pid(self) -> int | None:
        """netconfd's pid (the sshd in front of it is ``.sshd.pid``)."""
        return self._netconfd.pid if self._netconfd.is_running() else None

    def start(self) -> NetconfdProcess:
        """Start netconfd and its sshd; return once a NETCONF hello over SSH works."""
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()  # left behind by kill()
        started = time.monotonic()
        self._netconfd.spawn()
        try:
            self._netconfd.wait_ready(self.socket_path.exists, self.ready_timeout_s, "creating its socket")
            self.sshd.start()
            self._netconfd.wait_ready(
                lambda: self.sshd.pid is not None and _hello_works(self.endpoint),
                self.ready_timeout_s,
                "answering a NETCONF hello over SSH",
            )
        except PeerStartError as exc:
            sshd_tail = self.sshd.log_tail()
            self.stop()
            raise PeerStartError(f"{exc}\n--- sshd log ends:\n{sshd_tail}") from None
        self.ready_after_s = time.monotonic() - started
        return self

    def lost_port_race(self) -> bool:
        return self.sshd.lost_port_race()

    def terminate(self) -> None:
        """SIGTERM both without waiting (netconfd takes up to 1 s to notice)."""
        self.sshd.terminate()
        self._netconfd.terminate()

    def stop(self) -> None:
        self.terminate()
        self.sshd.stop()
        self._netconfd.stop()

    def kill(self) -> None:
        """SIGKILL netconfd and its sshd at once (a crashed device)."""
        self.sshd.kill()
        self._netconfd.kill()

    def log_tail(self) -> str:
        return self._netconfd.log_tail() + "\n" + (self.workdir / "netconfd.log").read_text()[-2000:]

    def __repr__(self) -> str:
        return f"NetconfdProcess(127.0.0.1:{self.port}, netconfd pid {self.pid}, sshd pid {self.sshd.pid})"


@pytest.fixture
def netconfd_factory(peer_test_user: TestUser) -> Iterator[Callable[..., NetconfdProcess]]:
    """``start()`` → a started NetconfdProcess (fresh startup config, own port); all stopped at teardown."""
    require_binary("netconfd", "netconfd", paths=["/usr/sbin/netconfd"])
    devices: list[NetconfdProcess] = []
    counter = itertools.count(1)
    base = peer_test_user.session_dir / f"nc-{os.getpid()}-{id(devices):x}"
    base.mkdir(mode=0o755)

    def start(*, startup: Path = STARTUP_TEMPLATE) -> NetconfdProcess:
        n = next(counter)
        for attempt in (1, 2):
            device = NetconfdProcess(base / f"d{n}-{attempt}", free_port(), peer_test_user, startup=startup)
            devices.append(device)
            try:
                return device.start()
            except PeerStartError:
                if attempt == 2 or not device.lost_port_race():
                    raise
        raise AssertionError("unreachable")

    try:
        yield start
    finally:
        for device in devices:
            # netconfd needs ~1 s to act on SIGTERM; nothing is left to save at teardown
            device.kill()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def netconfd_device(netconfd_factory: Callable[..., NetconfdProcess]) -> NetconfdProcess:
    """One started NETCONF device (netconfd behind its own sshd)."""
    return netconfd_factory()
