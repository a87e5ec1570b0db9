"""profile: capability names, the rendered host config, the fingerprint, the healthcheck."""

import dataclasses
import re

import pytest

from hardened_spawner.core.profile import (
    ADDABLE_CAPABILITIES,
    KNOWN_CAPABILITIES,
    ProfileError,
    SecurityProfile,
    normalise_capability,
)
from hardened_spawner.docker.host_config import (
    render_healthcheck,
    render_host_config,
    security_options,
    server_healthcheck,
    tmpfs_options,
)

GIB, MIB = 1024**3, 1024**2
SECCOMP = '{"defaultAction":"SCMP_ACT_ERRNO"}'
PROBE = (
    "import os,socket;"
    "u=os.environ['JUPYTERHUB_SERVICE_URL'].split('/',3);"
    "p=u[2].rpartition(':')[2] or '8888';"
    "s=socket.create_connection(('127.0.0.1',int(p)),5);"
    "s.sendall(('GET /%sapi HTTP/1.0\\r\\n\\r\\n'%(u[3] if len(u)>3 else '')).encode());"
    "raise SystemExit(0 if s.recv(12)[9:10] in b'23' else 1)"
)
HEALTHCHECK = {
    "test": ["CMD", "python3", "-I", "-S", "-c", PROBE],
    "interval": 300_000_000_000,
    "timeout": 10_000_000_000,
    "retries": 3,
    "start_period": 60_000_000_000,
}


def _profile(**changes) -> SecurityProfile:
    base = SecurityProfile(
        mem_limit=8 * GIB,
        cpu_limit=2.5,
        pids_limit=1024,
        shm_size=GIB,
        tmpfs={"/var/tmp": 256 * MIB, "/tmp": GIB},
        cap_add=("KILL", "NET_BIND_SERVICE"),
        healthcheck=HEALTHCHECK,
    )
    return dataclasses.replace(base, **changes)


# --- normalise_capability ------------------------------------------------


@pytest.mark.parametrize(
    "name, expected",
    [
        ("NET_BIND_SERVICE", "NET_BIND_SERVICE"),
        ("net_bind_service", "NET_BIND_SERVICE"),
        ("CAP_KILL", "KILL"),
        ("cap_sys_nice", "SYS_NICE"),
        ("  chown ", "CHOWN"),
        ("Setuid", "SETUID"),
        ("setgid", "SETGID"),
        ("fowner", "FOWNER"),
    ],
)
def test_normalise_capability(name, expected):
    assert normalise_capability(name, "HardenedSpawner.cap_add") == expected


ADDABLE_LIST = "CHOWN, FOWNER, KILL, NET_BIND_SERVICE, SETGID, SETUID, SYS_NICE"


@pytest.mark.parametrize(
    "name, message",
    [
        ("NOPE", "HardenedSpawner.cap_add: 'NOPE' is not a Linux capability."),
        ("CAP_NOPE", "HardenedSpawner.cap_add: 'CAP_NOPE' is not a Linux capability."),
        ("ALL", "HardenedSpawner.cap_add: 'ALL' is not a Linux capability."),
        ("", "HardenedSpawner.cap_add: '' is not a Linux capability."),
        (
            "SYS_ADMIN",
            "HardenedSpawner.cap_add: SYS_ADMIN may not be added; it would weaken isolation "
            f"between users. Capabilities that may be added: {ADDABLE_LIST}.",
        ),
        (
            "cap_sys_ptrace",
            "HardenedSpawner.cap_add: SYS_PTRACE may not be added; it would weaken isolation "
            f"between users. Capabilities that may be added: {ADDABLE_LIST}.",
        ),
        (
            "dac_override",
            "HardenedSpawner.cap_add: DAC_OVERRIDE may not be added; it would weaken isolation "
            f"between users. Capabilities that may be added: {ADDABLE_LIST}.",
        ),
    ],
)
def test_normalise_capability_refuses(name, message):
    with pytest.raises(ProfileError) as err:
        normalise_capability(name, "HardenedSpawner.cap_add")
    assert str(err.value) == message


def test_normalise_capability_names_the_setting_given():
    with pytest.raises(ProfileError) as err:
        normalise_capability("nope", "extra_host_config['cap_add']")
    assert str(err.value) == "extra_host_config['cap_add']: 'nope' is not a Linux capability."


def test_addable_capabilities_are_known_and_exclude_the_dangerous_ones():
    assert ADDABLE_CAPABILITIES <= KNOWN_CAPABILITIES
    dangerous = {"SYS_ADMIN", "NET_ADMIN", "SYS_PTRACE", "SYS_MODULE", "DAC_OVERRIDE",
                 "DAC_READ_SEARCH", "SYS_RAWIO", "MKNOD", "NET_RAW", "BPF"}
    assert not ADDABLE_CAPABILITIES & dangerous


# --- render_host_config --------------------------------------------------


def test_render_host_config_engine_defaults():
    # no custom seccomp profile, no AppArmor (an engine without it)
    assert render_host_config(_profile()) == {
        "cap_drop": ["ALL"],
        "cap_add": ["KILL", "NET_BIND_SERVICE"],
        "read_only": True,
        "security_opt": ["no-new-privileges:true"],
        "tmpfs": {
            "/tmp": "rw,nosuid,nodev,size=1073741824,mode=1777",
            "/var/tmp": "rw,nosuid,nodev,size=268435456,mode=1777",
        },
        "shm_size": 1073741824,
        "pids_limit": 1024,
        "mem_limit": 8589934592,
        "memswap_limit": 8589934592,
        "nano_cpus": 2500000000,
        "privileged": False,
    }


def test_render_host_config_with_seccomp_and_apparmor():
    profile = _profile(
        cap_add=(), tmpfs={"/tmp": GIB}, seccomp_profile=SECCOMP, apparmor_profile="docker-default"
    )
    assert render_host_config(profile) == {
        "cap_drop": ["ALL"],
        "cap_add": [],
        "read_only": True,
        "security_opt": [
            "no-new-privileges:true",
            'seccomp={"defaultAction":"SCMP_ACT_ERRNO"}',
            "apparmor=docker-default",
        ],
        "tmpfs": {"/tmp": "rw,nosuid,nodev,size=1073741824,mode=1777"},
        "shm_size": 1073741824,
        "pids_limit": 1024,
        "mem_limit": 8589934592,
        "memswap_limit": 8589934592,
        "nano_cpus": 2500000000,
        "privileged": False,
    }


@pytest.mark.parametrize(
    "seccomp, apparmor, expected",
    [
        ("", "", ["no-new-privileges:true"]),
        (SECCOMP, "", ["no-new-privileges:true", f"seccomp={SECCOMP}"]),
        ("", "docker-default", ["no-new-privileges:true", "apparmor=docker-default"]),
    ],
)
def test_security_options(seccomp, apparmor, expected):
    assert security_options(_profile(seccomp_profile=seccomp, apparmor_profile=apparmor)) == expected


def test_render_host_config_does_not_share_the_profiles_cap_tuple():
    rendered = render_host_config(_profile())
    rendered["cap_add"].append("SYS_ADMIN")
    assert _profile().cap_add == ("KILL", "NET_BIND_SERVICE")


# --- fingerprint ---------------------------------------------------------


def test_fingerprint_is_16_hex_digits_and_stable_for_equal_profiles():
    fingerprint = _profile().fingerprint()
    assert re.fullmatch(r"[0-9a-f]{16}", fingerprint)
    assert _profile().fingerprint() == fingerprint
    # dict order does not matter, only content
    assert _profile(tmpfs={"/tmp": GIB, "/var/tmp": 256 * MIB}).fingerprint() == fingerprint


CHANGED = {
    "mem_limit": 4 * GIB,
    "cpu_limit": 2.0,
    "pids_limit": 512,
    "shm_size": 2 * GIB,
    "tmpfs": {"/tmp": GIB},
    "cap_add": ("KILL",),
    "seccomp_profile": SECCOMP,
    "apparmor_profile": "docker-default",
    "healthcheck": {**HEALTHCHECK, "interval": 10_000_000_000},
}


def test_changed_covers_every_field():
    assert set(CHANGED) == {f.name for f in dataclasses.fields(SecurityProfile)}


@pytest.mark.parametrize("field, value", sorted(CHANGED.items()))
def test_fingerprint_changes_with_every_field(field, value):
    assert _profile(**{field: value}).fingerprint() != _profile().fingerprint()


def test_fingerprint_without_healthcheck_differs():
    assert _profile(healthcheck=None).fingerprint() != _profile().fingerprint()


# --- healthcheck and tmpfs ------------------------------------------------


def test_server_healthcheck():
    assert server_healthcheck() == HEALTHCHECK
    compile(PROBE, "<probe>", "exec")  # valid Python for the image's python3 -c


def test_the_probe_asks_the_servers_api_and_fails_on_errors(tmp_path):
    """Run the probe for real against a tiny HTTP server standing in for jupyter-server."""
    import http.server
    import os
    import subprocess
    import sys
    import threading

    class Api(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/user/ada/api" else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Api)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        for user, status in (("ada", 0), ("bob", 1)):
            env = {**os.environ, "JUPYTERHUB_SERVICE_URL": f"http://0.0.0.0:{port}/user/{user}/"}
            done = subprocess.run([sys.executable, "-I", "-S", "-c", PROBE], env=env, timeout=30)
            assert done.returncode == status, user
    finally:
        server.shutdown()


def test_server_healthcheck_interval():
    assert server_healthcheck(5) == {**HEALTHCHECK, "interval": 5_000_000_000}


@pytest.mark.parametrize(
    "healthcheck, expected",
    [(HEALTHCHECK, HEALTHCHECK), (None, None), ({}, None)],
)
def test_render_healthcheck(healthcheck, expected):
    rendered = render_healthcheck(_profile(healthcheck=healthcheck))
    assert rendered == expected
    if rendered is not None:
        assert rendered is not healthcheck  # a copy: docker-py may not change the profile


@pytest.mark.parametrize(
    "size, expected",
    [
        (1073741824, "rw,nosuid,nodev,size=1073741824,mode=1777"),
        (1024, "rw,nosuid,nodev,size=1024,mode=1777"),
    ],
)
def test_tmpfs_options(size, expected):
    assert tmpfs_options(size) == expected
