"""Dry-run of a planned run: every step rendered, and per device the config diff it would make.

For each device with netconf.edit steps (unless `connectors` is None): connect, lock the
candidate, discard it, apply the edits to the candidate, read candidate and running, discard,
unlock. Running is never touched: nothing is committed, and the candidate is discarded even when
a step fails. The diff is a unified diff of running vs candidate, both pretty-printed by lxml
from the parsed reply (blank text dropped), so it shows content changes, not whitespace.
Non-NETCONF steps are shown rendered ("would run: ssh command ...") and not run.
"""

from __future__ import annotations

import asyncio
import difflib
from dataclasses import dataclass
from typing import Any

from lxml import etree  # type: ignore[import-untyped]  # no lxml-stubs in the env

from baton.adapters.errors import AdapterError, NetconfError
from baton.playbook.plan import DevicePlan, RunPlan
from baton.playbook.schema import (
    NetconfEdit,
    Step,
)
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

    @property
    def unreachable(self) -> tuple[str, ...]:
        return tuple(d.device for d in self.devices if d.error is not None)


def describe_step(step: Step) -> str:
    """What a rendered step would do, in one line (XML bodies are summarised by the diff)."""
    return step.describe()


def normalize_xml(text: str) -> str:
    """Pretty-printed XML with blank text removed, so diffs show content, not layout."""
    parser = etree.XMLParser(remove_blank_text=True)
    try:
        root = etree.fromstring(text.encode(), parser)
    except etree.XMLSyntaxError:
        return text
    return str(etree.tostring(root, pretty_print=True, encoding="unicode"))


def config_diff(running: str, candidate: str, device: str) -> str:
    lines = difflib.unified_diff(
        normalize_xml(running).splitlines(keepends=True),
        normalize_xml(candidate).splitlines(keepends=True),
        f"{device} running",
        f"{device} candidate",
    )
    return "".join(lines)


async def device_diff(dp: DevicePlan, connectors: Connectors) -> tuple[str | None, str | None]:
    """(diff, error) for one device; the candidate is discarded whatever happens."""
    edits = [ps for ps in dp.steps if isinstance(ps.step, NetconfEdit)]
    if not edits:
        return None, None
    device = dp.device
    try:
        nc = await connectors.netconf(device)
    except AdapterError as exc:
        return None, str(exc)
    try:
        if not nc.supports_candidate:
            return None, f"{device.id} has no :candidate datastore"
        await nc.lock("candidate")
        try:
            await nc.discard_changes()
            for ps in edits:
                step = ps.step
                assert isinstance(step, NetconfEdit)
                await nc.edit_config(
                    "candidate", wrap_config(step.config), step.operation, rpc_timeout_s=step.timeout_s
                )
            candidate = await nc.get_config("candidate")
            running = await nc.get_config("running")
        finally:
            try:
                await nc.discard_changes()
            finally:
                await nc.unlock("candidate")
        return config_diff(running, candidate, device.id), None
    except NetconfError as exc:
        return None, str(exc)
    finally:
        await nc.close()


async def dry_run(plan: RunPlan, connectors: Connectors | None, concurrency: int | None = None) -> DryRun:
    """Render every step of `plan` and, with `connectors`, diff every device's config."""
    sem = asyncio.Semaphore(concurrency or plan.playbook.concurrency)

    async def one(dp: DevicePlan) -> DeviceDryRun:
        steps = tuple((ps.name, describe_step(ps.step)) for ps in dp.steps)
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
        "confirm_window_s": plan.playbook.confirm_window_s,
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


def as_text(result: DryRun) -> str:
    plan = result.plan
    pb = plan.playbook
    out = [
        f"playbook {pb.name} ({pb.kind}): office {plan.office}, alternate {plan.alternate}, "
        f"{len(plan.devices)} device(s), concurrency {pb.concurrency}, on_failure {pb.on_failure}, "
        f"confirm window {pb.confirm_window_s:g} s (worst case {plan.worst_case_s:g} s)"
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
