"""Local users and groups for tests that need real peer credentials, and running code as them.

`ensure_users` creates system users (no home, no login shell) and groups once per machine, all
named `baton-t-*`, under a lock (tests of several modules may run at once); they are left in
place like the SSH test user. `as_user(name)` is the command prefix that runs the next argv as
that user — `setpriv` with the user's uid, gid and supplementary groups from /etc/group — with a
Python that user can execute and that imports Baton (this checkout, these dependencies).
"""

from __future__ import annotations

import contextlib
import fcntl
import grp
import os
import pwd
import shutil
import sys
import sysconfig
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from tests.peers.util import require_binary, require_root, run_checked, skip_or_fail

REPO = Path(__file__).resolve().parents[2]
PREFIX = "baton-t-"


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    Path("/run/lock").mkdir(parents=True, exist_ok=True)
    with open("/run/lock/baton-test-users.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_users(users: Mapping[str, Sequence[str]]) -> None:
    """Each user (with its own group) exists and is in exactly the given extra groups."""
    require_root("local test users")
    for tool in ("useradd", "groupadd", "usermod", "setpriv"):
        require_binary(tool, "passwd" if tool != "setpriv" else "util-linux")
    for name in [*users, *(g for groups in users.values() for g in groups)]:
        assert name.startswith(PREFIX), f"test users and groups are named {PREFIX}*: {name}"
    with _locked():
        for group in sorted({g for groups in users.values() for g in groups}):
            try:
                grp.getgrnam(group)
            except KeyError:
                run_checked(["groupadd", "--system", group])
        for user, groups in users.items():
            try:
                pwd.getpwnam(user)
            except KeyError:
                run_checked(
                    [
                        "useradd",
                        "--system",
                        "--no-create-home",
                        "--home-dir",
                        "/nonexistent",
                        "--shell",
                        "/usr/sbin/nologin",
                        "--user-group",
                        user,
                    ]
                )
            run_checked(["usermod", "--groups", ",".join(groups), user])


def python_for_others() -> str:
    """An interpreter of this Python version that any user may execute."""
    candidates = [sys.executable, os.path.realpath(sys.executable), shutil.which("python3") or ""]
    candidates += [f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"]
    found = next((c for c in candidates if c and Path(c).exists() and _world_executable(Path(c))), None)
    if found is None:
        skip_or_fail(f"no Python {sys.version_info.major}.{sys.version_info.minor} that other users can run")
    return found


def _world_executable(path: Path) -> bool:
    real = path.resolve()
    if not real.stat().st_mode & 0o001:
        return False
    return all(parent.stat().st_mode & 0o001 for parent in real.parents)


def as_user(user: str) -> list[str]:
    """argv prefix: run the rest as `user`, with Python able to import Baton and its dependencies."""
    entry = pwd.getpwnam(user)
    path = os.pathsep.join([str(REPO / "daemon"), str(REPO), sysconfig.get_paths()["purelib"]])
    return [
        "setpriv",
        f"--reuid={entry.pw_uid}",
        f"--regid={entry.pw_gid}",
        "--init-groups",
        "env",
        "-i",
        "PATH=/usr/bin:/bin",
        "LANG=C.UTF-8",
        f"PYTHONPATH={path}",
        "PYTHONDONTWRITEBYTECODE=1",
        python_for_others(),
    ]
