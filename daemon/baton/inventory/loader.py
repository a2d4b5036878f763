"""Read `inventory/` into the frozen `baton.core.model.Inventory`, reporting every problem at once.

Theory of operation: each file is read with line numbers (`baton.yamlsource`), each list item and
group is validated on its own (so one broken device does not hide the others' problems), then
device settings are merged defaults → groups (in the device's order) → device, with nested maps
(snmp, netconf, ssh, vars) merged key by key and everything else replaced by the more specific
layer. Cross-checks (ids, alternates, parents, addresses, credentials) run on whatever validated.
Only an inventory without errors is built; warnings ride along for the caller to show.
"""

from __future__ import annotations

import copy
import ipaddress
from collections import defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from baton.core.model import (
    Device,
    Inventory,
    NetconfSettings,
    Office,
    SecretRef,
    SnmpSettings,
    SshSettings,
    frozen_map,
)
from baton.inventory.numbers import non_finite_problems
from baton.inventory.schema import (
    DEFAULTS_KEY,
    DEVICES_KEY,
    GROUPS_KEY,
    ID_PATTERN,
    OFFICES_KEY,
    DeviceEntry,
    DeviceSettings,
    NetconfFile,
    OfficeEntry,
    SshFile,
)
from baton.secrets import SecretError, check, parse_ref
from baton.yamlsource import (
    ConfigError,
    Document,
    KeyPath,
    Problem,
    did_you_mean,
    errors_in,
    pydantic_problems,
    read_document,
)

REF_FIELDS: Mapping[str, tuple[str, ...]] = {
    "snmp": ("community", "auth_key", "priv_key"),
    "netconf": ("password", "private_key"),
    "ssh": ("password", "private_key"),
}
SETTINGS_FIELDS = frozenset(DeviceSettings.model_fields)


@dataclass(frozen=True, slots=True)
class InventoryReading:
    """The result of reading an inventory: the model when there were no errors, and all problems."""

    inventory: Inventory | None
    problems: list[Problem]


@dataclass(frozen=True, slots=True)
class Place:
    """Where something was written: a document and a key path in it."""

    doc: Document
    path: KeyPath

    def line(self, sub: KeyPath = ()) -> str:
        return f"{self.doc.file}:{self.doc.line_of((*self.path, *sub))}"

    def problem(self, sub: KeyPath, message: str, hint: str = "", *, warning: bool = False) -> Problem:
        return self.doc.problem((*self.path, *sub), message, hint, "warning" if warning else "error")


def load_inventory(
    directory: Path | str, *, environ: Mapping[str, str] | None = None, check_credentials: bool = True
) -> Inventory:
    """The inventory in `directory`; raises ConfigError (with every problem) if it has errors."""
    reading = read_inventory(Path(directory), environ=environ, check_credentials=check_credentials)
    if reading.inventory is None:
        raise ConfigError(reading.problems)
    return reading.inventory


def read_inventory(
    directory: Path, *, environ: Mapping[str, str] | None = None, check_credentials: bool = True
) -> InventoryReading:
    return _Reader(directory, environ, check_credentials).read()


def merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge two settings maps: nested maps key by key, anything else replaced by `over`."""
    result = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(result.get(key), Mapping):
            result[key] = merge(result[key], value)
        else:
            result[key] = value
    return result


class _Reader:
    def __init__(self, directory: Path, environ: Mapping[str, str] | None, check_credentials: bool) -> None:
        self.directory = directory
        self.environ = environ
        self.check_credentials = check_credentials
        self.problems: list[Problem] = []
        self.offices: dict[str, tuple[Place, OfficeEntry]] = {}
        self.office_places: dict[str, list[Place]] = defaultdict(
            list
        )  # every item with this id, valid or not
        self.defaults: tuple[Place, DeviceSettings] | None = None
        self.groups: dict[str, tuple[Place, DeviceSettings]] = {}
        self.group_names: set[str] = set()  # every group written, valid or not
        self.devices: dict[str, tuple[Place, DeviceEntry, DeviceSettings]] = {}
        self.device_places: dict[str, list[Place]] = defaultdict(list)
        self.device_offices: set[str] = set()  # offices named by any device item, valid or not

    # --- reading ---------------------------------------------------------------------------

    def read(self) -> InventoryReading:
        if not self.directory.is_dir():
            what = "does not exist" if not self.directory.exists() else "is not a directory"
            hint = "pass --inventory DIR, or set `inventory:` in baton.yaml"
            self.problems.append(Problem(str(self.directory), None, "", f"inventory directory {what}", hint))
            return InventoryReading(None, self.problems)
        self._read_offices()
        self._read_defaults()
        self._read_groups()
        self._read_devices()
        self._check_offices()
        self._check_devices()
        if self.check_credentials:
            self._check_credentials()
        inventory = None if errors_in(self.problems) else self._build()
        self.problems.sort(key=lambda p: (p.file, p.line or 0))  # stable: same line keeps check order
        return InventoryReading(inventory, self.problems)

    def _document(self, name: str, *, required: bool) -> Document | None:
        path = self.directory / name
        if not required and not path.exists():
            return None
        doc, problems = read_document(path)
        self.problems.extend(problems)
        if doc is not None:
            self.problems.extend(non_finite_problems(doc, "vars"))
        return doc

    def _section(self, doc: Document, key: str, kind: type[list[Any]] | type[dict[str, Any]]) -> Any:
        """The value under the file's single top-level `key`, if it has the right shape."""
        data = doc.data
        if not isinstance(data, dict):
            self.problems.append(
                Problem(
                    doc.file,
                    doc.line_of(()),
                    "",
                    f"expected a mapping with the key '{key}'",
                    f"start with '{key}:'",
                )
            )
            return None
        for other in data:
            if other != key:
                self.problems.append(
                    Problem(
                        doc.file,
                        doc.line_of((other,)),
                        "",
                        f"unknown key '{other}'",
                        did_you_mean(str(other), [key]),
                    )
                )
        if key not in data:
            hint = f"put the {key} under '{key}:'"
            self.problems.append(
                Problem(doc.file, doc.line_of(()), "", f"missing required key '{key}'", hint)
            )
            return None
        value = data[key]
        if value is None:
            return kind()
        if not isinstance(value, kind):
            shape = "a list ('- ' items)" if kind is list else "a mapping (name: settings)"
            self.problems.append(doc.problem((key,), f"expected {shape}"))
            return None
        return value

    def _validate(self, model: type[BaseModel], doc: Document, path: KeyPath, raw: Any) -> Any:
        try:
            return model.model_validate(raw)
        except ValidationError as exc:
            self.problems.extend(pydantic_problems(doc, exc, model, path))
            return None

    def _salvage(self, model: type[BaseModel], doc: Document, path: KeyPath, raw: Any) -> tuple[Any, bool]:
        """Validate `raw`; if it fails, report that, then drop the bad values and try again.

        What is left (ids, office, parent, alternates...) still takes part in the cross-checks,
        so one typo does not hide the item's other problems. Returns (model or None, salvaged).
        """
        result = self._validate(model, doc, path, raw)
        if result is not None or not isinstance(raw, dict):
            return result, False
        data = copy.deepcopy(raw)
        for _ in range(5):
            try:
                return model.model_validate(data), True
            except ValidationError as exc:
                if not all(_drop(data, tuple(e["loc"])) for e in exc.errors(include_url=False)):
                    return None, True
        return None, True

    def _read_offices(self) -> None:
        doc = self._document("offices.yaml", required=True)
        items = self._section(doc, OFFICES_KEY, list) if doc else None
        if doc is None or items is None:
            return
        if not items:
            self.problems.append(doc.problem((OFFICES_KEY,), "no offices", "list at least one office"))
        for index, raw in enumerate(items):
            place = Place(doc, (OFFICES_KEY, index))
            if isinstance(raw, dict) and isinstance(raw.get("id"), str):
                self.office_places[raw["id"]].append(place)
            office, _ = self._salvage(OfficeEntry, doc, place.path, raw)
            if office is not None and office.id not in self.offices:
                self.offices[office.id] = (place, office)

    def _read_defaults(self) -> None:
        doc = self._document("defaults.yaml", required=False)
        section = self._section(doc, DEFAULTS_KEY, dict) if doc else None
        if doc is None or section is None:
            return
        settings = self._validate(DeviceSettings, doc, (DEFAULTS_KEY,), section)
        if settings is not None:
            self.defaults = (Place(doc, (DEFAULTS_KEY,)), settings)

    def _read_groups(self) -> None:
        doc = self._document("groups.yaml", required=False)
        section = self._section(doc, GROUPS_KEY, dict) if doc else None
        if doc is None or section is None:
            return
        for name, raw in section.items():
            place = Place(doc, (GROUPS_KEY, name))
            self.group_names.add(str(name))
            if not isinstance(name, str) or not ID_PATTERN.match(name):
                hint = "use lowercase letters, digits, '-', '_' and '.'"
                self.problems.append(place.problem((), "not a valid group name", hint))
                continue
            settings = self._validate(DeviceSettings, doc, place.path, {} if raw is None else raw)
            if settings is not None:
                self.groups[name] = (place, settings)

    def _read_devices(self) -> None:
        folder = self.directory / "devices"
        files = sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]) if folder.is_dir() else []
        if not files:
            hint = "put devices in devices/<office-or-region>.yaml under 'devices:'"
            self.problems.append(Problem(str(folder), None, "", "no device files", hint))
        for path in files:
            doc, problems = read_document(path)
            self.problems.extend(problems)
            if doc is not None:
                self.problems.extend(non_finite_problems(doc, "vars"))
            items = self._section(doc, DEVICES_KEY, list) if doc else None
            if doc is None or items is None:
                continue
            for index, raw in enumerate(items):
                self._read_device(Place(doc, (DEVICES_KEY, index)), raw)

    def _read_device(self, place: Place, raw: Any) -> None:
        if isinstance(raw, dict):
            if isinstance(raw.get("id"), str):
                self.device_places[raw["id"]].append(place)
            if isinstance(raw.get("office"), str):
                self.device_offices.add(raw["office"])
        entry, salvaged = self._salvage(DeviceEntry, place.doc, place.path, raw)
        if entry is None or entry.id in self.devices:
            return
        self.devices[entry.id] = (place, entry, self._merged(place, entry, check=not salvaged))

    def _merged(self, place: Place, entry: DeviceEntry, *, check: bool) -> DeviceSettings:
        layers: list[DeviceSettings] = [self.defaults[1]] if self.defaults else []
        complete = True
        for index, name in enumerate(entry.groups):
            if name in self.groups:
                layers.append(self.groups[name][1])
                continue
            complete = False
            if name not in self.group_names:  # else the group itself is broken, and reported
                hint = did_you_mean(name, self.group_names) or "define it in groups.yaml"
                self.problems.append(place.problem(("groups", index), f"unknown group '{name}'", hint))
        layers.append(entry)
        data: dict[str, Any] = {}
        for layer in layers:
            data = merge(data, layer.model_dump(exclude_unset=True, include=set(SETTINGS_FIELDS)))
        settings = DeviceSettings.model_validate(data)
        # a salvaged entry lacks the values it got wrong, a missing group its settings:
        # checks on what is left would mislead
        if check and complete:
            self._check_settings(place, entry, settings)
        return settings

    # --- checks ----------------------------------------------------------------------------

    def _check_settings(self, place: Place, entry: DeviceEntry, merged: DeviceSettings) -> None:
        """Checks that need the merged settings; the fix may be on the device, a group or defaults."""
        where = f"on the device, in one of its groups ({', '.join(entry.groups)}) or in defaults"
        where = where if entry.groups else "on the device or in defaults"
        if merged.role is None:
            self.problems.append(place.problem((), "missing required key 'role'", f"set role {where}"))
        snmp = merged.snmp
        if snmp is not None:
            if (snmp.version or "2c") == "3":
                needed = ("user", "auth_protocol", "auth_key", "priv_protocol", "priv_key")
                missing = [name for name in needed if getattr(snmp, name) is None]
                if missing:
                    self.problems.append(
                        place.problem(
                            ("snmp",),
                            f"SNMP v3 needs user, auth and priv settings; missing: {', '.join(missing)}",
                            f"set them {where} (Baton polls v3 with authPriv only)",
                        )
                    )
            elif snmp.community is None:
                self.problems.append(
                    place.problem(("snmp",), "SNMP v2c needs a community", f"set snmp.community {where}")
                )
        for name in ("netconf", "ssh"):
            settings: NetconfFile | SshFile | None = getattr(merged, name)
            if settings is None or not settings.enabled:
                continue
            if entry.host_key is None:
                self.problems.append(
                    place.problem(
                        (),
                        f"{name.upper()} is enabled but no host key is pinned",
                        "add host_key: the line from `ssh-keyscan -t ed25519 ADDRESS`, checked out of band",
                    )
                )
            if settings.username is None:
                self.problems.append(
                    place.problem((name,), f"{name.upper()} needs a username", f"set it {where}")
                )
            if settings.password is None and settings.private_key is None:
                self.problems.append(
                    place.problem(
                        (name,), f"{name.upper()} needs a password or a private_key", f"set one {where}"
                    )
                )
        netconf_on = merged.netconf is not None and merged.netconf.enabled
        ssh_on = merged.ssh is not None and merged.ssh.enabled
        if snmp is None and not netconf_on and not ssh_on:
            self.problems.append(
                place.problem(
                    (),
                    "no SNMP, NETCONF or SSH: Baton cannot probe this device",
                    "give it snmp settings or enable netconf/ssh",
                    warning=True,
                )
            )

    def _check_offices(self) -> None:
        for office_id, places in self.office_places.items():
            self._report_duplicates("office id", office_id, places)
        known = set(self.office_places)
        for office_id, (place, office) in self.offices.items():
            seen: dict[str, int] = {}
            for index, alternate in enumerate(office.alternates):
                sub = ("alternates", index)
                if alternate == office_id:
                    self.problems.append(
                        place.problem(
                            sub, "an office cannot be its own alternate", "remove it from the chain"
                        )
                    )
                elif alternate in seen:
                    message = (
                        f"alternate '{alternate}' is listed twice (first at alternates[{seen[alternate]}])"
                    )
                    self.problems.append(place.problem(sub, message, "remove the repeat"))
                elif alternate not in known:
                    hint = did_you_mean(alternate, known - {office_id}) or "define it in offices.yaml"
                    self.problems.append(place.problem(sub, f"unknown alternate office '{alternate}'", hint))
                seen.setdefault(alternate, index)
            if not office.alternates:
                self.problems.append(
                    place.problem(
                        (),
                        "no alternates: if this office closes, no other office can take over",
                        "add alternates: [nearest office, next nearest, ...]",
                        warning=True,
                    )
                )
            if office_id not in self.device_offices:
                self.problems.append(
                    place.problem(
                        (),
                        "no devices: Baton cannot tell whether this office is up",
                        f"add devices with 'office: {office_id}' under devices/",
                        warning=True,
                    )
                )

    def _check_devices(self) -> None:
        for device_id, places in self.device_places.items():
            self._report_duplicates("device id", device_id, places)
        addresses: dict[str, list[Place]] = defaultdict(list)
        for place, entry, _ in self.devices.values():
            addresses[_normal_address(entry.address)].append(place)
            if entry.office not in self.office_places:
                hint = did_you_mean(entry.office, self.office_places) or "define it in offices.yaml"
                self.problems.append(place.problem(("office",), f"unknown office '{entry.office}'", hint))
            if entry.parent is not None and entry.parent not in self.device_places:
                hint = did_you_mean(entry.parent, self.device_places) or "name a device id, or remove parent"
                self.problems.append(
                    place.problem(("parent",), f"unknown parent device '{entry.parent}'", hint)
                )
        for address, places in addresses.items():
            for place in places:
                others = ", ".join(p.line(("address",)) for p in places if p is not place)
                if others:
                    message = f"management address {address} is also used at {others}"
                    self.problems.append(
                        place.problem(("address",), message, "give each device its own address")
                    )
        self._check_parent_cycles()

    def _check_parent_cycles(self) -> None:
        parents = {d: e.parent for d, (_, e, _) in self.devices.items() if e.parent is not None}
        done: set[str] = set()
        for start in self.devices:
            chain: list[str] = []
            node: str | None = start
            while node is not None and node not in done and node not in chain:
                chain.append(node)
                node = parents.get(node)
            if node is not None and node in chain:
                cycle = chain[chain.index(node) :]
                place = self.devices[cycle[0]][0]
                text = " → ".join([*cycle, cycle[0]])
                hint = "a parent is the device this one is reached through; one of these is wrong"
                self.problems.append(place.problem(("parent",), f"parent cycle: {text}", hint))
            done.update(chain)

    def _report_duplicates(self, what: str, ident: str, places: list[Place]) -> None:
        if len(places) < 2:
            return
        for place in places:
            others = ", ".join(p.line(("id",)) for p in places if p is not place)
            self.problems.append(
                place.problem(("id",), f"duplicate {what} '{ident}' (also at {others})", "ids must be unique")
            )

    def _check_credentials(self) -> None:
        """Every reference written resolves; each distinct reference is reported once, where first seen."""
        written: dict[str, list[Place]] = defaultdict(list)
        for place, settings in self._layers():
            for section, names in REF_FIELDS.items():
                model = getattr(settings, section)
                for name in names:
                    text = getattr(model, name, None) if model is not None else None
                    if text is not None:
                        written[text].append(Place(place.doc, (*place.path, section, name)))
        for text, places in written.items():
            try:
                check(parse_ref(text), base_dir=self.directory, environ=self.environ)
            except SecretError as exc:
                also = f" (also used at {len(places) - 1} other places)" if len(places) > 1 else ""
                self.problems.append(
                    places[0].problem((), f"cannot resolve {exc}{also}", reference_hint(text))
                )

    def _layers(self) -> Iterator[tuple[Place, DeviceSettings]]:
        if self.defaults:
            yield self.defaults
        yield from self.groups.values()
        for place, entry, _ in self.devices.values():
            yield place, entry

    # --- building --------------------------------------------------------------------------

    def _build(self) -> Inventory:
        offices = {
            office_id: Office(
                id=office.id,
                name=office.name,
                region=office.region,
                alternates=tuple(office.alternates),
                vars=frozen_map(office.vars.model_dump(exclude_unset=True)),
            )
            for office_id, (_, office) in self.offices.items()
        }
        devices = {
            device_id: to_device(entry, merged) for device_id, (_, entry, merged) in self.devices.items()
        }
        return Inventory(offices=frozen_map(offices), devices=frozen_map(devices))


def to_device(entry: DeviceEntry, merged: DeviceSettings) -> Device:
    """The runtime device from a validated entry and its merged settings (unset → model defaults)."""
    snmp = None
    if merged.snmp is not None:
        s = merged.snmp
        snmp = SnmpSettings(
            **_given(s, ("port", "timeout_s", "retries", "user", "auth_protocol", "priv_protocol")),
            version=s.version or "2c",
            community=_ref(s.community),
            auth_key=_ref(s.auth_key),
            priv_key=_ref(s.priv_key),
            oids=frozen_map(s.oids),
            critical_interfaces=tuple(s.critical_interfaces or ()),
        )
    netconf = NetconfSettings()
    if merged.netconf is not None:
        n = merged.netconf
        netconf = NetconfSettings(
            **_given(n, ("enabled", "port", "username", "timeout_s", "probe_filter", "max_reply_bytes")),
            password=_ref(n.password),
            private_key=_ref(n.private_key),
        )
    ssh = SshSettings()
    if merged.ssh is not None:
        h = merged.ssh
        ssh = SshSettings(
            **_given(h, ("enabled", "port", "username", "timeout_s")),
            password=_ref(h.password),
            private_key=_ref(h.private_key),
        )
    return Device(
        id=entry.id,
        office=entry.office,
        role=merged.role or "",
        address=entry.address,
        critical=bool(merged.critical),
        parent=entry.parent,
        tags=tuple(merged.tags or ()),
        host_key=entry.host_key,
        snmp=snmp,
        netconf=netconf,
        ssh=ssh,
        vars=frozen_map(merged.vars),
    )


def reference_hint(text: str) -> str:
    kind = text.partition(":")[0]
    if kind == "env":
        return "set the variable in the daemon's environment (EnvironmentFile= in the unit)"
    if kind == "file":
        return "create the file or fix the path (relative paths start at the inventory directory)"
    return "add LoadCredential=NAME:PATH to the unit (systemd sets $CREDENTIALS_DIRECTORY)"


def _given(model: BaseModel, names: tuple[str, ...]) -> dict[str, Any]:
    return {name: getattr(model, name) for name in names if getattr(model, name) is not None}


def _ref(text: str | None) -> SecretRef | None:
    return None if text is None else parse_ref(text)


def _normal_address(address: str) -> str:
    try:
        return ipaddress.ip_address(address).compressed
    except ValueError:
        return address.lower().rstrip(".")


def _drop(data: Any, loc: KeyPath) -> bool:
    """Remove the value at `loc` from nested dicts/lists; False when there is nothing to remove."""
    for part in loc[:-1]:
        if not _has(data, part):
            return False
        data = data[part]
    if not loc or not _has(data, loc[-1]):
        return False
    del data[loc[-1]]
    return True


def _has(data: Any, part: str | int) -> bool:
    if isinstance(data, dict):
        return part in data
    return isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data)
