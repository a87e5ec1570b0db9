"""A throwaway container on the users' network that sees what a server would reach.

It must reach the hub API and be rejected on another port of the hub's address (the
canary): what the rules do, checked from where the servers sit, with no privileges
beyond the engine's API.
"""

from __future__ import annotations

import ipaddress
import json

import docker.errors

from ... import labels
from ..._version import __version__
from .policy import IsolationPolicy

ROLE_PROBE = "network-probe"


#: Runs in a throwaway container on the users' network, as nobody, with no capabilities.
PROBE_SCRIPT = """\
import json, socket, sys
host, hub_port, canary_port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def attempt(port, timeout):
    try:
        socket.create_connection((host, port), timeout).close()
        return "open"
    except socket.timeout:
        return "timeout"
    except ConnectionRefusedError:
        return "refused"
    except OSError as e:
        # what our REJECT gives (EHOSTUNREACH, EACCES): not "refused" (no listener, no rule)
        # nor a timeout (dropped by something else, such as Docker's inter-container rule)
        return "rejected" if e.errno in (113, 13) else "error %s" % e.errno
print(json.dumps({"hub": attempt(hub_port, 5), "canary": attempt(canary_port, 5)}))
"""


#: The port the probe expects our rules to reject on the hub's address (discard).
CANARY_PORT = 9


def probe_spec(image: str, network_name: str, policy: IsolationPolicy, version: str) -> tuple[dict, dict]:
    """(create kwargs, host-config kwargs) for docker-py: the probe container."""
    create = {
        "image": image,
        "command": ["python3", "-c", PROBE_SCRIPT, policy.hub_ip, str(policy.hub_port),
                    str(CANARY_PORT)],
        "entrypoint": [],
        "user": "65534:65534",
        "labels": {labels.MANAGED: "true", labels.ROLE: ROLE_PROBE, labels.VERSION: version},
    }
    host = {
        "network_mode": network_name,
        "cap_drop": ["ALL"],
        "read_only": True,
        "security_opt": ["no-new-privileges:true"],
        "mem_limit": 64 * 1024 * 1024,
        "pids_limit": 16,
    }
    return create, host


def probe_problems(output: str, exit_code: int, policy: IsolationPolicy) -> list[str]:
    """What the probe's answer says is missing (empty: the rules act as planned)."""
    return probe_verdict(output, exit_code, policy)[0]


def probe_verdict(output: str, exit_code: int, policy: IsolationPolicy) -> tuple[list[str], list[str]]:
    """(what is missing, what of that stops servers from reaching the hub at all)."""
    try:
        seen = json.loads(output.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return [f"the network probe failed (exit {exit_code}): {output.strip()[-300:]!r}"], []
    where = f"{policy.hub_ip}"
    problems, blocking = [], []
    if seen.get("hub") != "open":
        blocking.append(f"a container on the users' network cannot reach the hub API at "
                        f"{where}:{policy.hub_port} ({seen.get('hub')})")
        problems += blocking
    covered = any(ipaddress.ip_address(policy.hub_ip) in ipaddress.ip_network(c)
                  for c in policy.allow_cidrs)
    if not covered and seen.get("canary") != "rejected":
        problems.append(f"a container on the users' network got {seen.get('canary')!r} instead of "
                        f"a firewall rejection from {where}:{CANARY_PORT}: the isolation rules "
                        "are not in effect")
    return problems, blocking


def run_probe(client, image: str, network_name: str, policy: IsolationPolicy) -> tuple[list[str], list[str]]:
    """Start a throwaway container on the users' network and see what it reaches:
    (what is missing, what of that keeps servers from the hub API)."""
    create, host = probe_spec(image, network_name, policy, __version__)
    try:
        container = client.create_container(host_config=client.create_host_config(**host), **create)
    except docker.errors.DockerException as e:
        return [f"the network probe could not be created ({e})"], []
    try:
        client.start(container["Id"])
        result = client.wait(container["Id"], timeout=60)
        output = client.logs(container["Id"]).decode(errors="replace")
    except (docker.errors.DockerException, OSError, ValueError) as e:
        # includes the wait's read timeout: the probe's failure is a finding, not a crash
        return [f"the network probe failed ({e})"], []
    finally:
        try:
            client.remove_container(container["Id"], force=True)
        except docker.errors.DockerException:
            pass
    return probe_verdict(output, result.get("StatusCode", -1), policy)
