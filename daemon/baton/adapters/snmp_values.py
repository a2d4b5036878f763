"""`SnmpValue`: a varbind value with the SNMP library stripped off (shared by both codecs)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SnmpValue:
    """A varbind value with pysnmp stripped off: its SMI type name and a plain Python value.

    `value` is an int for integer types, a str for strings (UTF-8 text, else "0x" hex), IP
    addresses and OIDs, and None for noSuchObject/noSuchInstance/endOfMibView.
    """

    type: str
    value: int | str | None

    @property
    def is_int(self) -> bool:
        return isinstance(self.value, int)

    @property
    def is_absent(self) -> bool:
        return self.value is None

    def describe(self) -> str:
        return self.type if self.value is None else f"{self.type} {self.value!r}"
