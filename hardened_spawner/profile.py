"""The security profile as data, and its rendering to Docker host-config arguments.

Nothing here talks to Docker or knows about traitlets: the spawner turns its
settings into a `SecurityProfile`, and `render_host_config` turns that into
the keyword arguments of docker-py's ``create_host_config``. Keeping the
profile engine-neutral is what lets it render to a Swarm service or a
Kubernetes ``securityContext`` later.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

#: Capabilities an admin may add back. Everything else (SYS_ADMIN, NET_ADMIN,
#: SYS_PTRACE, SYS_MODULE, DAC_OVERRIDE, ...) either breaks isolation outright
#: or lets a process ignore file permissions. A non-root user has no effective
#: capabilities anyway; these only matter for images that switch users.
ADDABLE_CAPABILITIES = frozenset(
    {"CHOWN", "FOWNER", "SETUID", "SETGID", "KILL", "NET_BIND_SERVICE", "SYS_NICE"}
)

#: Every capability name the kernel knows (Linux 6.x), to tell a typo from a refusal.
KNOWN_CAPABILITIES = frozenset(
    ["AUDIT_CONTROL", "AUDIT_READ", "AUDIT_WRITE", "BLOCK_SUSPEND", "BPF", "CHECKPOINT_RESTORE", "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "IPC_LOCK", "IPC_OWNER", "KILL", "LEASE", "LINUX_IMMUTABLE", "MAC_ADMIN", "MAC_OVERRIDE", "MKNOD", "NET_ADMIN", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_RAW", "PERFMON", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYSLOG", "SYS_ADMIN", "SYS_BOOT", "SYS_CHROOT", "SYS_MODULE", "SYS_NICE", "SYS_PACCT", "SYS_PTRACE", "SYS_RAWIO", "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "WAKE_ALARM"]
)


class ProfileError(ValueError):
    """A profile setting is invalid; the message names the setting."""


def normalise_capability(name: str, setting: str = "HardenedSpawner.cap_add") -> str:
    """Accept ``net_bind_service`` or ``CAP_NET_BIND_SERVICE``; refuse the rest clearly."""
    cap = name.strip().upper().removeprefix("CAP_")
    if cap not in KNOWN_CAPABILITIES:
        raise ProfileError(f"{setting}: {name!r} is not a Linux capability.")
    if cap not in ADDABLE_CAPABILITIES:
        raise ProfileError(
            f"{setting}: {cap} may not be added; it would weaken isolation between "
            f"users. Capabilities that may be added: {', '.join(sorted(ADDABLE_CAPABILITIES))}."
        )
    return cap


@dataclass(frozen=True)
class SecurityProfile:
    """Everything the engine enforces on a user's server container."""

    mem_limit: int  # bytes
    cpu_limit: float  # CPUs
    pids_limit: int
    shm_size: int  # bytes
    tmpfs: dict[str, int] = field(default_factory=dict)  # mount point -> size in bytes
    cap_add: tuple[str, ...] = ()
    seccomp_profile: str = ""  # JSON text of a custom profile; "" keeps the engine's default
    apparmor_profile: str = ""  # "" where the engine has no AppArmor
    healthcheck: dict | None = None

    def fingerprint(self) -> str:
        """A short, stable hash of the profile, put on every container as a label.

        Two containers with the same fingerprint were started under the same
        policy, which is what the audit wants to know.
        """
        canonical = json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


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
        "cap_drop": ["ALL"],
        "cap_add": list(profile.cap_add),
        "read_only": True,
        "security_opt": security_options(profile),
        "tmpfs": {path: tmpfs_options(size) for path, size in sorted(profile.tmpfs.items())},
        "shm_size": profile.shm_size,
        "pids_limit": profile.pids_limit,
        "mem_limit": profile.mem_limit,
        # no swap beyond the memory limit: a memory bomb ends in the OOM killer,
        # not in a host thrashing its disk
        "memswap_limit": profile.mem_limit,
        "nano_cpus": int(profile.cpu_limit * 1e9),
        "privileged": False,
    }


def audit_summary(profile: SecurityProfile) -> dict:
    """The effective settings, for the audit trail: the profile's fields and the fixed
    hardening, as `render_host_config` applies them (the seccomp JSON itself is too big)."""
    rendered = render_host_config(profile)
    summary = asdict(profile)
    summary["seccomp_profile"] = "custom" if profile.seccomp_profile else "engine-default"
    summary.update(
        read_only_root=rendered["read_only"],
        no_new_privileges="no-new-privileges:true" in rendered["security_opt"],
        cap_drop=rendered["cap_drop"],
        privileged=rendered["privileged"],
    )
    return summary


def render_healthcheck(profile: SecurityProfile) -> dict | None:
    """The container's healthcheck in docker-py's ``Healthcheck`` shape."""
    return dict(profile.healthcheck) if profile.healthcheck else None


def server_healthcheck(interval_s: int = 60) -> dict:
    """Ask the single-user server's own API, from inside the container.

    A raw HTTP/1.0 request from ``python3 -I -S`` (no site packages, no
    urllib): every single-user image has python3, and this costs about half
    the CPU of an ``urllib`` probe, which adds up over dozens of servers. The
    address comes from ``JUPYTERHUB_SERVICE_URL``, which the hub sets.
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
