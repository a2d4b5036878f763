"""E2E fixtures: a lab process and the daemon as a process, shared per module.

`office_lab(...)` starts a lab, adapts its baton.yaml, starts the daemon, and yields an `E2E`
(`.lab`, `.daemon`). At teardown the daemon gets SIGTERM (SIGKILL after a grace), the lab is
stopped, and then every log line, /metrics scrape and journal row of the module is searched for
the lab's secrets (credential files, the API token): a leak fails the module's last test.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import Daemon, LabProcess, leak_report


@dataclass
class E2E:
    lab: LabProcess
    daemon: Daemon
    ports: dict[str, Any]


@contextlib.contextmanager
def office_lab(
    base: Path,
    *,
    offices: str,
    devices_per_office: int,
    policy: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    prepare: Any = None,
    start: bool = True,
) -> Iterator[E2E]:
    """A lab and a daemon watching it; `prepare(lab, ports)` may edit the config before the start."""
    lab = LabProcess(base / "lab", offices, devices_per_office)
    daemon: Daemon | None = None
    try:
        lab.start()
        ports = lab.configure(policy)
        if prepare is not None:
            prepare(lab, ports)
        daemon = Daemon(lab.config_path, base, env=dict(env or {}))
        if start:
            daemon.start()
        yield E2E(lab, daemon, ports)
    finally:
        try:
            if daemon is not None:
                daemon.stop()
        finally:
            lab.stop()
    leaks = leak_report(lab.dir, daemon) if daemon is not None else []
    if leaks:
        pytest.fail("secrets leaked: " + "; ".join(leaks), pytrace=False)
