"""Pinned SSH host keys: parsing the inventory's `host_key`, fingerprints, known_hosts lines.

The inventory pins one public key per device ("ssh-ed25519 AAAA..."); both the NETCONF and
the SSH adapters (asyncssh, `baton.adapters.ssh.open_connection`) verify the server against it. Fingerprints
are OpenSSH's "SHA256:<base64 without padding>" form, what `ssh-keygen -lf` prints, so operators
can compare them with what the device shows.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from dataclasses import dataclass


class HostKeyFormatError(ValueError):
    """The pinned key text is not "<type> <base64 blob>" with a blob of that type."""


@dataclass(frozen=True, slots=True)
class PinnedKey:
    algorithm: str  # "ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", ...
    blob: bytes  # the SSH wire-format public key

    @property
    def b64(self) -> str:
        return base64.b64encode(self.blob).decode("ascii")

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.blob)

    def openssh(self) -> str:
        """The key as "<type> <base64>" (the inventory's format)."""
        return f"{self.algorithm} {self.b64}"

    def __str__(self) -> str:
        return f"{self.algorithm} {self.fingerprint}"


def fingerprint(blob: bytes) -> str:
    """OpenSSH SHA256 fingerprint of a wire-format public key."""
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode("ascii").rstrip("=")
    return f"SHA256:{digest}"


def parse_pinned_key(text: str) -> PinnedKey:
    """Parse "<type> <base64> [comment]"; the blob's own type name must match <type>."""
    fields = text.split()
    if len(fields) < 2:
        raise HostKeyFormatError(f"expected '<type> <base64>', got {len(fields)} field(s)")
    algorithm, b64 = fields[0], fields[1]
    try:
        blob = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise HostKeyFormatError(f"{algorithm} key is not valid base64: {exc}") from None
    # The blob starts with its own type name (RFC 4253 §6.6): a mismatch means a pasting error.
    if len(blob) < 4:
        raise HostKeyFormatError(f"{algorithm} key blob is too short")
    (name_len,) = struct.unpack(">I", blob[:4])
    embedded = blob[4 : 4 + name_len].decode("ascii", errors="replace")
    if embedded != algorithm:
        raise HostKeyFormatError(f"key type {algorithm!r} does not match its blob's type {embedded!r}")
    return PinnedKey(algorithm, blob)


def known_hosts_entry(host: str, port: int, key: PinnedKey) -> str:
    """One known_hosts line for host:port (OpenSSH brackets every port but 22)."""
    pattern = host if port == 22 else f"[{host}]:{port}"
    return f"{pattern} {key.openssh()}"
