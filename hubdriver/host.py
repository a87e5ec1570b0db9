"""Where the hub listens and where containers reach it, on this host."""

from __future__ import annotations

import socket
import subprocess

import docker


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
