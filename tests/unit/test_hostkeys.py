"""Pinned host keys: parsing, OpenSSH fingerprints, known_hosts lines (no network)."""

from __future__ import annotations

import pytest

from baton.adapters.hostkeys import HostKeyFormatError, fingerprint, known_hosts_entry, parse_pinned_key

# Made with `ssh-keygen -t ed25519` / `-t ecdsa`; fingerprints as `ssh-keygen -lf` printed them.
ED25519 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIj4quUiuYYwxY7J2a5QrFhZTAgbNq6luAV1AgNQmA7+"
ED25519_FP = "SHA256:46lMJySg5cs4N0+KFcTrLshnHHF/69MgK59HYqzZpi4"
ECDSA = (
    "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBHxwCT4OOvYwx9xZkWEHGpeocH1Wn698"
    "UDqYISlYtopW42gYieKyKwndWIyIVA12sb1fz6kDZkha3H8DB2/xVMc="
)
ECDSA_FP = "SHA256:PRccXFo/cruaschVZ/nXK2hrYsEew7IKVy4WESCfxJo"


@pytest.mark.parametrize(("text", "expected"), [(ED25519, ED25519_FP), (ECDSA, ECDSA_FP)])
def test_fingerprint_matches_ssh_keygen(text: str, expected: str) -> None:
    """The fingerprint is the one `ssh-keygen -lf` shows for the same key."""
    assert expected == parse_pinned_key(text).fingerprint


def test_comment_is_ignored_and_round_trips() -> None:
    """A trailing comment is dropped; the key prints back as "<type> <base64>"."""
    key = parse_pinned_key(ED25519 + " noc@gc-core-1")
    assert (ED25519, f"ssh-ed25519 {ED25519_FP}") == (key.openssh(), str(key))
    assert ED25519_FP == fingerprint(key.blob)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "expected '<type> <base64>', got 0 field"),
        ("ssh-ed25519", "expected '<type> <base64>', got 1 field"),
        ("ssh-ed25519 not*base64", "ssh-ed25519 key is not valid base64"),
        ("ssh-rsa " + ED25519.split()[1], "key type 'ssh-rsa' does not match its blob's type 'ssh-ed25519'"),
        ("ssh-ed25519 AAAA", "ssh-ed25519 key blob is too short"),
    ],
)
def test_malformed_keys_are_rejected(text: str, message: str) -> None:
    """A key that is not "<type> <base64 blob of that type>" is refused with the reason."""
    with pytest.raises(HostKeyFormatError, match=message.replace("(", r"\(").replace("*", r"\*")):
        parse_pinned_key(text)


@pytest.mark.parametrize(
    ("host", "port", "expected"),
    [
        ("10.1.0.1", 830, f"[10.1.0.1]:830 {ED25519}"),
        ("10.1.0.1", 22, f"10.1.0.1 {ED25519}"),
        ("2001:db8::1", 830, f"[2001:db8::1]:830 {ED25519}"),
    ],
)
def test_known_hosts_entry(host: str, port: int, expected: str) -> None:
    """known_hosts lines bracket host:port except on port 22, as OpenSSH writes them."""
    assert expected == known_hosts_entry(host, port, parse_pinned_key(ED25519))
