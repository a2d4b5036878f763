"""Credentials: parsed from references, resolved only where they are used, never shown.

Inventory and baton.yaml hold only references, never secrets:

    env:NAME           the environment variable NAME
    file:PATH          a file; a relative PATH is relative to the inventory (or baton.yaml's) directory
    credential:NAME    the file NAME in systemd's $CREDENTIALS_DIRECTORY (LoadCredential=), for production

Errors name the reference and the cause, never the value. `Secret` wraps a resolved value so that
an accidental log line or repr prints `***`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal, cast

from baton.core.model import SecretRef
from baton.logs import remember_secret

KINDS = ("env", "file", "credential")
REFERENCE_HINT = (
    "write a reference instead: 'env:NAME', 'file:PATH' or 'credential:NAME' (systemd LoadCredential=)"
)


class SecretError(Exception):
    """A credential reference cannot be parsed or resolved. The message never contains a value."""


class Secret:
    """A resolved credential. `str()` and `repr()` show `***`; `reveal()` is the only way in."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    def __str__(self) -> str:
        return "***"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def is_reference(text: str) -> bool:
    kind, sep, name = text.partition(":")
    return bool(sep) and kind in KINDS and bool(name.strip())


def parse_ref(text: str) -> SecretRef:
    """`"env:SNMP_COMMUNITY"` → SecretRef("env", "SNMP_COMMUNITY"); the error never repeats `text`."""
    if not is_reference(text):
        raise SecretError(f"not a credential reference; {REFERENCE_HINT}")
    kind, _, name = text.partition(":")
    if kind == "credential" and ("/" in name or name in (".", "..")):
        raise SecretError("a credential name is a file name in $CREDENTIALS_DIRECTORY, without '/'")
    return SecretRef(cast(Literal["env", "file", "credential"], kind), name.strip())


def locate(ref: SecretRef, *, base_dir: Path | None = None, environ: Mapping[str, str] | None = None) -> Path:
    """The file a `file:` or `credential:` reference points to."""
    env = os.environ if environ is None else environ
    if ref.kind == "file":
        path = Path(ref.name).expanduser()
        return path if path.is_absolute() or base_dir is None else base_dir / path
    if ref.kind == "credential":
        directory = env.get("CREDENTIALS_DIRECTORY")
        if not directory:
            raise SecretError(
                f"{ref}: $CREDENTIALS_DIRECTORY is not set (systemd sets it for units with LoadCredential=)"
            )
        return Path(directory) / ref.name
    raise SecretError(f"{ref}: not a file reference")


def resolve(ref: SecretRef, *, base_dir: Path | None = None, environ: Mapping[str, str] | None = None) -> str:
    """The value `ref` points to; from a file, with one trailing newline removed."""
    env = os.environ if environ is None else environ
    if ref.kind == "env":
        value = env.get(ref.name)
        if value is None:
            raise SecretError(f"{ref}: environment variable {ref.name} is not set")
        remember_secret(value)
        return value
    path = locate(ref, base_dir=base_dir, environ=env)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SecretError(f"{ref}: file {path} does not exist") from None
    except PermissionError:
        raise SecretError(f"{ref}: file {path} is not readable (permission denied)") from None
    except IsADirectoryError:
        raise SecretError(f"{ref}: {path} is a directory, not a file") from None
    except UnicodeDecodeError:
        raise SecretError(f"{ref}: file {path} is not UTF-8 text") from None
    except OSError as exc:
        raise SecretError(f"{ref}: cannot read {path}: {exc.strerror}") from None
    value = text.removesuffix("\n")
    remember_secret(value)
    return value


def resolve_secret(
    ref: SecretRef, *, base_dir: Path | None = None, environ: Mapping[str, str] | None = None
) -> Secret:
    return Secret(resolve(ref, base_dir=base_dir, environ=environ))


def check(ref: SecretRef, *, base_dir: Path | None = None, environ: Mapping[str, str] | None = None) -> None:
    """Raise SecretError if `ref` does not resolve to a non-empty value; the value is dropped at once."""
    if not resolve(ref, base_dir=base_dir, environ=environ):
        raise SecretError(f"{ref}: resolves to an empty value")
