"""Dry-run of a planned run: every step rendered, and per device the config diff it would make.

For each device with netconf.edit steps (unless `connectors` is None): connect, lock the
candidate, discard it, apply the edits to the candidate, read candidate and running, discard,
unlock. Running is never touched: nothing is committed, and the candidate is discarded even when
a step fails. The diff is a unified diff of running vs candidate, both pretty-printed by lxml
from the parsed reply (blank text dropped), so it shows content changes, not whitespace.
Non-NETCONF steps are shown rendered ("would run: ssh command ...") and not run.

Secrets never show: before diffing, the text of every leaf that holds one is replaced by `***`
in both configurations — the well-known ones (communities, keys, passwords, secrets; see
`is_secret_leaf`) and those the inventory names in a device's `vars.secret_leaves` (inherited
from defaults and groups like any var). A secret the candidate changes shows as `*** (changed)`.
Every credential Baton resolved is masked in what is left as well (`baton.logs.mask_text`).
"""

from __future__ import annotations

import asyncio
import difflib
from dataclasses import dataclass
from typing import Any

from lxml import etree  # type: ignore[import-untyped]  # no lxml-stubs in the env

from baton.adapters.errors import AdapterError, NetconfError
from baton.logs import MASK, mask_text
from baton.playbook.plan import DevicePlan, RunPlan
from baton.playbook.steps import Connectors, wrap_config


@dataclass(frozen=True, slots=True)
class DeviceDryRun:
    device: str
    steps: tuple[tuple[str, str], ...]  # (step name, what it would do)
    skipped: tuple[str, ...]
    diff: str | None  # None: not computed (no edits, or --no-device)
    error: str | None = None

    @property
    def changes(self) -> bool:
        return bool(self.diff)


@dataclass(frozen=True, slots=True)
class DryRun:
    plan: RunPlan
    devices: tuple[DeviceDryRun, ...]
    notes: tuple[str, ...] = ()
    window_s: float | None = None  # the window a run would use (`Playbook.window_for` the policy's)

    @property
    def unreachable(self) -> tuple[str, ...]:
        return tuple(d.device for d in self.devices if d.error is not None)


def normalize_xml(text: str) -> str:
    """Pretty-printed XML with blank text removed, so diffs show content, not layout."""
    parser = etree.XMLParser(remove_blank_text=True)
    try:
        root = etree.fromstring(text.encode(), parser)
    except etree.XMLSyntaxError:
        return text
    return str(etree.tostring(root, pretty_print=True, encoding="unicode"))


# Leaves that hold a secret whatever the vendor: by their name, compared lower-case with "_" as "-".
SECRET_LEAVES = frozenset(
    {
        "community",
        "community-name",
        "password",
        "secret",
        "key",
        "auth-key",
        "priv-key",
        "private-key",
        "passphrase",
        "shared-secret",
        "pre-shared-key",
        "psk",
        "authentication-key",
        "md5-key",
        "hmac-key",
        "encrypted-password",
        "simple-password",
        "auth-password",
        "priv-password",
        "tacacs-key",
        "radius-key",
        "snmp-community",
    }
)
_SECRET_SUFFIXES = ("password", "secret", "community", "-key", "passphrase", "-psk")


def is_secret_leaf(name: str, extra: frozenset[str] = frozenset()) -> bool:
    """Does an element named `name` (any namespace) hold a secret?"""
    local = name.rsplit("}", 1)[-1].lower().replace("_", "-")
    return local in SECRET_LEAVES or local in extra or local.endswith(_SECRET_SUFFIXES)


def mask_secret_leaves(text: str, extra: frozenset[str] = frozenset(), known: set[str] | None = None) -> str:
    """`text` (XML) with every secret leaf's value replaced: `***`, or `*** (changed)` when it is
    not one of `known` (the values the running configuration holds). Not XML: returned as is."""
    parser = etree.XMLParser(remove_blank_text=True, resolve_entities=False, no_network=True)
    try:
        root = etree.fromstring(text.encode(), parser)
    except etree.XMLSyntaxError:
        return text
    for element in root.iter():
        if not isinstance(element.tag, str) or not is_secret_leaf(element.tag, extra):
            continue
        value = (element.text or "").strip()
        if value:
            element.text = MASK if known is None or value in known else f"{MASK} (changed)"
    return str(etree.tostring(root, encoding="unicode"))


def _secret_values(text: str, extra: frozenset[str]) -> set[str]:
    parser = etree.XMLParser(remove_blank_text=True, resolve_entities=False, no_network=True)
    try:
        root = etree.fromstring(text.encode(), parser)
    except etree.XMLSyntaxError:
        return set()
    return {
        (e.text or "").strip()
        for e in root.iter()
        if isinstance(e.tag, str) and is_secret_leaf(e.tag, extra) and (e.text or "").strip()
    }


def config_diff(
    running: str, candidate: str, device: str, secret_leaves: frozenset[str] = frozenset()
) -> str:
    """Unified diff of running vs candidate, every secret masked (see the module docstring)."""
    extra = frozenset(n.lower().replace("_", "-") for n in secret_leaves)
    known = _secret_values(running, extra)
    lines = difflib.unified_diff(
        normalize_xml(mask_secret_leaves(running, extra)).splitlines(keepends=True),
        normalize_xml(mask_secret_leaves(candidate, extra, known)).splitlines(keepends=True),
        f"{device} running",
        f"{device} candidate",
    )
    return mask_text("".join(lines))


def secret_leaves_of(dp: DevicePlan) -> frozenset[str]:
    """The leaves the inventory marks secret for this device (`vars.secret_leaves`)."""
    named = dp.device.vars.get("secret_leaves") or ()
    if isinstance(named, str):
        named = (named,)
    return frozenset(str(n) for n in named) if isinstance(named, list | tuple) else frozenset()


async def device_diff(dp: DevicePlan, connectors: Connectors) -> tuple[str | None, str | None]:
    """(diff, error) for one device; the candidate is discarded whatever happens."""
    edits = [(edit, ps.step.timeout_s) for ps in dp.steps if (edit := ps.step.candidate_edit()) is not None]
    if not edits:
        return None, None
    device = dp.device
    try:
        nc = await connectors.netconf(device)
    except AdapterError as exc:
        return None, mask_text(str(exc))
    try:
        if not nc.supports_candidate:
            return None, f"{device.id} has no :candidate datastore"
        await nc.lock("candidate")
        try:
            await nc.discard_changes()
            for (config, operation), timeout_s in edits:
                await nc.edit_config("candidate", wrap_config(config), operation, rpc_timeout_s=timeout_s)
            candidate = await nc.get_config("candidate")
            running = await nc.get_config("running")
        finally:
            try:
                await nc.discard_changes()
            finally:
                await nc.unlock("candidate")
        return config_diff(running, candidate, device.id, secret_leaves_of(dp)), None
    except NetconfError as exc:
        return None, mask_text(str(exc))
    finally:
        await nc.close()


async def dry_run(plan: RunPlan, connectors: Connectors | None, concurrency: int | None = None) -> DryRun:
    """Render every step of `plan` and, with `connectors`, diff every device's config."""
    sem = asyncio.Semaphore(concurrency or plan.playbook.concurrency)

    async def one(dp: DevicePlan) -> DeviceDryRun:
        steps = tuple((ps.name, mask_text(ps.step.describe())) for ps in dp.steps)
        if connectors is None:
            return DeviceDryRun(dp.device.id, steps, dp.skipped, None)
        async with sem:
            diff, error = await device_diff(dp, connectors)
        return DeviceDryRun(dp.device.id, steps, dp.skipped, diff, error)

    devices = await asyncio.gather(*(one(dp) for dp in plan.devices))
    return DryRun(plan, tuple(devices))


def as_dict(result: DryRun) -> dict[str, Any]:
    plan = result.plan
    return {
        "playbook": plan.playbook.name,
        "kind": plan.playbook.kind,
        "office": plan.office,
        "alternate": plan.alternate,
        "valid": plan.ok,
        "problems": [str(p) for p in plan.problems],
        "notes": list(result.notes),
        "worst_case_s": plan.worst_case_s,
        "confirm_window_s": _window(result),
        "devices": [
            {
                "device": d.device,
                "steps": [{"name": name, "action": action} for name, action in d.steps],
                "skipped": list(d.skipped),
                "diff": d.diff,
                "changes": d.changes,
                "error": d.error,
            }
            for d in result.devices
        ],
    }


def _window(result: DryRun) -> float | None:
    return result.window_s if result.window_s is not None else result.plan.playbook.confirm_window_s


def _secs(window: float | None) -> str:
    return "the policy's" if window is None else f"{window:g} s"


def as_text(result: DryRun) -> str:
    plan = result.plan
    pb = plan.playbook
    out = [
        f"playbook {pb.name} ({pb.kind}): office {plan.office}, alternate {plan.alternate}, "
        f"{len(plan.devices)} device(s), concurrency {pb.concurrency}, on_failure {pb.on_failure}, "
        f"confirm window {_secs(_window(result))} (worst case {plan.worst_case_s:g} s)"
    ]
    out.extend(f"note: {n}" for n in result.notes)
    out.extend(f"problem: {p}" for p in plan.problems)
    for d in result.devices:
        out.append("")
        out.append(f"== {d.device}")
        for name, action in d.steps:
            out.append(f"  {name}: {action}")
        for name in d.skipped:
            out.append(f"  {name}: skipped ('when' is false)")
        if d.error is not None:
            out.append(f"  ERROR: {d.error}")
        elif d.diff is None:
            pass
        elif d.diff:
            out.append("  config diff (running -> candidate):")
            out.extend("    " + line for line in d.diff.rstrip("\n").split("\n"))
        else:
            out.append("  config diff: no change")
    return "\n".join(out)
