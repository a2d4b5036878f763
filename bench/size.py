"""How big and how branchy the run layer is, against the code the run-layer issue was filed on.

    .venv/bin/pip install radon          # once: radon is a measuring tool, not a dependency
    .venv/bin/python bench/size.py       # runner + progress now, against runner + recovery at 37ac8da
    options: --before REV (the commit to compare with), --paths A B ... (the files now)

Figures from radon (https://radon.readthedocs.io): SLOC = lines of code (no blank, comment or
docstring lines, as cloc counts them), LLOC = logical lines (statements), CC = McCabe cyclomatic
complexity summed over every function and method, and the largest. Also the tests of a step's
type (`isinstance(x, NetconfEdit)` and the like) in the runner, recovery, dry run and planning:
the issue asked that they ask the step instead.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BEFORE = "37ac8dabe34591277a6cc45b71be2b2d3b9d8683"  # the commit the issue was filed on
BEFORE_PATHS = ("daemon/baton/playbook/runner.py", "daemon/baton/playbook/recovery.py")
NOW_PATHS = ("daemon/baton/playbook/runner.py", "daemon/baton/playbook/progress.py")
KIND_TESTS = ("runner.py", "recovery.py", "progress.py", "dryrun.py", "plan.py")
STEP_KIND = re.compile(r"isinstance\([^,]+,\s*\(?\s*(Netconf|Ssh|Snmp|Wait)\w*")


def measure(sources: dict[str, str]) -> dict[str, float]:
    from radon.complexity import cc_visit
    from radon.raw import analyze

    figures = {"files": len(sources), "LOC": 0, "SLOC": 0, "LLOC": 0, "CC": 0, "CC max": 0, "functions": 0}
    for text in sources.values():
        raw = analyze(text)
        figures["LOC"] += raw.loc
        figures["SLOC"] += raw.sloc
        figures["LLOC"] += raw.lloc
        # cc_visit lists every function and method (with its closures) once, and classes beside
        blocks = [b for b in cc_visit(text) if not hasattr(b, "methods")]
        figures["CC"] += sum(b.complexity for b in blocks)
        figures["CC max"] = max([figures["CC max"], *(b.complexity for b in blocks)])
        figures["functions"] += len(blocks)
    return figures


def kind_tests(sources: dict[str, str]) -> int:
    return sum(len(STEP_KIND.findall(text)) for text in sources.values())


def at(rev: str, paths: tuple[str, ...]) -> dict[str, str]:
    return {
        p: subprocess.run(
            ["git", "show", f"{rev}:{p}"], cwd=ROOT, check=True, capture_output=True, text=True
        ).stdout
        for p in paths
    }


def playbook_files(rev: str | None) -> dict[str, str]:
    if rev is None:
        return {
            p.name: p.read_text()
            for p in (ROOT / "daemon/baton/playbook").glob("*.py")
            if p.name in KIND_TESTS
        }
    listing = subprocess.run(
        ["git", "ls-tree", "--name-only", rev, "daemon/baton/playbook/"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    return at(rev, tuple(p for p in listing if Path(p).name in KIND_TESTS))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default=BEFORE)
    parser.add_argument("--paths", nargs="+", default=list(NOW_PATHS))
    args = parser.parse_args()
    try:
        import radon  # noqa: F401
    except ImportError:
        print("bench/size.py needs radon: .venv/bin/pip install radon", file=sys.stderr)
        return 2
    before = measure(at(args.before, BEFORE_PATHS))
    now = measure({p: (ROOT / p).read_text() for p in args.paths})
    before["step-type tests"] = kind_tests(playbook_files(args.before))
    now["step-type tests"] = kind_tests(playbook_files(None))
    print(f"{'':16} {'before ' + args.before[:7]:>16} {'now':>10} {'now/before':>11}")
    print(f"{'':16} {'runner+recovery':>16} {'runner+progress':>10}")
    for key in before:
        ratio = f"{now[key] / before[key]:.3f}" if before[key] else "-"
        print(f"{key:16} {before[key]:>16g} {now[key]:>10g} {ratio:>11}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
