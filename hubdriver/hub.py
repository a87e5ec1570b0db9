"""One real JupyterHub process and its proxy, driven over the hub's REST API.

The hub runs from a generated config (HardenedSpawner, the dummy authenticator, a
service token with admin scopes) on free ports, with its own database, log and
audit trail in its work folder.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from .host import docker0_address, free_port

SINGLEUSER_IMAGE = os.environ.get("SINGLEUSER_IMAGE", "hardened-spawner-singleuser:latest")
#: Every engine object a hub creates is named with its prefix, this one unless told otherwise,
#: so it can be cleaned up; two test sessions on one engine need different prefixes (and UID
#: bases, tests/integration/hubtools.py).
TEST_PREFIX = os.environ.get("HSTEST_PREFIX", "hstest")


class HubError(AssertionError):
    pass


@dataclass
class Hub:
    """One JupyterHub process with its own database, proxy, ports and settings."""

    workdir: Path
    extra_config: str = ""
    uid_min: int = 300000
    #: names the hub's containers, workspaces and users' network (the benchmarks use their own)
    prefix: str = TEST_PREFIX
    port: int = field(default_factory=free_port)
    hub_port: int = field(default_factory=free_port)
    proxy_api_port: int = field(default_factory=free_port)
    token: str = field(default_factory=lambda: secrets.token_hex(16))
    debug: bool = True  # benchmarks start hubs as in production, without --debug
    #: more environment for the hub process (over this process's own)
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen | None = None
    #: when the current process was started, and where its part of the log begins
    started_at: float = 0.0
    started_wall: float = 0.0
    log_offset: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def audit_path(self) -> Path:
        return self.workdir / "audit.jsonl"

    @property
    def log_path(self) -> Path:
        return self.workdir / "hub.log"

    def process_config(self, spawner_class: str, hub_ip: str) -> str:
        """What every test hub process is given: its spawner, the dummy login, its ports, its
        proxy and its files (`config_text` adds the rest; `KubeHub` too)."""
        return textwrap.dedent(
            f"""
            c = get_config()  # noqa
            c.JupyterHub.spawner_class = "{spawner_class}"
            c.JupyterHub.authenticator_class = "dummy"
            c.Authenticator.allow_all = True
            c.JupyterHub.ip = "127.0.0.1"
            c.JupyterHub.port = {self.port}
            c.JupyterHub.hub_ip = "{hub_ip}"
            c.JupyterHub.hub_port = {self.hub_port}
            c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{self.proxy_api_port}"
            # fixed, so a restarted hub can talk to the proxy that outlived it
            c.ConfigurableHTTPProxy.auth_token = "{self.token}-proxy"
            c.ConfigurableHTTPProxy.pid_file = "{self.workdir}/proxy.pid"
            c.JupyterHub.db_url = "sqlite:///{self.workdir}/hub.sqlite"
            c.JupyterHub.cookie_secret_file = "{self.workdir}/cookie_secret"
            """
        )

    def config_text(self) -> str:
        return self.process_config("hardened", "0.0.0.0") + textwrap.dedent(
            f"""
            c.JupyterHub.hub_connect_ip = "{docker0_address()}"
            c.JupyterHub.cleanup_servers = False
            # answer spawn requests at once, so tests follow the whole progress stream
            c.JupyterHub.tornado_settings = {{"slow_spawn_timeout": 0}}
            c.JupyterHub.services = [{{"name": "tester", "api_token": "{self.token}"}}]
            c.JupyterHub.load_roles = [{{
                "name": "tester",
                "scopes": ["admin:users", "admin:servers", "access:servers", "tokens",
                           "admin:groups", "read:metrics"],
                "services": ["tester"],
            }}]
            c.Spawner.http_timeout = 60
            c.Spawner.start_timeout = 120
            c.HardenedSpawner.image = "{SINGLEUSER_IMAGE}"
            c.HardenedSpawner.uid_min = {self.uid_min}
            c.HardenedSpawner.name_template = "{self.prefix}-{{username}}--{{servername}}"
            c.HardenedSpawner.workspace_volume_name = "{self.prefix}-workspace-{{username}}"
            c.HardenedSpawner.network_name = "{self.prefix}-users"
            c.HardenedSpawner.mem_limit = "2G"
            c.HardenedSpawner.cpu_limit = 1.0
            c.HardenedSpawner.audit_log = "{self.audit_path}"
            """
        ) + textwrap.dedent(self.extra_config)

    def start(self, wait: bool = True) -> Hub:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "jupyterhub_config.py"
        config.write_text(self.config_text())
        self.log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self.started_at, self.started_wall = time.monotonic(), time.time()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "jupyterhub", "-f", str(config)] + (["--debug"] if self.debug else []),
                cwd=self.workdir,
                # a crash of the interpreter itself leaves every thread's stack in the log
                env={**os.environ, "PYTHONFAULTHANDLER": "1", **self.env},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise HubError(f"hub exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if requests.get(f"{self.url}/hub/api/", timeout=2).ok:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.3)
        raise HubError(f"hub did not answer within {timeout}s:\n{self.log_tail()}")

    def wait_exit(self, timeout: float = 60) -> int:
        return self.proc.wait(timeout)

    def wait_refused(self, timeout: float = 60) -> int:
        """For a hub whose config must stop it at start: its exit status, once it has exited;
        a HubError when it answers requests instead (it started), or neither within ``timeout``."""
        try:
            self.wait_ready(timeout)
        except HubError:
            if self.proc.poll() is not None:
                return self.proc.returncode
            raise
        raise HubError(f"the hub started instead of stopping:\n{self.log_tail()}")

    def log_tail(self, lines: int = 60) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, sig=signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._kill_proxy()

    def kill(self) -> None:
        """SIGKILL the hub alone, as a crash would; the proxy and servers live on."""
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def _kill_proxy(self) -> None:
        pid_file = self.workdir / "proxy.pid"
        if pid_file.exists():
            try:
                os.kill(int(pid_file.read_text().strip()), signal.SIGTERM)
            except (ValueError, ProcessLookupError):
                pass

    # --- REST API -------------------------------------------------------

    def api(self, method: str, path: str, **kwargs) -> requests.Response:
        headers = {"Authorization": f"token {self.token}"}
        return requests.request(method, f"{self.url}/hub/api{path}", headers=headers, timeout=30, **kwargs)

    def create_user(self, name: str, admin: bool = False) -> dict:
        r = self.api("POST", f"/users/{name}")
        if r.status_code not in (201, 409):
            raise HubError(f"create user {name}: {r.status_code} {r.text}")
        if admin:
            self.api("PATCH", f"/users/{name}", json={"admin": True}).raise_for_status()
        return self.api("GET", f"/users/{name}").json()

    def user_token(self, name: str) -> str:
        r = self.api("POST", f"/users/{name}/tokens", json={"note": "tests"})
        r.raise_for_status()
        return r.json()["token"]

    def spawn(self, name: str, options: dict | None = None, timeout: float = 180,
              server: str = "") -> SpawnResult:
        """Request a server (a named one with ``server``) and follow its progress stream to
        the end, as the spawn page does."""
        r = self.api("POST", _server_path(name, server), json=options or {})
        if r.status_code >= 400:
            return SpawnResult(False, r.status_code, _message(r), [])
        events = self.progress(name, timeout, server)
        last = events[-1] if events else {}
        return SpawnResult(bool(last.get("ready")), r.status_code, last.get("message", ""), events)

    def progress_events(self, name: str, timeout: float = 180, server: str = ""):
        """The spawn's progress events as they arrive, up to ``ready`` or ``failed``.

        A spawn that fails at once is still cleaning up for a moment, and the hub then answers
        400 "not starting" until it is done: asked again, as the spawn page reloads, it tells
        how the spawn failed."""
        for _ in range(20):
            r = requests.get(
                f"{self.url}/hub/api{_server_path(name, server)}/progress",
                headers={"Authorization": f"token {self.token}"},
                stream=True,
                timeout=timeout,
            )
            if r.status_code != 400 or "is not starting" not in r.text:
                break
            r.close()
            time.sleep(0.25)
        with r:
            for line in r.iter_lines(decode_unicode=True):
                if line and line.startswith("data:"):
                    event = json.loads(line[5:])
                    yield event
                    if event.get("ready") or event.get("failed"):
                        return

    def progress(self, name: str, timeout: float = 180, server: str = "") -> list[dict]:
        return list(self.progress_events(name, timeout, server))

    def stop_server(self, name: str, timeout: float = 60, server: str = "") -> None:
        r = self.api("DELETE", _server_path(name, server))
        if r.status_code not in (202, 204, 400):
            raise HubError(f"stop {name}: {r.status_code} {r.text}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if server not in self.api("GET", f"/users/{name}").json()["servers"]:
                return
            time.sleep(0.3)
        raise HubError(f"{name}'s server {server!r} did not stop")

    def audit_events(self) -> list[dict]:
        if not self.audit_path.exists():
            return []
        return [json.loads(line) for line in self.audit_path.read_text().splitlines() if line]


def _server_path(name: str, server: str = "") -> str:
    """The REST path of a user's default server, or of a named one."""
    return f"/users/{name}/servers/{server}" if server else f"/users/{name}/server"


def _message(r: requests.Response) -> str:
    try:
        return r.json().get("message", r.text)
    except ValueError:
        return r.text


@dataclass
class SpawnResult:
    ready: bool
    status_code: int
    message: str
    events: list[dict]
