"""A real browser for page tests: Debian's Chromium, headless, driven by Debian's chromedriver
over the W3C WebDriver protocol (plain JSON over HTTP on loopback, so the client is urllib).

Chromium gets a fresh, empty profile and the flags that keep it off the network (no background
networking, component updates, sync, QUIC, proxy), as this machine needs: the only pages it
loads are the ones a test opens on 127.0.0.1. `Browser` is a context manager: leaving it ends
the WebDriver session (which quits Chromium) and stops chromedriver's process group.
"""

from __future__ import annotations

import base64
import contextlib
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from tests.peers.util import PeerProcess, free_port, require_binary

T = TypeVar("T")

CHROMIUM_PATHS = ("/usr/bin/chromium",)
CHROMEDRIVER_PATHS = ("/usr/bin/chromedriver",)
START_TIMEOUT_S = 60.0
COMMAND_TIMEOUT_S = 60.0
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",  # the tests run as root, where Chromium's sandbox cannot start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--no-proxy-server",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
)


class WebDriverError(RuntimeError):
    """chromedriver answered with an error (its message), or did not answer."""


class Browser:
    """One headless Chromium window of `width` x `height`, driven over WebDriver."""

    def __init__(self, workdir: Path, *, width: int = 1920, height: int = 1080) -> None:
        self.chromium = require_binary("chromium", "chromium", paths=CHROMIUM_PATHS)
        self.chromedriver = require_binary("chromedriver", "chromium-driver", paths=CHROMEDRIVER_PATHS)
        self.workdir = workdir
        self.size = (width, height)
        self.port = free_port()
        self.session: str | None = None
        self.process = PeerProcess(
            "chromedriver",
            [
                self.chromedriver,
                f"--port={self.port}",
                "--allowed-ips=127.0.0.1",
                f"--log-path={workdir / 'chromedriver.log'}",
            ],
            workdir / "chromedriver-out.log",
        )

    # --- life cycle

    def __enter__(self) -> Browser:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        self.process.spawn()
        self.process.wait_ready(self._driver_ready, START_TIMEOUT_S, "chromedriver answers /status")
        profile = self.workdir / "chromium-profile"
        profile.mkdir(parents=True, exist_ok=True)
        width, height = self.size
        capabilities = {
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "pageLoadStrategy": "normal",
                    "goog:chromeOptions": {
                        "binary": self.chromium,
                        "args": [
                            *CHROMIUM_FLAGS,
                            f"--user-data-dir={profile}",
                            f"--window-size={width},{height}",
                        ],
                    },
                }
            }
        }
        answer = self._call("POST", "/session", capabilities)
        self.session = str(answer["sessionId"])

    def stop(self) -> None:
        try:
            if self.session is not None:
                with contextlib.suppress(WebDriverError, OSError):
                    self._call("DELETE", f"/session/{self.session}", timeout_s=15.0)
                self.session = None
        finally:
            self.process.stop(timeout_s=10.0)

    def _driver_ready(self) -> bool:
        try:
            return bool(self._call("GET", "/status", timeout_s=2.0).get("ready"))
        except (WebDriverError, OSError):
            return False

    # --- what a test does

    def open(self, url: str) -> None:
        """Navigate to `url` and wait for it to load."""
        self._session_call("POST", "/url", {"url": url})

    @property
    def url(self) -> str:
        return str(self._session_call("GET", "/url"))

    def run(self, script: str, *args: Any) -> Any:
        """Run `script` (a function body: `return ...`) in the page; its JSON-able result."""
        return self._session_call("POST", "/execute/sync", {"script": script, "args": list(args)})

    def text(self) -> str:
        return str(self.run("return document.body ? document.body.innerText : ''"))

    def screenshot(self, path: Path) -> Path:
        """A PNG of the window, saved at `path`."""
        data = self._session_call("GET", "/screenshot")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(str(data)))
        return path

    def cookies(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self._session_call("GET", "/cookie")
        return found

    def wait_for(self, condition: Callable[[], T | None], timeout_s: float, what: str) -> T:
        """Poll `condition` (usually a `run(...)`) until truthy; AssertionError with the last value."""
        deadline = time.monotonic() + timeout_s
        last: T | None = None
        while True:
            last = condition()
            if last:
                return last
            if time.monotonic() >= deadline:
                raise AssertionError(f"timed out after {timeout_s} s waiting for {what} (last: {last!r})")
            time.sleep(0.1)

    # --- WebDriver over HTTP

    def _session_call(self, method: str, path: str, body: Any = None) -> Any:
        if self.session is None:
            raise WebDriverError("no WebDriver session (start() first)")
        return self._call(method, f"/session/{self.session}{path}", body)

    def _call(self, method: str, path: str, body: Any = None, timeout_s: float = COMMAND_TIMEOUT_S) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json"} if data is not None else {},
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout_s) as response:  # noqa: S310 - loopback
                raw = response.read()
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                value = json.loads(raw).get("value", {})
                message = f"{value.get('error')}: {value.get('message', '').splitlines()[0]}"
            except (ValueError, AttributeError, IndexError):
                message = raw.decode(errors="replace")[:300]
            raise WebDriverError(f"{method} {path}: HTTP {exc.code}: {message}") from None
        return json.loads(raw).get("value") if raw else None


@contextlib.contextmanager
def browser(workdir: Path, *, width: int = 1920, height: int = 1080) -> Iterator[Browser]:
    """A started `Browser`, always stopped (chromedriver and Chromium) when the block ends."""
    workdir.mkdir(parents=True, exist_ok=True)
    with Browser(workdir, width=width, height=height) as started:
        yield started
