"""The inventory loader: inheritance, credential references, conversion, and every problem with file:line."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from baton.core.model import SecretRef
from baton.inventory import ConfigError, load_inventory, merge, read_inventory
from baton.inventory.schema import host_key_problem
from baton.secrets import Secret, SecretError, check, parse_ref, resolve

BROKEN = Path(__file__).parent / "data" / "broken"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIApdhTe9MpjvBt8Jeu0swB10G762ei66tC8XDNXtUooy"
OFFICES = """\
offices:
  - id: alpha
    name: Alpha
    region: r1
    alternates: [bravo]
  - id: bravo
    name: Bravo
    region: r1
    alternates: [alpha]
"""
BRAVO_DEVICE = """\
  - id: b-1
    office: bravo
    role: core
    address: 10.0.1.1
    snmp: {community: env:COMMUNITY}
"""
ENV = {"COMMUNITY": "c0mmunity-value", "AUTH": "auth-value", "PRIV": "priv-value"}


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


def problems_of(root: Path, environ: dict[str, str] | None = None) -> list[str]:
    return [str(p) for p in read_inventory(root, environ=ENV if environ is None else environ).problems]


def test_settings_inherit_defaults_then_groups_in_order_then_device(tmp_path: Path) -> None:
    """Later layers win; nested snmp/vars maps merge key by key rather than being replaced."""
    root = write(
        tmp_path,
        {
            "offices.yaml": OFFICES,
            "defaults.yaml": """\
                defaults:
                  snmp: {version: 2c, community: env:COMMUNITY, timeout_s: 1.0, retries: 2}
                  vars: {ntp: 10.9.9.9, site: {floor: 1, rack: a}}
                """,
            "groups.yaml": """\
                groups:
                  router: {role: router, critical: true, snmp: {timeout_s: 3.0}, vars: {site: {rack: b}}}
                  slow: {snmp: {timeout_s: 5.0}, tags: [slow]}
                """,
            "devices/all.yaml": """\
                devices:
                  - id: a-1
                    office: alpha
                    address: 10.0.0.1
                    groups: [router, slow]
                    snmp: {port: 1161}
                    vars: {site: {floor: 3}}
                """,
            "devices/b.yaml": "devices:\n" + BRAVO_DEVICE,
        },
    )
    device = load_inventory(root, environ=ENV).devices["a-1"]
    assert ("router", True, ("slow",)) == (device.role, device.critical, device.tags)
    assert device.snmp is not None
    assert (5.0, 2, 1161, "2c") == (
        device.snmp.timeout_s,
        device.snmp.retries,
        device.snmp.port,
        device.snmp.version,
    )
    assert SecretRef("env", "COMMUNITY") == device.snmp.community
    assert {"ntp": "10.9.9.9", "site": {"floor": 3, "rack": "b"}} == dict(device.vars)


def test_unset_settings_take_the_model_defaults(tmp_path: Path) -> None:
    """A device that sets nothing optional gets core.model defaults (NETCONF/SSH off, SNMP port 161)."""
    root = write(tmp_path, {"offices.yaml": OFFICES, "devices/b.yaml": "devices:\n" + BRAVO_DEVICE})
    inventory = load_inventory(root, environ=ENV)
    device = inventory.devices["b-1"]
    assert device.snmp is not None
    assert (161, 2.0, 1, False, False) == (
        device.snmp.port,
        device.snmp.timeout_s,
        device.snmp.retries,
        device.netconf.enabled,
        device.ssh.enabled,
    )
    assert ("bravo",) == inventory.offices["alpha"].alternates
    assert (device,) == inventory.devices_of("bravo")


def test_merge_replaces_lists_and_merges_maps() -> None:
    """Lists are replaced by the more specific layer; maps merge recursively."""
    assert {"a": [3], "m": {"x": 1, "y": 2}} == merge({"a": [1, 2], "m": {"x": 1}}, {"a": [3], "m": {"y": 2}})


def test_broken_inventory_reports_every_problem_at_once_with_file_and_line() -> None:
    """One pass finds every problem of the broken example, in file/line order, each with a hint."""
    d = BROKEN
    site = f"{d}/devices/site.yaml"
    expected = [
        f"{site}:2: devices[0] (a-core-1).id: duplicate device id 'a-core-1' (also at {site}:36)"
        " — ids must be unique",
        f"{site}:4: devices[0] (a-core-1).address: management address 10.0.0.1 is also used at {site}:10"
        " — give each device its own address",
        f"{site}:7: devices[0] (a-core-1).snmp: unknown key 'comunity' — did you mean 'community'?",
        f"{site}:10: devices[1] (a-core-2).address: management address 10.0.0.1 is also used at {site}:4"
        " — give each device its own address",
        f"{site}:11: devices[1] (a-core-2).groups[0]: unknown group 'routr' — did you mean 'router'?",
        f"{site}:12: devices[1] (a-core-2).host_key: malformed host key: the key is not valid base64"
        " — paste the key from `ssh-keyscan -t ed25519 ADDRESS`, e.g. 'ssh-ed25519"
        " AAAAC3NzaC1lZDI1NTE5AAAA…'",
        f"{site}:14: devices[2] (b-core-1).office: unknown office 'bravoo' — did you mean 'bravo'?",
        f"{site}:17: devices[2] (b-core-1).parent: parent cycle: b-core-1 → b-agg-1 → b-core-1"
        " — a parent is the device this one is reached through; one of these is wrong",
        f"{site}:20: devices[2] (b-core-1).snmp.oids.temp: not a numeric OID"
        " — write dotted numbers, e.g. '1.3.6.1.2.1.1.3.0' (no MIB names)",
        f"{site}:27: devices[3] (b-agg-1).snmp.community: a literal secret is not allowed here"
        " — write a reference instead: 'env:NAME', 'file:PATH' or 'credential:NAME' (systemd"
        " LoadCredential=)",
        f"{site}:28: devices[3] (b-agg-1).snmp.port: expected an integer, got str",
        f"{site}:33: devices[4] (c-olt-1).parent: unknown parent device 'nowhere'"
        " — expected one of: a-core-1, a-core-2, b-agg-1, b-core-1, c-olt-1",
        f"{site}:35: devices[4] (c-olt-1).snmp.community: cannot resolve file:missing-file: file"
        f" {d}/missing-file"
        " does not exist — create the file or fix the path (relative paths start at the inventory directory)",
        f"{site}:36: devices[5] (a-core-1).id: duplicate device id 'a-core-1' (also at {site}:2)"
        " — ids must be unique",
        f"{d}/groups.yaml:8: groups.router.netconf.password: cannot resolve env:BATON_TEST_UNSET_PASSWORD:"
        " environment variable BATON_TEST_UNSET_PASSWORD is not set"
        " — set the variable in the daemon's environment (EnvironmentFile= in the unit)",
        f"{d}/groups.yaml:14: groups.v3.snmp.auth_key: cannot resolve env:BATON_TEST_AUTH:"
        " environment variable BATON_TEST_AUTH is not set"
        " — set the variable in the daemon's environment (EnvironmentFile= in the unit)",
        f"{d}/offices.yaml:5: offices[0] (alpha).alternates[0]: an office cannot be its own alternate"
        " — remove it from the chain",
        f"{d}/offices.yaml:5: offices[0] (alpha).alternates[2]: alternate 'bravo' is listed twice"
        " (first at alternates[1]) — remove the repeat",
        f"{d}/offices.yaml:5: offices[0] (alpha).alternates[3]: unknown alternate office 'charlei'"
        " — did you mean 'charlie'?",
        f"{d}/offices.yaml:6: offices[1] (bravo).id: duplicate office id 'bravo' (also at"
        f" {d}/offices.yaml:13)"
        " — ids must be unique",
        f"{d}/offices.yaml:10: warning: offices[2] (charlie): no alternates: if this office closes,"
        " no other office"
        " can take over — add alternates: [nearest office, next nearest, ...]",
        f"{d}/offices.yaml:13: offices[3] (bravo).id: duplicate office id 'bravo' (also at"
        f" {d}/offices.yaml:6)"
        " — ids must be unique",
        f"{d}/offices.yaml:17: warning: offices[4] (delta): no devices: Baton cannot tell whether"
        " this office is up"
        " — add devices with 'office: delta' under devices/",
        f"{d}/offices.yaml:22: offices[4] (delta).vars.noc_prefixes[0]: not a network prefix"
        " ('10.0.0.0/33' does not appear to be an IPv4 or IPv6 network) — write e.g. 10.10.0.0/16",
    ]
    assert expected == problems_of(d, environ={})


def test_no_inventory_is_built_when_there_are_errors() -> None:
    """load_inventory raises ConfigError carrying the errors (and the warnings) of the broken example."""
    with pytest.raises(ConfigError) as caught:
        load_inventory(BROKEN, environ={})
    assert 24 == len(caught.value.problems)
    assert "unknown key 'comunity'" in str(caught.value)


@pytest.mark.parametrize(
    ("device", "expected"),
    [
        (
            "role: r, address: 10.0.0.1, snmp: {version: 3, user: u, auth_protocol: SHA, auth_key: env:AUTH}",
            "d.yaml:2: devices[0] (x-1).snmp: SNMP v3 needs user, auth and priv settings; missing:"
            " priv_protocol,"
            " priv_key — set them on the device or in defaults (Baton polls v3 with authPriv only)",
        ),
        (
            "role: r, address: 10.0.0.1, snmp: {version: 2c}",
            "d.yaml:2: devices[0] (x-1).snmp: SNMP v2c needs a community — set snmp.community on the device"
            " or in defaults",
        ),
        (
            "role: r, address: 10.0.0.1, netconf: {enabled: true, username: baton, password: env:AUTH}",
            "d.yaml:2: devices[0] (x-1): NETCONF is enabled but no host key is pinned — add"
            " host_key: the line from"
            " `ssh-keyscan -t ed25519 ADDRESS`, checked out of band",
        ),
        (
            f"role: r, address: 10.0.0.1, ssh: {{enabled: true, password: env:AUTH}}, host_key: '{KEY}'",
            "d.yaml:2: devices[0] (x-1).ssh: SSH needs a username — set it on the device or in defaults",
        ),
        (
            "role: r, address: 10.0.0.1, critical: 'yes', snmp: {community: env:COMMUNITY}",
            "d.yaml:2: devices[0] (x-1).critical: expected true or false, got str",
        ),
        (
            "role: r, address: 300.1.1.1, snmp: {community: env:COMMUNITY}",
            "d.yaml:2: devices[0] (x-1).address: not an IP address or host name"
            " — write an IPv4/IPv6 address such as 10.20.0.1, or a DNS name",
        ),
        (
            "address: 10.0.0.1, snmp: {community: env:COMMUNITY}",
            "d.yaml:2: devices[0] (x-1): missing required key 'role' — set role on the device or in defaults",
        ),
        (
            "role: r, address: 10.0.0.1",
            "d.yaml:2: warning: devices[0] (x-1): no SNMP, NETCONF or SSH: Baton cannot probe this device"
            " — give it snmp settings or enable netconf/ssh",
        ),
        (
            "role: r, address: 10.0.0.1, snmp: {community: env:COMMUNITY, critical_interfaces: [0]}",
            "d.yaml:2: devices[0] (x-1).snmp.critical_interfaces[0]: 0 is too small: it must be at least 1"
            " — write a number at least 1 and at most 2147483647, e.g. 1",
        ),
    ],
)
def test_device_checks_name_the_place_and_the_fix(tmp_path: Path, device: str, expected: str) -> None:
    """Each device-level check reports its own message and hint at the device's line, and nothing else."""
    text = f"devices:\n  - {{id: x-1, office: alpha, {device}}}\n"
    root = write(tmp_path, {"offices.yaml": OFFICES, "devices/d.yaml": text + BRAVO_DEVICE})
    assert [expected] == [p.removeprefix(f"{root}/devices/") for p in problems_of(root)]


def test_netconf_max_reply_bytes_inherits_like_the_other_netconf_settings(tmp_path: Path) -> None:
    """netconf.max_reply_bytes: defaults, then a group, then the device; unset means 16 MiB."""
    root = write(
        tmp_path,
        {
            "offices.yaml": OFFICES,
            "defaults.yaml": "defaults:\n  netconf: {max_reply_bytes: 33554432}\n",
            "groups.yaml": "groups:\n  big: {netconf: {max_reply_bytes: 134217728}}\n",
            "devices/a.yaml": """\
                devices:
                  - {id: a-1, office: alpha, role: r, address: 10.0.0.1, snmp: {community: env:COMMUNITY}}
                  - {id: a-2, office: alpha, role: r, address: 10.0.0.2, snmp: {community: env:COMMUNITY},
                     groups: [big]}
                  - {id: a-3, office: alpha, role: r, address: 10.0.0.3, snmp: {community: env:COMMUNITY},
                     groups: [big], netconf: {max_reply_bytes: 65536}}
                """,
            "devices/b.yaml": "devices:\n" + BRAVO_DEVICE,
        },
    )
    devices = load_inventory(root, environ=ENV).devices
    assert [33554432, 134217728, 65536] == [devices[d].netconf.max_reply_bytes for d in ("a-1", "a-2", "a-3")]
    bare = load_inventory(
        write(tmp_path / "bare", {"offices.yaml": OFFICES, "devices/b.yaml": "devices:\n" + BRAVO_DEVICE}),
        environ=ENV,
    )
    assert 16 * 1024 * 1024 == bare.devices["b-1"].netconf.max_reply_bytes


REPLY_BYTES_HINT = (
    "write a whole number of bytes from 65536 (64 KiB) to 1073741824 (1 GiB), e.g. 33554432 (32 MiB)"
)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("16", "16 is too small: it must be at least 65536 bytes"),
        ("0", "0 is too small: it must be at least 65536 bytes"),
        ("4294967296", "4294967296 is too large: it must be at most 1073741824 bytes"),
        ("32MiB", "'32MiB' is not a whole number of bytes"),
        ("33554432.0", "33554432.0 is not a whole number of bytes"),
        ("true", "true is not a whole number of bytes"),
        (".inf", "inf is not a whole number of bytes"),
    ],
)
@pytest.mark.parametrize(
    ("file", "text", "place"),
    [
        ("defaults.yaml", "defaults:\n  netconf:\n    max_reply_bytes: {value}\n", "3: defaults.netconf"),
        (
            "groups.yaml",
            "groups:\n  core:\n    netconf: {{max_reply_bytes: {value}}}\n",
            "3: groups.core.netconf",
        ),
        (
            "devices/a.yaml",
            "devices:\n  - {{id: a-1, office: alpha, role: r, address: 10.0.0.1,\n"
            "     snmp: {{community: env:COMMUNITY}}, netconf: {{max_reply_bytes: {value}}}}}\n",
            "3: devices[0] (a-1).netconf",
        ),
    ],
    ids=["defaults", "group", "device"],
)
def test_a_bad_netconf_max_reply_bytes_is_refused_with_the_file_the_place_and_the_fix(
    tmp_path: Path, value: str, expected: str, file: str, text: str, place: str
) -> None:
    """Out of range, not an integer or not a number, wherever it is set: one problem naming the
    file, the line, the key and what to write; no inventory is built."""
    files = {
        "offices.yaml": OFFICES,
        "devices/b.yaml": "devices:\n" + BRAVO_DEVICE,
        file: text.format(value=value),
    }
    root = write(tmp_path, files)
    errors = [p for p in problems_of(root) if "warning:" not in p]  # (alpha may have no devices)
    assert [f"{root}/{file}:{place}.max_reply_bytes: {expected} — {REPLY_BYTES_HINT}"] == errors
    with pytest.raises(ConfigError):
        load_inventory(root, environ=ENV)


@pytest.mark.parametrize(
    ("offices_text", "expected"),
    [
        ("", "offices.yaml: file is empty — write the section this file holds"),
        (
            "offices:\n  - id: a: b\n",
            "offices.yaml:2: YAML syntax error: mapping values are not allowed here"
            " — a value containing ': ' must be quoted",
        ),
        ("ofices: []\n", "offices.yaml:1: unknown key 'ofices' — did you mean 'offices'?"),
        (
            "offices:\n  - id: alpha\n    region: r\n",
            "offices.yaml:2: offices[0] (alpha): missing required key 'name' — add 'name: ...'",
        ),
        (
            "offices:\n  - id: alpha\n    name: A\n    name: B\n    region: r\n",
            "offices.yaml:4: offices[0]: duplicate key 'name' (first at line 3)"
            " — keep one; YAML would silently use the last",
        ),
        ("offices: {alpha: {}}\n", "offices.yaml:1: offices: expected a list ('- ' items)"),
    ],
)
def test_file_level_problems_are_reported_without_a_traceback(
    tmp_path: Path, offices_text: str, expected: str
) -> None:
    """Empty files, YAML syntax errors, wrong top-level keys and shapes become one clear problem each."""
    root = write(tmp_path, {"offices.yaml": offices_text, "devices/b.yaml": "devices: []\n"})
    found = [p.removeprefix(f"{root}/") for p in problems_of(root)]
    assert expected in found


def test_missing_inventory_directory_is_one_problem(tmp_path: Path) -> None:
    """A directory that does not exist is reported with a hint, not raised."""
    assert [
        f"{tmp_path}/nope: inventory directory does not exist"
        " — pass --inventory DIR, or set `inventory:` in baton.yaml"
    ] == problems_of(tmp_path / "nope")


def test_unresolvable_reference_is_reported_once_where_first_written(tmp_path: Path) -> None:
    """A reference used by many devices is one problem, at its first place, counting the others."""
    devices = "devices:\n" + "".join(
        f"  - {{id: d-{i}, office: alpha, role: r, address: 10.0.0.{i}, snmp: {{community: env:UNSET}}}}\n"
        for i in range(3)
    )
    root = write(tmp_path, {"offices.yaml": OFFICES, "devices/d.yaml": devices + BRAVO_DEVICE})
    expected = (
        f"{root}/devices/d.yaml:2: devices[0] (d-0).snmp.community: cannot resolve env:UNSET:"
        " environment variable"
        " UNSET is not set (also used at 2 other places)"
        " — set the variable in the daemon's environment (EnvironmentFile= in the unit)"
    )
    assert [expected] == problems_of(root)


def test_no_secret_value_appears_in_any_problem(tmp_path: Path) -> None:
    """Literal secrets (string or number), wrong-typed keys and resolved files never show their value."""
    (tmp_path / "secret").write_text("file-secret-value\n")
    devices = """\
        devices:
          - id: x-1
            office: alpha
            role: r
            address: 10.0.0.1
            snmp: {version: 3, user: u, auth_protocol: SHA, auth_key: literal-auth-value, priv_protocol: AES,
                   priv_key: 9876543210}
            netconf: {enabled: true, username: u, password: ['list-secret-value']}
          - id: x-2
            office: alpha
            role: r
            address: 10.0.0.2
            snmp: {community: file:secret, port: port-secret-value}
        """
    root = write(tmp_path, {"offices.yaml": OFFICES, "devices/d.yaml": devices})
    text = "\n".join(problems_of(root))
    assert "a literal secret is not allowed here" in text
    for value in (
        "literal-auth-value",
        "9876543210",
        "list-secret-value",
        "file-secret-value",
        "port-secret-value",
    ):
        assert value not in text


def test_shipped_example_loads_with_all_offices_and_devices() -> None:
    """The example inventory is valid: 8 offices, 30 devices, Seoul on SNMP v3, routers pinned."""
    inventory = load_inventory(Path(__file__).parents[2] / "inventory")
    assert (8, 30) == (len(inventory.offices), len(inventory.devices))
    core = inventory.devices["gc-core-1"]
    assert core.snmp is not None
    assert ("3", True, True, None) == (core.snmp.version, core.critical, core.netconf.enabled, core.parent)
    assert core.host_key is not None
    assert host_key_problem(core.host_key) is None
    assert ("seoul-bangbae", "seoul-suwon", "seoul-gwacheon") == inventory.offices[
        "seoul-geumcheon"
    ].alternates


# --- secrets -------------------------------------------------------------------------------


def test_resolve_reads_env_file_and_credential_stripping_one_newline(tmp_path: Path) -> None:
    """Each reference kind resolves; a file loses exactly one trailing newline."""
    (tmp_path / "f").write_text("from-file\n\n")
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "tok").write_text("from-credential\n")
    env = {"V": "from-env", "CREDENTIALS_DIRECTORY": str(creds)}
    assert ["from-env", "from-file\n", "from-credential"] == [
        resolve(parse_ref(r), base_dir=tmp_path, environ=env) for r in ("env:V", "file:f", "credential:tok")
    ]


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("env:NOPE", "env:NOPE: environment variable NOPE is not set"),
        ("file:/nonexistent/x", "file:/nonexistent/x: file /nonexistent/x does not exist"),
        (
            "credential:tok",
            "credential:tok: $CREDENTIALS_DIRECTORY is not set"
            " (systemd sets it for units with LoadCredential=)",
        ),
    ],
)
def test_resolve_errors_name_the_reference(ref: str, message: str) -> None:
    """An unresolvable reference raises SecretError naming the reference and the cause."""
    with pytest.raises(SecretError) as caught:
        resolve(parse_ref(ref), environ={})
    assert message == str(caught.value)


def test_check_refuses_an_empty_value_and_parse_never_repeats_the_text() -> None:
    """check() fails on empty values; parse_ref's error does not contain what it was given."""
    with pytest.raises(SecretError, match="resolves to an empty value"):
        check(parse_ref("env:EMPTY"), environ={"EMPTY": ""})
    with pytest.raises(SecretError) as caught:
        parse_ref("hunter2")
    assert "hunter2" not in str(caught.value)


def test_secret_wrapper_hides_its_value() -> None:
    """str, repr and f-strings of a Secret show ***; reveal() gives the value."""
    secret = Secret("s3cr3t")
    assert ("***", "Secret('***')", "***", "s3cr3t") == (
        str(secret),
        repr(secret),
        f"{secret}",
        secret.reveal(),
    )
