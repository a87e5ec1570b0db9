"""The security profile rendered as Docker host-config arguments.

`core.profile` decides what a server is held to; this module only says it in docker-py's
words (``create_host_config`` keyword arguments and the ``Healthcheck`` shape). The fixed
hardening comes from `core.profile.FIXED`, so it cannot drift from the Pod's.
"""

from __future__ import annotations

from ..core.profile import FIXED, SecurityProfile

#: The servers' container log, by default: the engine's json-file driver (what `docker logs`,
#: the hub's "last output" of a server that died and log shippers read) rotated at 10 MiB,
#: three files kept. At most 30 MiB of one server's output stays on the host's disk (a
#: hundred servers: 3 GiB), which holds tens of thousands of lines for an admin's look.
LOG_DRIVER = "json-file"
LOG_MAX_SIZE = 10 * 1024 * 1024
LOG_MAX_FILES = 3
#: the drivers that keep the log on the engine's host, with a size and file count, where
#: `docker logs` reads it
CAPPED_LOG_DRIVERS = ("json-file", "local")


def tmpfs_options(size: int) -> str:
    """Mount options of a scratch tmpfs: sized, sticky and world-writable like /tmp,
    and never a place to run setuid programs or device nodes from."""
    return f"rw,nosuid,nodev,size={size},mode=1777"


def security_options(profile: SecurityProfile) -> list[str]:
    """The engine's ``--security-opt`` list: no-new-privileges always, plus any
    custom seccomp profile and AppArmor where the engine has it."""
    opts = ["no-new-privileges:true"]
    if profile.seccomp_profile:
        opts.append(f"seccomp={profile.seccomp_profile}")
    if profile.apparmor_profile:
        opts.append(f"apparmor={profile.apparmor_profile}")
    return opts


def render_host_config(profile: SecurityProfile) -> dict:
    """The hardening half of ``create_host_config`` keyword arguments."""
    return {
        "cap_drop": list(FIXED.cap_drop),
        "cap_add": list(profile.cap_add),
        "read_only": FIXED.read_only_root,
        "security_opt": security_options(profile),
        "tmpfs": {path: tmpfs_options(size) for path, size in sorted(profile.tmpfs.items())},
        "shm_size": profile.shm_size,
        "pids_limit": profile.pids_limit,
        "mem_limit": profile.mem_limit,
        # no swap beyond the memory limit: a memory bomb ends in the OOM killer,
        # not in a host thrashing its disk
        "memswap_limit": profile.mem_limit,
        "nano_cpus": int(profile.cpu_limit * 1e9),
        "privileged": FIXED.privileged,
    }


def log_config(driver: str = LOG_DRIVER, max_size: int = LOG_MAX_SIZE, max_files: int = LOG_MAX_FILES) -> dict:
    """``create_host_config``'s ``log_config``: the driver, rotated at ``max_size`` bytes with
    ``max_files`` files kept (docker-py's lower-case keys, so an admin's ``extra_host_config``
    ``log_config`` merges into it key by key, and the guard judges the result)."""
    return {"type": driver, "config": {"max-size": str(max_size), "max-file": str(max_files)}}


def render_healthcheck(profile: SecurityProfile) -> dict | None:
    """The container's healthcheck in docker-py's ``Healthcheck`` shape."""
    return dict(profile.healthcheck) if profile.healthcheck else None


def server_healthcheck(interval_s: int = 300) -> dict:
    """Ask the single-user server's own API, from inside the container.

    A raw HTTP/1.0 request from ``python3 -I -S`` (no site packages, no
    urllib): every single-user image has python3, and this costs about half
    the CPU of an ``urllib`` probe. The address comes from
    ``JUPYTERHUB_SERVICE_URL``, which the hub sets. Every 5 minutes: each probe
    is an exec in the container (about 0.1 CPU-s with the engine's part), the
    engine probes during the start period too, and nothing acts on the status
    but an admin reading ``docker ps``; at 60 s a class of a hundred starting at
    once ran 335 probes in its first five minutes (benchmarks/README.md).
    """
    probe = (
        "import os,socket;"
        "u=os.environ['JUPYTERHUB_SERVICE_URL'].split('/',3);"
        "p=u[2].rpartition(':')[2] or '8888';"
        "s=socket.create_connection(('127.0.0.1',int(p)),5);"
        "s.sendall(('GET /%sapi HTTP/1.0\\r\\n\\r\\n'%(u[3] if len(u)>3 else '')).encode());"
        "raise SystemExit(0 if s.recv(12)[9:10] in b'23' else 1)"
    )
    seconds = 1_000_000_000
    return {
        "test": ["CMD", "python3", "-I", "-S", "-c", probe],
        "interval": interval_s * seconds,
        "timeout": 10 * seconds,
        "retries": 3,
        "start_period": 60 * seconds,
    }
