"""Step executors: one rendered playbook step against one device, and the checks on its reply.

The runner (`baton.playbook.runner`) decides *when* a step runs, journals it, retries it and
rolls it back; this module only knows *how* each kind talks to a device:

    netconf.edit   <edit-config> into candidate (the runner holds the candidate lock and commits)
    netconf.rpc    any RPC, reply checked with `expect`
    netconf.get    <get-config> running/candidate or <get> (operational), checked with `expect`
    ssh.command    one command on one channel, exit status and output regexes checked
    snmp.get/set   through `SnmpAccess` (a small protocol the daemon provides)
    wait           repeat its `until` condition until the checks pass or its deadline passes

Sessions are opened lazily by `DeviceSession`, one NETCONF and one SSH connection per device at
most, with the device's pinned host key and credentials resolved at connect time (never kept).
Every call is bounded by the step's timeout. A check that does not hold raises `StepFailed`,
whose message says what was expected and what came back, never a secret.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from lxml import etree  # type: ignore[import-untyped]  # no lxml-stubs in the env

from baton.adapters.errors import AdapterError
from baton.adapters.netconf import NetconfClient
from baton.adapters.ssh import CommandResult, SshClient
from baton.core.model import Device, SecretRef
from baton.playbook.render import NETCONF_NS
from baton.playbook.schema import (
    NetconfEdit,
    NetconfGet,
    NetconfRpc,
    SnmpGet,
    SnmpSet,
    SshCommand,
    Step,
    ValueCheck,
    Wait,
    XmlCheck,
)

Resolve = Callable[[SecretRef], str]


class StepFailed(Exception):
    """A step ran but its result is not what the playbook expects (or it could not run)."""

    def __init__(self, detail: str) -> None:
        self.detail = detail
        super().__init__(detail)


class SnmpAccess(Protocol):
    """SNMP GET/SET of single numeric OIDs, as playbook steps need them (the daemon provides it)."""

    async def get(self, device: Device, oid: str, *, timeout_s: float) -> str: ...

    async def set(self, device: Device, oid: str, type_: str, value: str, *, timeout_s: float) -> None: ...


@dataclass(frozen=True, slots=True)
class Connectors:
    """How the runner reaches devices. `source_address` binds the local end (management ACLs)."""

    resolve: Resolve
    source_address: str | None = None
    connect_timeout_s: float | None = None  # None: the device's own netconf/ssh timeout_s
    snmp: SnmpAccess | None = None

    async def netconf(self, device: Device) -> NetconfClient:
        return await NetconfClient.connect(
            device,
            resolve=self.resolve,
            timeout_s=self.connect_timeout_s,
            source_address=self.source_address,
        )

    async def ssh(self, device: Device) -> SshClient:
        return await SshClient.connect(
            device,
            resolve=self.resolve,
            timeout_s=self.connect_timeout_s,
            source_address=self.source_address,
        )


class DeviceSession:
    """The connections of one device during a run, opened on first use."""

    def __init__(self, device: Device, connectors: Connectors) -> None:
        self.device = device
        self.connectors = connectors
        self._netconf: NetconfClient | None = None
        self._ssh: SshClient | None = None

    @property
    def has_netconf(self) -> bool:
        return self._netconf is not None and self._netconf.is_connected

    async def netconf(self) -> NetconfClient:
        if self._netconf is None or not self._netconf.is_connected:
            self._netconf = await self.connectors.netconf(self.device)
        return self._netconf

    async def ssh(self) -> SshClient:
        if self._ssh is None:
            self._ssh = await self.connectors.ssh(self.device)
        return self._ssh

    def snmp(self) -> SnmpAccess:
        if self.connectors.snmp is None:
            raise StepFailed("no SNMP access configured for playbook steps")
        return self.connectors.snmp

    async def close(self) -> None:
        nc, self._netconf = self._netconf, None
        ssh, self._ssh = self._ssh, None
        if nc is not None:
            await nc.close()
        if ssh is not None:
            await ssh.close()


# --- pure checks -----------------------------------------------------------------------------


def wrap_config(config_xml: str) -> str:
    """A playbook's edit body inside the <config> element <edit-config> wants."""
    text = config_xml.strip()
    if text.startswith("<config") and NETCONF_NS in text.split(">", 1)[0]:
        return text
    return f'<config xmlns="{NETCONF_NS}">{text}</config>'


def edit_roots(configs: Sequence[str]) -> tuple[str, ...]:
    """The top-level elements (Clark notation, "{ns}name") the candidate edits touch."""
    roots: list[str] = []
    for config in configs:
        element = etree.fromstring(wrap_config(config).encode())
        for child in element:
            if isinstance(child.tag, str) and child.tag not in roots:
                roots.append(child.tag)
    return tuple(roots)


def backup_filter(roots: Sequence[str]) -> str:
    """A subtree filter selecting exactly those top-level elements of running."""
    return "".join(_empty(tag) for tag in roots)


def restore_config(backup_xml: str, roots: Sequence[str]) -> str:
    """A <config> that puts every one of `roots` back as `backup_xml` (a <data> reply) had it:
    replaced where it existed, removed where the run created it. An exact undo of committed
    edits, whatever the playbook's compensating steps say."""
    data = etree.fromstring(backup_xml.encode())
    config = etree.Element(f"{{{NETCONF_NS}}}config", nsmap={"nc": NETCONF_NS})
    for tag in roots:
        saved = [el for el in data if el.tag == tag]
        if not saved:
            gone = etree.SubElement(config, tag)
            gone.set(f"{{{NETCONF_NS}}}operation", "remove")
        for el in saved:
            copy_ = etree.fromstring(etree.tostring(el))
            copy_.set(f"{{{NETCONF_NS}}}operation", "replace")
            config.append(copy_)
    return str(etree.tostring(config, encoding="unicode"))


def _empty(tag: str) -> str:
    ns, _, name = tag[1:].partition("}") if tag.startswith("{") else ("", "", tag)
    return f'<{name} xmlns="{ns}"/>' if ns else f"<{name}/>"


def _short(text: str, limit: int = 200) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def check_xml(reply_xml: str, checks: Sequence[XmlCheck]) -> str | None:
    """None when every check holds on the reply, else what failed (first failure)."""
    if not checks:
        return None
    try:
        root = etree.fromstring(reply_xml.encode())
    except etree.XMLSyntaxError as exc:
        return f"reply is not XML: {exc}"
    for check in checks:
        if check.contains is not None and check.xpath is None:
            if check.contains not in reply_xml:
                return f"reply does not contain '{check.contains}'"
            continue
        assert check.xpath is not None
        try:
            found = root.xpath(check.xpath, namespaces=dict(check.namespaces) or None)
        except etree.XPathError as exc:
            return f"xpath {check.xpath}: {exc}"
        matches = found if isinstance(found, list) else [found]
        if check.absent:
            if matches:
                return f"{check.xpath} is present, expected absent"
            continue
        if not matches:
            return f"{check.xpath} not found"
        first = matches[0]
        text = (first.text or "") if hasattr(first, "text") else str(first)
        if check.equals is not None and text.strip() != check.equals.strip():
            return f"{check.xpath} is '{_short(text)}', expected '{check.equals}'"
        if check.contains is not None and check.contains not in text:
            return f"{check.xpath} is '{_short(text)}', expected to contain '{check.contains}'"
    return None


def check_value(value: str, checks: Sequence[ValueCheck]) -> str | None:
    for check in checks:
        if check.equals is not None and value != check.equals:
            return f"value is '{_short(value)}', expected '{check.equals}'"
        if check.matches is not None and re.search(check.matches, value) is None:
            return f"value '{_short(value)}' does not match /{check.matches}/"
    return None


def check_command(result: CommandResult, step: SshCommand) -> str | None:
    if step.expect_exit is not None and result.exit_status != step.expect_exit:
        status = f"signal {result.exit_signal}" if result.exit_signal else f"exit status {result.exit_status}"
        return f"{status}, expected {step.expect_exit}"
    for pattern in step.expect:
        if re.search(pattern, result.stdout, re.MULTILINE) is None:
            return f"output does not match /{pattern}/"
    return None


# --- executors -------------------------------------------------------------------------------


async def run_step(step: Step, session: DeviceSession, timeout_s: float) -> str:
    """Run one rendered step; returns a short detail on success, raises StepFailed/AdapterError."""
    execute = EXECUTORS.get(step.kind)
    if execute is None:
        raise StepFailed(f"no executor for step kind {step.kind}")
    return await execute(step, session, timeout_s)


async def _edit(step: NetconfEdit, session: DeviceSession, timeout_s: float) -> str:
    nc = await session.netconf()
    await nc.edit_config("candidate", wrap_config(step.config), step.operation, rpc_timeout_s=timeout_s)
    return "edited candidate"


async def _rpc(step: NetconfRpc, session: DeviceSession, timeout_s: float) -> str:
    nc = await session.netconf()
    reply = await nc.dispatch(step.rpc, rpc_timeout_s=timeout_s)
    return _checked(check_xml(reply, step.expect), "rpc ok")


async def _get(step: NetconfGet, session: DeviceSession, timeout_s: float) -> str:
    nc = await session.netconf()
    if step.source == "operational":
        reply = await nc.get(step.filter, rpc_timeout_s=timeout_s)
    else:
        reply = await nc.get_config(step.source, step.filter, rpc_timeout_s=timeout_s)
    return _checked(check_xml(reply, step.expect), f"{len(step.expect)} check(s) passed")


async def _command(step: SshCommand, session: DeviceSession, timeout_s: float) -> str:
    client = await session.ssh()
    result = await client.run(step.command, timeout_s=timeout_s)
    return _checked(check_command(result, step), f"exit status {result.exit_status}")


async def _snmp_get(step: SnmpGet, session: DeviceSession, timeout_s: float) -> str:
    value = await session.snmp().get(session.device, step.oid, timeout_s=timeout_s)
    return _checked(check_value(value, step.expect), f"value '{_short(value, 60)}'")


async def _snmp_set(step: SnmpSet, session: DeviceSession, timeout_s: float) -> str:
    await session.snmp().set(session.device, step.oid, step.type, str(step.value), timeout_s=timeout_s)
    return f"set {step.oid}"


def _checked(problem: str | None, ok_detail: str) -> str:
    if problem is not None:
        raise StepFailed(problem)
    return ok_detail


async def _wait(
    step: Wait,
    session: DeviceSession,
    budget_s: float,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> str:
    """Poll the condition until it holds; the deadline is the step's, capped by the budget."""
    deadline = time.monotonic() + min(step.deadline_s, budget_s)
    tries = 0
    last = "never checked"
    while True:
        tries += 1
        left = deadline - time.monotonic()
        try:
            await run_step(step.until, session, max(0.1, min(step.until.timeout_s, left)))
            return f"condition held after {tries} check(s)"
        except (StepFailed, AdapterError) as exc:
            last = exc.detail if isinstance(exc, StepFailed) else str(exc)
        left = deadline - time.monotonic()
        if left <= 0:
            raise StepFailed(f"condition not met within {step.deadline_s:g} s ({tries} checks): {last}")
        await sleep(min(step.interval_s, left))


# How each kind runs, by its `kind` (what each kind *is* is declared on its class in `schema`).
EXECUTORS: dict[str, Callable[[Any, DeviceSession, float], Awaitable[str]]] = {
    "netconf.edit": _edit,
    "netconf.rpc": _rpc,
    "netconf.get": _get,
    "ssh.command": _command,
    "snmp.get": _snmp_get,
    "snmp.set": _snmp_set,
    "wait": _wait,
}
