"""Code run in a kernel of a user's server, over the Jupyter kernel protocol.

REST to start the kernel, then its channels websocket to execute, through the proxy.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass

import requests
import websocket

from .hub import Hub


class Kernel:
    """A kernel in a user's server, reached through the proxy like JupyterLab does."""

    def __init__(self, hub: Hub, user: str, token: str | None = None):
        self.base = f"{hub.url}/user/{user}"
        self.token = token or hub.user_token(user)
        self.headers = {"Authorization": f"token {self.token}"}
        r = requests.post(f"{self.base}/api/kernels", headers=self.headers, json={}, timeout=60)
        r.raise_for_status()
        self.id = r.json()["id"]
        self.ws = None
        self._connect()

    def _connect(self) -> None:
        """(Re)open the channels websocket; the server drops sockets left unread for long."""
        ws_url = f"ws{self.base[4:]}/api/kernels/{self.id}/channels"
        self.ws = websocket.create_connection(ws_url, header=[f"Authorization: token {self.token}"], timeout=120)

    def execute(self, code: str, timeout: float = 120) -> Execution:
        msg_id = uuid.uuid4().hex
        if not self.ws.connected:
            self._connect()
        try:
            self.ws.ping()
        except websocket.WebSocketException:
            self._connect()
        self.ws.send(
            json.dumps(
                {
                    "header": {
                        "msg_id": msg_id,
                        "msg_type": "execute_request",
                        "username": "test",
                        "session": uuid.uuid4().hex,
                        "version": "5.3",
                    },
                    "parent_header": {},
                    "metadata": {},
                    "content": {"code": code, "silent": False, "store_history": False,
                                "user_expressions": {}, "allow_stdin": False},
                    "channel": "shell",
                    "buffers": [],
                }
            )
        )
        out, error, status, idle = [], None, None, False
        deadline = time.monotonic() + timeout
        # the shell reply and the iopub "idle" status come on different channels,
        # in either order: done when both have arrived
        while status is None or not idle:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no reply within {timeout}s; output so far: {''.join(out)}")
            # short reads: the server's pings would otherwise keep one recv() alive forever
            self.ws.settimeout(min(remaining, 5))
            try:
                msg = json.loads(self.ws.recv())
            except websocket.WebSocketTimeoutException:
                continue
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind = msg["msg_type"]
            if kind == "stream":
                out.append(msg["content"]["text"])
            elif kind == "execute_result":
                out.append(msg["content"]["data"].get("text/plain", ""))
            elif kind == "error":
                error = f"{msg['content']['ename']}: {msg['content']['evalue']}"
            elif kind == "execute_reply":
                status = msg["content"]["status"]
            elif kind == "status" and msg["content"]["execution_state"] == "idle":
                idle = True
        return Execution("".join(out), error, status)

    def run(self, code: str, timeout: float = 120) -> str:
        """Execute and return stdout; fail the test with the kernel's error if it raised."""
        result = self.execute(code, timeout)
        if result.error:
            raise AssertionError(f"kernel raised {result.error}; output: {result.output}")
        return result.output

    def close(self) -> None:
        try:
            self.ws.close()
            requests.delete(f"{self.base}/api/kernels/{self.id}", headers=self.headers, timeout=10)
        except Exception:
            pass


@dataclass
class Execution:
    output: str
    error: str | None
    status: str | None
