"""Requests to the API's unix socket from another process, as whoever runs it (stdlib only).

    python api_as_user.py SOCKET '[["GET", "/v1/status", null], ["POST", "/v1/pause", {"reason": "x"}]]'

prints one JSON line: [[status, body], ...] in the same order. The tests run it as other local
users (`tests.peers.users.as_user`), so the daemon sees their real peer credentials.
"""

from __future__ import annotations

import http.client
import json
import socket
import sys
from typing import Any


class _Unix(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=10)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(10)
        sock.connect(self._path)
        self.sock = sock


def main(argv: list[str]) -> int:
    path, requests = argv[1], json.loads(argv[2])
    results: list[Any] = []
    for method, target, body in requests:
        connection = _Unix(path)
        try:
            payload = None if body is None else json.dumps(body).encode()
            headers = {"Content-Type": "application/json"} if payload is not None else {}
            connection.request(method, target, body=payload, headers=headers)
            response = connection.getresponse()
            raw = response.read()
            results.append([response.status, json.loads(raw) if raw else None])
        except PermissionError:
            results.append([-1, "permission denied"])
        finally:
            connection.close()
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
