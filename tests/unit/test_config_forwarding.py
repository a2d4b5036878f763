"""baton.yaml's `api:` for several vantages: what forwarding a follower's commands to the leader
needs (api.tcp_listen and the vantages' api.peer_token), said clearly when it is missing."""

from __future__ import annotations

from pathlib import Path

import pytest

from baton.config import read_config
from baton.core.model import SecretRef

VANTAGE = "vantage: {id: v1, office: alpha}\n"
ETCD = "etcd: {endpoints: ['http://127.0.0.1:2379'], vantages: [v1, v2, v3]}\n"


def problems(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "baton.yaml"
    path.write_text(text)
    (tmp_path / "peer-token").write_text("peer-credential\n")
    (tmp_path / "ops-token").write_text("ops-credential\n")
    return [str(p).removeprefix(f"{path}:") for p in read_config(path).problems]


def test_a_vantage_with_the_listener_and_the_credential_forwards_silently(tmp_path: Path) -> None:
    text = (
        VANTAGE
        + ETCD
        + "api: {tcp_listen: 127.0.0.1:8443, tokens: [file:ops-token], peer_token: file:peer-token}\n"
    )
    assert [] == problems(tmp_path, text)
    path = tmp_path / "baton.yaml"
    config = read_config(path).config
    assert config is not None
    assert SecretRef("file", str(tmp_path / "peer-token")) == config.api.peer_token


def test_without_the_credential_a_follower_refuses_and_validation_says_so(tmp_path: Path) -> None:
    """A warning, not an error: refusing (naming the leader) is safe, and an upgrade must not
    stop a vantage from starting."""
    text = VANTAGE + ETCD + "api: {tcp_listen: 127.0.0.1:8443, tokens: [file:ops-token]}\n"
    assert [
        "3: warning: api: with etcd and no api.peer_token, a command given on this vantage while it "
        "follows is refused (naming the leader and its address), not forwarded to the leader — set "
        "api.peer_token: file:/etc/baton/credentials/peer-token, the same credential on every vantage"
    ] == problems(tmp_path, text)


def test_without_a_tcp_listener_nobody_can_forward_to_this_vantage(tmp_path: Path) -> None:
    assert [
        "2: warning: etcd: with etcd, this vantage's API has no TCP listener (api.tcp_listen): when it "
        "leads, a command given on another vantage can neither be forwarded to it nor be told where it "
        "is — set api.tcp_listen to an address the other vantages reach, and api.peer_token"
    ] == problems(tmp_path, VANTAGE + ETCD)


def test_the_credential_without_a_listener_is_an_error(tmp_path: Path) -> None:
    text = VANTAGE + ETCD + "api: {peer_token: file:peer-token}\n"
    assert [
        "3: api.peer_token: api.peer_token is set but api.tcp_listen is not: when this vantage leads, "
        "the others cannot forward commands to it — set api.tcp_listen to an address the other vantages "
        "reach, or remove api.peer_token",
        "3: warning: api: with etcd, this vantage's API has no TCP listener (api.tcp_listen): when it "
        "leads, a command given on another vantage can neither be forwarded to it nor be told where it "
        "is — set api.tcp_listen to an address the other vantages reach, and api.peer_token",
    ] == problems(tmp_path, text)


def test_an_address_on_every_interface_cannot_be_forwarded_to(tmp_path: Path) -> None:
    text = (
        VANTAGE
        + ETCD
        + "api: {tcp_listen: 0.0.0.0:8443, tokens: [file:ops-token], peer_token: file:peer-token, "
        "tls_cert: c.pem, tls_key: k.pem}\n"
    )
    [problem] = problems(tmp_path, text)
    assert problem.startswith("3: warning: api.tcp_listen: the other vantages are given api.tcp_listen")
    assert "an address on every interface is not one they can reach" in problem


@pytest.mark.parametrize(
    ("api", "expected"),
    [
        (
            "{tcp_listen: 127.0.0.1:8443, tokens: [file:ops-token], peer_token: file:ops-token}",
            "api.peer_token is also one of api.tokens: whoever holds that operator token could act as any "
            "operator — give the vantages a credential of their own, used for nothing else",
        ),
        (
            "{tcp_listen: 127.0.0.1:8443, tokens: [file:ops-token], peer_ca: ca.pem}",
            "api.peer_ca goes with api.peer_token — set both, or neither",
        ),
        (
            "{tcp_listen: 127.0.0.1:8443, tokens: [file:ops-token], peer_token: file:peer-token, "
            "peer_ca: ca.pem}",
            "api.peer_ca verifies the leader's TLS certificate, but this vantage's API has no TLS",
        ),
        (
            "{tcp_listen: 127.0.0.1:8443, tokens: [file:ops-token], peer_token: file:missing}",
            "cannot resolve file:",
        ),
    ],
)
def test_forwarding_settings_that_cannot_work_are_errors(tmp_path: Path, api: str, expected: str) -> None:
    found = [p for p in problems(tmp_path, VANTAGE + ETCD + f"api: {api}\n") if "warning" not in p]
    assert 1 == len(found), found
    assert expected in found[0]


def test_the_credential_without_etcd_is_unused_and_said_so(tmp_path: Path) -> None:
    text = (
        VANTAGE + "api: {tcp_listen: 127.0.0.1:8443, tokens: [file:ops-token], peer_token: file:peer-token}\n"
    )
    assert [
        "2: warning: api.peer_token: api.peer_token has no use without etcd: this vantage leads alone, "
        "nothing is forwarded — remove api.peer_token, or configure etcd: for several vantages"
    ] == problems(tmp_path, text)


def test_a_tcp_api_for_the_vantages_alone_needs_no_operator_token(tmp_path: Path) -> None:
    """Operators on the unix socket, the vantages on TCP with their credential: no error."""
    text = VANTAGE + ETCD + "api: {tcp_listen: 127.0.0.1:8443, peer_token: file:peer-token}\n"
    assert [] == problems(tmp_path, text)


def test_a_listener_on_every_interface_with_an_advertised_address_forwards_silently(tmp_path: Path) -> None:
    text = (
        VANTAGE
        + ETCD
        + "api: {tcp_listen: 0.0.0.0:8443, advertise: 10.0.1.21:8443, tokens: [file:ops-token],"
        " peer_token: file:peer-token}\n"
    )
    found = problems(tmp_path, text)
    assert [p for p in found if "without TLS" not in p] == []  # (clear text beyond loopback: a warning)
    config = read_config(tmp_path / "baton.yaml").config
    assert config is not None
    assert "10.0.1.21:8443" == config.api.advertise


def test_an_advertised_address_without_a_listener_is_an_error(tmp_path: Path) -> None:
    text = VANTAGE + ETCD + "api: {advertise: 10.0.1.21:8443}\n"
    found = problems(tmp_path, text)
    assert any("api.advertise is set but api.tcp_listen is not" in p for p in found), found
