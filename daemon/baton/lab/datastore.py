"""A lab device's NETCONF configuration datastores: running, candidate, locks, confirmed commit.

Theory of operation. Both datastores are lxml trees under a namespace-less `<data>` root, one
child per top-level container (`management` of the lab model, `interfaces` of ietf-interfaces,
`nacm` of ietf-netconf-acm). A small schema (`_SCHEMA`) says which elements exist, which are
lists and by which key leaf, and how leaf values are checked, so edit-config can merge, replace,
create and delete as RFC 6241 §7.2 says and reject what netconfd would reject. Every edit works on
a copy that replaces the candidate only when the whole edit succeeded (rollback-on-error).

The confirmed-commit state machine (RFC 6241 §8.4) is pure: time comes from the injected clock and
nothing is scheduled here. The front end asks `next_deadline()` after every change and calls
`expire()` when that time has come (with asyncio's `call_later`), and tells the datastore when a
session closes (`close_session`), which releases its locks and may roll back its confirmed commit.

Sessions are plain integers handed out by the front end; the datastore only compares them.
"""

from __future__ import annotations

import copy
import ipaddress
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal, TypeAlias

from lxml import etree  # type: ignore[import-untyped]  # no lxml-stubs in the env

from baton.lab.device import MgmtView, TrapTarget

NC_NS = "urn:ietf:params:xml:ns:netconf:base:1.0"
LAB_NS = "urn:baton:lab:mgmt:1.0"
IF_NS = "urn:ietf:params:xml:ns:yang:ietf-interfaces"
NACM_NS = "urn:ietf:params:xml:ns:yang:ietf-netconf-acm"

LAB_MODULE = "baton-lab-mgmt"
LAB_REVISION = "2024-01-01"

DEFAULT_CONFIRM_TIMEOUT_S = 600

_OPERATION = f"{{{NC_NS}}}operation"
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, remove_blank_text=True, huge_tree=False)

Element: TypeAlias = etree._Element
EditOperation = Literal["merge", "replace", "create", "delete", "remove", "none"]
_OPERATIONS: frozenset[str] = frozenset({"merge", "replace", "create", "delete", "remove", "none"})


class RpcError(Exception):
    """An `<rpc-error>` to send back: RFC 6241 Appendix A tags, with optional error-info."""

    def __init__(
        self,
        tag: str,
        message: str,
        *,
        error_type: str = "application",
        info: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.tag = tag
        self.message = message
        self.error_type = error_type
        self.info: dict[str, str] = dict(info or {})


# --- schema --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Node:
    kind: Literal["container", "list", "leaf", "leaf-list"]
    children: Mapping[str, _Node] = field(default_factory=dict)
    key: str | None = None  # list key leaf (local name)
    check: Callable[[str], object] | None = None  # raises ValueError on a bad value


def _leaf(check: Callable[[str], object] | None = None) -> _Node:
    return _Node("leaf", check=check)


def _check_port(text: str) -> int:
    port = int(text)
    if not 0 < port < 65536:
        raise ValueError(text)
    return port


def _check_bool(text: str) -> bool:
    if text not in ("true", "false"):
        raise ValueError(text)
    return text == "true"


def _check_text(text: str) -> str:
    if not text:
        raise ValueError(text)
    return text


def _check_network(text: str) -> object:
    return ipaddress.ip_network(text, strict=False)


def _q(ns: str, children: Mapping[str, _Node]) -> dict[str, _Node]:
    return {f"{{{ns}}}{name}": node for name, node in children.items()}


def _module(ns: str, tree: dict[str, object]) -> dict[str, _Node]:
    """Qualify a nested {name: node-or-dict} spec with one namespace (dicts become containers)."""

    def build(spec: object) -> _Node:
        if isinstance(spec, _Node):
            if spec.children:
                kids = {k: build(v) for k, v in spec.children.items()}
                return _Node(spec.kind, _q(ns, kids), spec.key, spec.check)
            return spec
        assert isinstance(spec, dict)
        return _Node("container", _q(ns, {k: build(v) for k, v in spec.items()}))

    return _q(ns, {k: build(v) for k, v in tree.items()})


def _check_epoch(text: str) -> None:
    if not text.strip().isdigit():
        raise ValueError("an epoch is a whole number")


_SCHEMA: dict[str, _Node] = {
    **_module(
        LAB_NS,
        {
            "management": {
                "acl": {
                    "entry": _Node(
                        "list", {"name": _leaf(_check_text), "prefix": _leaf(_check_network)}, key="name"
                    )
                },
                "aaa": {"server": _Node("leaf-list", check=ipaddress.ip_address)},
                "trap-target": _Node(
                    "list",
                    {
                        "address": _leaf(ipaddress.ip_address),
                        "port": _leaf(_check_port),
                        "community": _leaf(_check_text),
                    },
                    key="address",
                ),
                "syslog": {"server": _Node("leaf-list", check=ipaddress.ip_address)},
                "contact": _leaf(),
                # The fencing epoch of the Baton leader that last changed the device: a commit
                # that would lower it is refused (gNMI's election id, as data in the commit).
                "epoch": _leaf(_check_epoch),
            }
        },
    ),
    **_module(
        IF_NS,
        {
            "interfaces": {
                "interface": _Node(
                    "list",
                    {
                        "name": _leaf(_check_text),
                        "type": _leaf(),
                        "enabled": _leaf(_check_bool),
                        "description": _leaf(),
                    },
                    key="name",
                )
            }
        },
    ),
    **_module(
        NACM_NS,
        {
            "nacm": {
                "enable-nacm": _leaf(_check_bool),
                "read-default": _leaf(),
                "write-default": _leaf(),
                "exec-default": _leaf(),
                "enable-external-groups": _leaf(_check_bool),
                "groups": {
                    "group": _Node(
                        "list", {"name": _leaf(_check_text), "user-name": _Node("leaf-list")}, key="name"
                    )
                },
                "rule-list": _Node(
                    "list",
                    {
                        "name": _leaf(_check_text),
                        "group": _Node("leaf-list"),
                        "rule": _Node(
                            "list",
                            {
                                name: _leaf()
                                for name in (
                                    "name",
                                    "module-name",
                                    "rpc-name",
                                    "notification-name",
                                    "path",
                                    "access-operations",
                                    "action",
                                    "comment",
                                )
                            },
                            key="name",
                        ),
                    },
                    key="name",
                ),
            }
        },
    ),
}
_KNOWN_NAMESPACES = frozenset({LAB_NS, IF_NS, NACM_NS})


def _ns(tag: str) -> str:
    return tag[1:].split("}", 1)[0] if tag.startswith("{") else ""


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _schema_child(parent: Mapping[str, _Node], el: Element) -> _Node:
    tag = el.tag
    if not isinstance(tag, str):
        raise RpcError("malformed-message", "unexpected XML node", error_type="rpc")
    node = parent.get(tag)
    if node is not None:
        return node
    ns = _ns(tag)
    if ns not in _KNOWN_NAMESPACES or (parent is not _SCHEMA and not any(_ns(t) == ns for t in parent)):
        raise RpcError(
            "unknown-namespace",
            f"unknown namespace {ns or '(none)'} on element {_local(tag)}",
            info={"bad-element": _local(tag), "bad-namespace": ns},
        )
    raise RpcError("unknown-element", f"unknown element {_local(tag)}", info={"bad-element": _local(tag)})


def _elements(el: Element) -> list[Element]:
    return [c for c in el if isinstance(c.tag, str)]


def _text(el: Element) -> str:
    return (el.text or "").strip()


# --- edit-config ---------------------------------------------------------------------------


def _key_text(entry: Element, node: _Node) -> str | None:
    assert node.key is not None
    key = entry.find(f"{{{_ns(entry.tag)}}}{node.key}")
    return None if key is None else _text(key)


def _find_match(target: Element, el: Element, node: _Node) -> Element | None:
    for cand in target.iterchildren(el.tag):
        if node.kind == "list":
            if _key_text(cand, node) == _key_text(el, node):
                return cand
        elif node.kind == "leaf-list":
            if _text(cand) == _text(el):
                return cand
        else:
            return cand
    return None


def _check_subtree(el: Element, node: _Node) -> None:
    """Schema and value checks of config data about to be stored."""
    if node.kind in ("leaf", "leaf-list"):
        if _elements(el):
            raise RpcError(
                "unknown-element", f"{_local(el.tag)} is a leaf", info={"bad-element": _local(el.tag)}
            )
        if node.check is not None and el.get(_OPERATION) not in ("delete", "remove"):
            try:
                node.check(_text(el))
            except ValueError:
                raise RpcError(
                    "invalid-value",
                    f"invalid value {_text(el)!r} for {_local(el.tag)}",
                    error_type="protocol",
                    info={"bad-element": _local(el.tag)},
                ) from None
        return
    if node.kind == "list" and _key_text(el, node) is None:
        raise RpcError(
            "missing-element",
            f"list entry {_local(el.tag)} has no key {node.key}",
            error_type="protocol",
            info={"bad-element": node.key or ""},
        )
    for child in _elements(el):
        _check_subtree(child, _schema_child(node.children, child))


def _clean_copy(el: Element) -> Element:
    out = copy.deepcopy(el)
    for sub in out.iter():
        if isinstance(sub.tag, str) and _OPERATION in sub.attrib:
            del sub.attrib[_OPERATION]
    return out


def _has_operation(el: Element) -> bool:
    return any(isinstance(sub.tag, str) and _OPERATION in sub.attrib for sub in el.iter())


def _new_shell(el: Element, node: _Node) -> Element:
    """An empty container or list entry (with its key) to merge children into."""
    shell = etree.Element(el.tag, nsmap=el.nsmap)
    if node.kind == "list":
        key = el.find(f"{{{_ns(el.tag)}}}{node.key}")
        assert key is not None
        shell.append(_clean_copy(key))
    return shell


def _apply(target: Element, config: Element, schema: Mapping[str, _Node], inherited: str) -> None:
    for el in _elements(config):
        node = _schema_child(schema, el)
        op = el.get(_OPERATION, inherited)
        if op not in _OPERATIONS:
            raise RpcError(
                "bad-attribute",
                f"unknown operation {op!r}",
                error_type="protocol",
                info={"bad-attribute": "operation", "bad-element": _local(el.tag)},
            )
        _check_subtree(el, node)
        existing = _find_match(target, el, node)
        where = _local(el.tag)
        if op in ("delete", "remove"):
            if existing is None:
                if op == "delete":
                    raise RpcError("data-missing", f"{where} does not exist", info={"bad-element": where})
                continue
            target.remove(existing)
        elif op == "create" and existing is not None:
            raise RpcError("data-exists", f"{where} already exists", info={"bad-element": where})
        elif op in ("create", "replace"):
            fresh = _clean_copy(el)
            if existing is None:
                target.append(fresh)
            else:
                existing.addprevious(fresh)
                target.remove(existing)
        elif node.kind in ("leaf", "leaf-list"):
            if existing is None:
                if op == "none":
                    raise RpcError("data-missing", f"{where} does not exist", info={"bad-element": where})
                target.append(_clean_copy(el))
            elif op == "merge":
                existing.text = el.text
        else:  # merge or none into a container or list entry
            if existing is None:
                if op == "none" and not _has_operation(el):
                    raise RpcError("data-missing", f"{where} does not exist", info={"bad-element": where})
                existing = _new_shell(el, node)
                target.append(existing)
            _apply(existing, el, node.children, op)


# --- subtree filtering (RFC 6241 §6) ---------------------------------------------------------


def _same_name(filter_el: Element, data_el: Element) -> bool:
    # A filter element without a namespace matches any namespace (RFC 6241 §6.2.1)
    if _local(filter_el.tag) != _local(data_el.tag):
        return False
    ns = _ns(filter_el.tag)
    return not ns or ns == _ns(data_el.tag)


def _filter_node(data: Element, flt: Element) -> Element | None:
    """`data` as selected by the filter node `flt` (whose name already matched), or None."""
    kids = _elements(flt)
    if not kids:
        text = _text(flt)
        if text and _text(data) != text:
            return None
        return copy.deepcopy(data)
    content = [k for k in kids if not _elements(k) and _text(k)]
    others = [k for k in kids if k not in content]
    for match in content:
        if not any(_same_name(match, d) and _text(d) == _text(match) for d in _elements(data)):
            return None
    if not others:
        return copy.deepcopy(data)
    out = etree.Element(data.tag, nsmap=data.nsmap)
    selected = False
    for child in _elements(data):
        if any(_same_name(m, child) for m in content):
            out.append(copy.deepcopy(child))
            continue
        for f in others:
            if _same_name(f, child):
                got = _filter_node(child, f)
                if got is not None:
                    out.append(got)
                    selected = True
                    break
    return out if selected or not others else None


def filter_subtree(data: Iterable[Element], flt: Element | None) -> list[Element]:
    """Top-level data nodes selected by a `<filter type="subtree">` element (None: everything)."""
    if flt is None:
        return [copy.deepcopy(d) for d in data]
    result: list[Element] = []
    for d in data:
        for f in _elements(flt):
            if _same_name(f, d):
                got = _filter_node(d, f)
                if got is not None:
                    result.append(got)
                    break
    return result


# --- building and reading the lab model ------------------------------------------------------


def parse_xml(text: str | bytes) -> Element:
    """Parse XML without entity expansion or network access (input comes from clients)."""
    try:
        return etree.fromstring(text.encode() if isinstance(text, str) else text, _PARSER)
    except etree.XMLSyntaxError as exc:
        raise RpcError("malformed-message", f"malformed XML: {exc}", error_type="rpc") from None


def management_xml(
    *,
    acl: Iterable[tuple[str, str]] = (),
    aaa_servers: Iterable[str] = (),
    trap_targets: Iterable[TrapTarget] = (),
    syslog_servers: Iterable[str] = (),
    contact: str = "",
) -> str:
    """The lab model's `<management>` container as XML text, from Python values.

    `acl` holds (office id, prefix) pairs. The result is what `Datastore(running=...)` takes, and
    also a valid edit-config `<config>` child.
    """
    m = etree.Element(f"{{{LAB_NS}}}management", nsmap={None: LAB_NS})

    def sub(parent: Element, name: str, text: str | None = None) -> Element:
        el = etree.SubElement(parent, f"{{{LAB_NS}}}{name}")
        if text is not None:
            el.text = text
        return el

    acl_el = sub(m, "acl")
    for office, prefix in acl:
        entry = sub(acl_el, "entry")
        sub(entry, "name", office)
        sub(entry, "prefix", str(ipaddress.ip_network(prefix, strict=False)))
    aaa = sub(m, "aaa")
    for server in aaa_servers:
        sub(aaa, "server", server)
    for target in trap_targets:
        t = sub(m, "trap-target")
        sub(t, "address", target.address)
        sub(t, "port", str(target.port))
        sub(t, "community", target.community)
    syslog = sub(m, "syslog")
    for server in syslog_servers:
        sub(syslog, "server", server)
    sub(m, "contact", contact)
    return str(etree.tostring(m, encoding="unicode"))


def mgmt_view(root: Element) -> MgmtView:
    """Read the `<management>` container under `root` into a MgmtView (missing parts are empty)."""
    m = root.find(f"{{{LAB_NS}}}management")
    if m is None:
        return MgmtView()

    def q(path: str) -> str:
        return "/".join(f"{{{LAB_NS}}}{p}" for p in path.split("/"))

    nets = []
    offices = []
    for entry in m.iterfind(q("acl/entry")):
        prefix = entry.findtext(q("prefix"))
        if prefix:
            nets.append(ipaddress.ip_network(prefix.strip(), strict=False))
            offices.append((entry.findtext(q("name")) or "").strip())
    targets = []
    for t in m.iterfind(q("trap-target")):
        targets.append(
            TrapTarget(
                address=(t.findtext(q("address")) or "").strip(),
                port=int(t.findtext(q("port")) or 162),
                community=(t.findtext(q("community")) or "public").strip(),
            )
        )
    return MgmtView(
        acl=tuple(nets),
        acl_offices=tuple(offices),
        aaa_servers=tuple(_text(s) for s in m.iterfind(q("aaa/server"))),
        trap_targets=tuple(targets),
        syslog_servers=tuple(_text(s) for s in m.iterfind(q("syslog/server"))),
        contact=(m.findtext(q("contact")) or "").strip(),
    )


# --- the datastore -------------------------------------------------------------------------


@dataclass(slots=True)
class _PendingConfirm:
    rollback: Element  # running as it was before the first confirmed commit
    deadline: float
    session: int  # the session that issued the latest confirmed commit
    persist: str | None


Target = Literal["running", "candidate"]


class Datastore:
    """running + candidate of one device, shared by all its sessions (as netconfd's candidate is)."""

    def __init__(
        self,
        running: str | Iterable[str] = (),
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        root = etree.Element("data")
        for text in [running] if isinstance(running, str) else running:
            config = etree.Element("config")
            config.append(parse_xml(text))
            _apply(root, config, _SCHEMA, "merge")
        self._running: Element = root
        self._candidate: Element = copy.deepcopy(root)
        self._candidate_dirty = False
        self._locks: dict[str, int] = {}
        self._pending: _PendingConfirm | None = None
        self._mgmt: MgmtView | None = None

    # --- reading

    def now(self) -> float:
        return self._clock()

    def running_mgmt(self) -> MgmtView:
        """The running management plane; cached until the next change of running."""
        if self._mgmt is None:
            self._mgmt = mgmt_view(self._running)
        return self._mgmt

    def config(self, source: Target) -> list[Element]:
        """Copies of the top-level nodes of `source` (callers may keep or change them)."""
        root = self._running if source == "running" else self._candidate
        return [copy.deepcopy(c) for c in root]

    def get_config(self, source: Target, flt: Element | None = None) -> list[Element]:
        root = self._running if source == "running" else self._candidate
        return filter_subtree(_elements(root), flt)

    def get(self, state: Iterable[Element] = (), flt: Element | None = None) -> list[Element]:
        """running config plus the given state nodes, filtered."""
        return filter_subtree([*_elements(self._running), *state], flt)

    def running_xml(self) -> str:
        return "".join(etree.tostring(c, encoding="unicode") for c in self._running)

    def candidate_xml(self) -> str:
        return "".join(etree.tostring(c, encoding="unicode") for c in self._candidate)

    @property
    def locks(self) -> Mapping[str, int]:
        return dict(self._locks)

    @property
    def is_candidate_dirty(self) -> bool:
        """Has the candidate edits not yet committed or discarded?"""
        return self._candidate_dirty

    @property
    def confirm_pending(self) -> bool:
        return self._pending is not None

    def next_deadline(self) -> float | None:
        """When the pending confirmed commit expires (clock time), or None."""
        return None if self._pending is None else self._pending.deadline

    # --- locks

    def _check_lock(self, target: str, session: int) -> None:
        holder = self._locks.get(target)
        if holder is not None and holder != session:
            raise RpcError(
                "in-use",
                f"{target} is locked by session {holder}",
                info={"session-id": str(holder)},
            )

    def lock(self, target: Target, session: int) -> None:
        holder = self._locks.get(target)
        if holder is not None:
            raise RpcError(
                "lock-denied",
                f"{target} is already locked by session {holder}",
                error_type="protocol",
                info={"session-id": str(holder)},
            )
        if target == "candidate" and self._candidate_dirty:
            # RFC 6241 §8.3.5.1: no lock over someone's uncommitted changes
            raise RpcError(
                "lock-denied",
                "candidate has uncommitted changes",
                error_type="protocol",
                info={"session-id": "0"},
            )
        self._locks[target] = session

    def unlock(self, target: Target, session: int) -> None:
        if self._locks.get(target) != session:
            raise RpcError(
                "operation-failed",
                f"{target} is not locked by this session",
                error_type="protocol",
                info={"session-id": str(self._locks.get(target, 0))},
            )
        self._release(target)

    def _release(self, target: str) -> None:
        del self._locks[target]
        if target == "candidate" and self._candidate_dirty:
            # like netconfd: changes made under a lock go when the lock goes without a commit
            self.discard_changes()

    # --- editing

    def edit_config(
        self,
        target: Target,
        config: Element,
        session: int,
        *,
        default_operation: str = "merge",
    ) -> None:
        """Apply a `<config>` element to the candidate, all or nothing."""
        if target != "candidate":
            raise RpcError(
                "operation-not-supported",
                f"edit-config on {target} is not supported (no :writable-running)",
                error_type="protocol",
            )
        if default_operation not in ("merge", "replace", "none"):
            raise RpcError(
                "invalid-value",
                f"bad default-operation {default_operation!r}",
                error_type="protocol",
                info={"bad-element": "default-operation"},
            )
        self._check_lock(target, session)
        work = etree.Element("data") if default_operation == "replace" else copy.deepcopy(self._candidate)
        _apply(work, config, _SCHEMA, "merge" if default_operation == "replace" else default_operation)
        etree.cleanup_namespaces(work)  # as a server would: the edit's own declarations do not stay
        self._candidate = work
        self._candidate_dirty = True

    def discard_changes(self) -> None:
        self._candidate = copy.deepcopy(self._running)
        self._candidate_dirty = False

    def validate(self, source: Target = "candidate") -> None:
        """Check semantic constraints the schema walk alone does not (required leaves)."""
        root = self._candidate if source == "candidate" else self._running
        for top in _elements(root):
            _check_subtree(top, _SCHEMA[top.tag])
        for entry in root.iterfind(f"{{{LAB_NS}}}management/{{{LAB_NS}}}acl/{{{LAB_NS}}}entry"):
            if entry.find(f"{{{LAB_NS}}}prefix") is None:
                raise RpcError(
                    "missing-element",
                    f"acl entry {_key_text(entry, _Node('list', key='name'))} has no prefix",
                    info={"bad-element": "prefix"},
                )

    # --- commit and the confirmed-commit state machine

    def _set_running(self, root: Element) -> None:
        self._running = root
        self._mgmt = None

    def commit(
        self,
        session: int,
        *,
        confirmed: bool = False,
        timeout_s: int = DEFAULT_CONFIRM_TIMEOUT_S,
        persist: str | None = None,
        persist_id: str | None = None,
    ) -> None:
        """candidate → running; `confirmed` starts or extends a confirmed commit (RFC 6241 §8.4)."""
        self._check_lock("running", session)
        pending = self._pending
        if persist_id is not None and (pending is None or pending.persist != persist_id):
            raise RpcError(
                "invalid-value",
                "no confirmed commit with this persist-id",
                error_type="protocol",
                info={"bad-element": "persist-id"},
            )
        if pending is not None and persist_id is None:
            if pending.persist is not None:
                raise RpcError(
                    "operation-failed",
                    "a persistent confirmed commit is pending: give its persist-id",
                    error_type="protocol",
                )
            if pending.session != session:
                raise RpcError(
                    "in-use",
                    f"a confirmed commit of session {pending.session} is pending",
                    info={"session-id": str(pending.session)},
                )
        self.validate("candidate")
        older, newer = _epoch(self._candidate), _epoch(self._running)
        if older < newer:
            raise RpcError(
                "operation-failed",
                f"epoch {older} is older than the device's {newer}: a newer Baton leader operates it",
                error_type="application",
            )
        new_running = copy.deepcopy(self._candidate)
        if confirmed:
            deadline = self._clock() + timeout_s
            if pending is None:
                self._pending = _PendingConfirm(self._running, deadline, session, persist)
            else:
                pending.deadline = deadline
                pending.session = session
                pending.persist = persist
        else:
            self._pending = None
        self._set_running(new_running)
        self._candidate_dirty = False

    def running_epoch(self) -> int:
        return _epoch(self._running)

    def cancel_commit(self, session: int, *, persist_id: str | None = None) -> None:
        pending = self._pending
        if pending is None:
            raise RpcError("invalid-value", "no confirmed commit is pending", error_type="protocol")
        if pending.persist is not None and persist_id != pending.persist:
            raise RpcError(
                "invalid-value",
                "persist-id does not match the pending confirmed commit",
                error_type="protocol",
                info={"bad-element": "persist-id"},
            )
        if pending.persist is None and (persist_id is not None or pending.session != session):
            raise RpcError(
                "operation-failed",
                "the pending confirmed commit belongs to another session",
                error_type="protocol",
            )
        self._rollback()

    def _rollback(self) -> None:
        assert self._pending is not None
        self._set_running(self._pending.rollback)
        self._pending = None
        self.discard_changes()

    def expire(self) -> bool:
        """Roll back a confirmed commit whose time has come. True if it rolled back."""
        if self._pending is None or self._clock() < self._pending.deadline:
            return False
        self._rollback()
        return True

    def close_session(self, session: int) -> bool:
        """Release the session's locks; roll back its non-persist confirmed commit. True if rolled back."""
        for target in [t for t, s in self._locks.items() if s == session]:
            self._release(target)
        pending = self._pending
        if pending is not None and pending.persist is None and pending.session == session:
            self._rollback()
            return True
        return False


def _epoch(root: Element) -> int:
    text = root.findtext(f"{{{LAB_NS}}}management/{{{LAB_NS}}}epoch")
    return int(text.strip()) if text and text.strip().isdigit() else 0
