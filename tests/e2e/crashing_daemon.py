"""`baton daemon` that SIGKILLs itself at a chosen journal write: the crash-point campaign's probe.

    python -m tests.e2e.crashing_daemon CONFIG

Environment:
  BATON_CRASH_AT     "after:N" or "before:N": die right after (or right before) the N-th journal
                     write counted since arming; "after:LABEL" / "before:LABEL" (a write's
                     label, e.g. "decide"): at the first such write; "before:LABEL+N": at the
                     N-th write after it; unset: never die
  BATON_WRITES_LOG   a file: one line "N when label" per counted write (how the test learns K)

Counting starts at SIGUSR1 (the test sends it right before the command whose run it studies),
so writes of the start-up do not shift the points. A test program, not part of Baton: Baton's
own code takes the hook as a parameter (`Service(journal_hook=...)`).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from baton import logs
from baton.service import Service


def main(config: str) -> int:
    crash_at = os.environ.get("BATON_CRASH_AT")
    when_crash, _, n_crash = (crash_at or ":").partition(":")
    target = int(n_crash) if n_crash.isdigit() else None
    label_crash, _, later = (n_crash if n_crash and target is None else "").partition("+")
    seen_label: int | None = None  # the count at the first write labelled `label_crash`
    writes_log = os.environ.get("BATON_WRITES_LOG")
    armed = False
    count = 0

    def arm(_signum: int, _frame: object) -> None:
        nonlocal armed, count
        armed, count = True, 0

    def hook(when: str, _n: int, label: str) -> None:
        nonlocal count, seen_label
        if not armed:
            return
        if when == "before":
            count += 1
            if writes_log:
                with Path(writes_log).open("a") as f:
                    f.write(f"{count} {label}\n")
            if label_crash and label == label_crash and seen_label is None:
                seen_label = count
        if when != when_crash:
            return
        if target is not None and count == target:
            os.kill(os.getpid(), signal.SIGKILL)
        if seen_label is not None and count == seen_label + int(later or 0):
            os.kill(os.getpid(), signal.SIGKILL)

    signal.signal(signal.SIGUSR1, arm)
    logs.configure(json=True, level="info")
    return asyncio.run(Service(Path(config), journal_hook=hook).run())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
