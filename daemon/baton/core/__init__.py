"""Baton's pure decision core: no I/O, no asyncio, no clock reads, no logging."""
