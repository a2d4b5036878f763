"""Baton: network failover orchestration for telecom central offices."""

__version__ = "0.1.0"
