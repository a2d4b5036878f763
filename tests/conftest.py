"""Fixture plug-ins: real protocol peers (tests/peers/) and the lab (tests/lab_fixtures.py)."""

import pytest

pytest_plugins = ["tests.peers.fixtures", "tests.lab_fixtures"]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """What tests measured (`record_property("figure", ...)`), shown even when they pass: the
    crash campaign's K, takeover times..."""
    figures = [
        f"{report.nodeid}: {value}"
        for report in terminalreporter.stats.get("passed", [])
        for key, value in getattr(report, "user_properties", ())
        if key == "figure"
    ]
    if figures:
        terminalreporter.section("figures")
        for line in figures:
            terminalreporter.write_line(line)
