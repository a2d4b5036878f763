"""Fixture plug-ins: real protocol peers (tests/peers/) and the lab (tests/lab_fixtures.py)."""

pytest_plugins = ["tests.peers.fixtures", "tests.lab_fixtures"]
