"""Probes leave from a vantage's own address (`vantage.source_address`): the SNMP clients bind
their socket of that address's family to it, and leave the other family's to the kernel."""

from __future__ import annotations

import socket

import pytest

from baton.adapters.snmp_fast import SourceAddressError, V2cClient
from baton.adapters.snmp_v3 import V3Client


async def test_the_v2c_and_v3_sockets_are_bound_to_the_source_address() -> None:
    """Given 127.0.0.12, the IPv4 socket of each client is bound to it (any port)."""
    for client in (V2cClient("127.0.0.12"), V3Client(source_address="127.0.0.12")):
        try:
            transport = await client._transport(socket.AF_INET)
            assert "127.0.0.12" == transport.get_extra_info("sockname")[0]
        finally:
            client._close_transports()


async def test_without_a_source_address_or_for_the_other_family_the_kernel_picks() -> None:
    """No source address: bound to any; an IPv6 source leaves the IPv4 socket unbound too."""
    for client in (V2cClient(), V2cClient("::1")):
        try:
            transport = await client._transport(socket.AF_INET)
            assert "0.0.0.0" == transport.get_extra_info("sockname")[0]
        finally:
            client._close_transports()


async def test_an_address_this_host_does_not_have_is_named_in_the_failure() -> None:
    """A source address that is not this host's: the failure says so (what a probe reports), and
    the next request tries to bind again instead of keeping the failure."""
    client = V2cClient("192.0.2.1")  # TEST-NET-1: on no interface here
    try:
        for _ in range(2):
            with pytest.raises(SourceAddressError, match=r"cannot bind source address 192\.0\.2\.1: "):
                await client._transport(socket.AF_INET)
    finally:
        client._close_transports()
