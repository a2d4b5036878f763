"""baton.yaml: defaults, paths, did-you-mean, and policy timing values checked together."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from baton.config import PolicyFile, check_policy, check_probe_time, load_config, read_config
from baton.core.model import Device, Inventory, Policy, SecretRef, SnmpSettings
from baton.yamlsource import ConfigError

MINIMAL = "vantage: {id: v1, office: alpha}\n"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "baton.yaml"
    path.write_text(text)
    return path


def test_minimal_config_takes_design_defaults_and_resolves_paths_from_its_directory(tmp_path: Path) -> None:
    """Only the vantage is required; relative paths start at the config file's directory."""
    config = load_config(write(tmp_path, MINIMAL + "journal_path: var/journal.sqlite3\n"))
    assert Policy() == config.policy
    assert (tmp_path / "inventory", tmp_path / "playbooks", tmp_path / "var/journal.sqlite3") == (
        config.inventory,
        config.playbooks,
        config.journal_path,
    )
    assert (Path("/run/baton/api.sock"), "127.0.0.1:9180", 162, None) == (
        config.api.unix_socket,
        config.metrics_listen,
        config.traps.port,
        config.etcd,
    )


def test_a_vantage_source_address_is_an_ip_address(tmp_path: Path) -> None:
    """vantage.source_address (what the probes leave from) is kept, normalised; default none;
    a name or a typo is refused with the line."""
    assert None is load_config(write(tmp_path, MINIMAL)).vantage.source_address
    config = load_config(write(tmp_path, "vantage: {id: v1, office: alpha, source_address: 10.0.1.21}\n"))
    assert "10.0.1.21" == config.vantage.source_address
    config = load_config(write(tmp_path, "vantage: {id: v1, office: alpha, source_address: '2001:DB8::1'}\n"))
    assert "2001:db8::1" == config.vantage.source_address
    path = write(tmp_path, "vantage: {id: v1, office: alpha, source_address: noc-host}\n")
    assert [
        f"{path}:1: vantage.source_address: not an IP address — write this host's address, e.g. 10.0.1.21"
    ] == [str(p) for p in read_config(path).problems]


def test_policy_file_names_every_policy_field() -> None:
    """Every Policy field can be set in baton.yaml (the schema and the model agree)."""
    from_operators = {"approvals", "grant_terms"}  # `operators:` fills these (baton.operators)
    assert {f.name for f in dataclasses.fields(Policy)} - from_operators == set(PolicyFile.model_fields)


def test_unknown_policy_key_suggests_the_right_one(tmp_path: Path) -> None:
    """A typo in policy names the line and the key it probably meant."""
    path = write(tmp_path, MINIMAL + "policy:\n  hold_down: 30\n")
    assert [f"{path}:3: policy: unknown key 'hold_down' — did you mean 'hold_down_s'?"] == [
        str(p) for p in read_config(path).problems
    ]


def test_load_config_raises_config_error_with_every_problem(tmp_path: Path) -> None:
    """Several mistakes are all reported by one ConfigError, none of them a traceback."""
    path = write(tmp_path, "vantage: {id: v1}\nmetrics_listen: nowhere\napi: {tcp_listen: 0.0.0.0:9443}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert [
        f"{path}:1: vantage: missing required key 'office' — add 'office: ...'",
        f"{path}:2: metrics_listen: not a host:port address — write e.g. 127.0.0.1:9180 or [::1]:9180",
    ] == [str(p) for p in caught.value.problems]


def test_tcp_api_without_tokens_is_refused(tmp_path: Path) -> None:
    """A TCP control API must have tokens; beyond loopback without TLS it also warns."""
    path = write(tmp_path, MINIMAL + "api:\n  tcp_listen: 10.0.0.5:9443\n")
    assert [
        f"{path}:3: api.tcp_listen: the TCP API has no tokens: anyone who can reach it could hand"
        " offices over"
        " — add api.tokens: [credential:api-token], or remove tcp_listen",
        f"{path}:3: warning: api.tcp_listen: the TCP API listens beyond loopback without TLS:"
        " tokens would travel"
        " in clear text — set api.tls_cert and api.tls_key",
    ] == [str(p) for p in read_config(path).problems]


def test_credential_references_resolve_from_the_config_directory(tmp_path: Path) -> None:
    """`file:` tokens start at baton.yaml's directory; an unset env reference is a problem, value unseen."""
    (tmp_path / "token").write_text("tok-value\n")
    path = write(tmp_path, MINIMAL + "api:\n  tokens: [file:token, env:BATON_TEST_TOKEN]\n")
    problems = read_config(path, environ={}).problems
    assert [
        f"{path}:3: api.tokens[1]: cannot resolve env:BATON_TEST_TOKEN: environment variable BATON_TEST_TOKEN"
        " is not set — set the variable in the daemon's environment (EnvironmentFile= in the unit)"
    ] == [str(p) for p in problems]
    config = load_config(path, environ={"BATON_TEST_TOKEN": "x"})
    # made absolute at load, so it resolves the same from wherever it is used
    expected = (SecretRef("file", str(tmp_path / "token")), SecretRef("env", "BATON_TEST_TOKEN"))
    assert expected == config.api.tokens


def test_literal_token_is_refused_without_echoing_it(tmp_path: Path) -> None:
    """A token written in clear is an error that shows where, not what."""
    path = write(tmp_path, MINIMAL + "api:\n  tokens: my-plain-token\n")
    text = "\n".join(str(p) for p in read_config(path).problems)
    assert "a literal secret is not allowed here" in text
    assert "my-plain-token" not in text


TIMING_CASES = [
    pytest.param({}, [], id="defaults are safe"),
    pytest.param(
        {"hold_down_s": 15},
        [
            "error hold_down_s: hold_down_s (15) is shorter than 2 × poll_interval_s (2 × 10 = 20):"
            " a held DOWN could not be observed — raise hold_down_s to at least 20, or lower poll_interval_s"
        ],
        id="hold-down shorter than two polls",
    ),
    pytest.param(
        {"hold_down_s": 25},
        [
            "warning hold_down_s: hold_down_s (25) is shorter than the detection time failures_to_down ×"
            " poll_interval_s (3 × 10 = 30 s) — a hold-down of at least 30 s rides out what detection alone"
            " would not"
        ],
        id="hold-down shorter than detection warns",
    ),
    pytest.param(
        {"run_timeout_s": 280},
        [
            "error run_timeout_s: run_timeout_s (280) must be less than confirm_window_s (300) minus a 30 s"
            " margin: the confirmed commit would expire before the run confirms it — raise confirm_window_s"
            " above 310, or lower run_timeout_s below 270"
        ],
        id="run outlasts the confirm window",
    ),
    pytest.param(
        {"handback_hold_s": 20, "hold_down_s": 30},
        [
            "error handback_hold_s: handback_hold_s (20) is shorter than hold_down_s (30): an office would be"
            " handed back faster than it is closed — raise handback_hold_s to at least 30"
        ],
        id="handback faster than closure",
    ),
    pytest.param(
        {"flap_low_pct": 50},
        [
            "error flap_low_pct: flap_low_pct (50) must be below flap_high_pct (50): the flapping"
            " flag needs a gap"
            " to clear — e.g. flap_high_pct: 50 and flap_low_pct: 25"
        ],
        id="no flap hysteresis",
    ),
    pytest.param(
        {"office_down_ratio": 0.0, "storm_max_ratio": 1.5},
        [
            "error office_down_ratio: office_down_ratio (0) must be in (0, 1]: it is the share of"
            " critical devices"
            " DOWN that makes an office DOWN — e.g. 0.5",
            "error storm_max_ratio: storm_max_ratio (1.5) must be in (0, 1]: it is the share of all"
            " offices DOWN"
            " at once that means a storm — e.g. 0.25",
        ],
        id="ratios out of range",
    ),
    pytest.param(
        {"anti_flap_block_s": 10},
        [
            "error anti_flap_block_s: anti_flap_block_s (10) is shorter than hold_down_s (30): the"
            " block would end"
            " before a new closure could be confirmed — raise anti_flap_block_s to at least 30"
        ],
        id="anti-flap block shorter than hold-down",
    ),
    pytest.param({"run_timeout_s": 269.9}, [], id="just inside the confirm margin"),
]


@pytest.mark.parametrize(("values", "expected"), TIMING_CASES)
def test_policy_timing_combinations(values: dict[str, float], expected: list[str]) -> None:
    """Unsafe timing combinations are named with their values and the reason, never adjusted."""
    found = check_policy(dataclasses.replace(Policy(), **values))
    assert expected == [f"{f.severity} {f.fields[0]}: {f.message} — {f.hint}" for f in found]


def test_timing_problem_points_at_the_line_of_the_value(tmp_path: Path) -> None:
    """The refusal is reported at the policy line that holds the first value named."""
    path = write(tmp_path, MINIMAL + "policy:\n  poll_interval_s: 10\n  hold_down_s: 15\n")
    assert [(4, "policy", "error")] == [(p.line, p.where, p.severity) for p in read_config(path).problems]
    with pytest.raises(ConfigError):
        load_config(path)


def test_poll_interval_must_outlast_the_slowest_snmp_probe() -> None:
    """A probe of timeout × (retries + 1) longer than the poll interval is refused, naming the device."""
    slow = Device("olt-1", "alpha", "olt", "10.0.0.9", snmp=SnmpSettings(timeout_s=3.0, retries=3))
    fast = Device("core-1", "alpha", "core", "10.0.0.1", snmp=SnmpSettings(timeout_s=2.0, retries=1))
    inventory = Inventory(offices={}, devices={"olt-1": slow, "core-1": fast})
    finding = check_probe_time(Policy(poll_interval_s=10.0), inventory)
    assert finding is not None
    assert (
        "poll_interval_s (10) is shorter than the SNMP probe time of 1 device(s): timeout_s × (retries + 1)"
        " = 3 × 4 = 12 s for olt-1 (the longest)"
    ) == finding.message
    assert check_probe_time(Policy(poll_interval_s=12.0), inventory) is None
