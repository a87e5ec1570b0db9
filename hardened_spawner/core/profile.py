"""The security profile as data: what every user's server is held to, on any backend.

Nothing here talks to an engine or knows about traitlets. The spawner turns its
settings into a `SecurityProfile`; `docker.host_config` renders it as docker-py's
``create_host_config`` arguments and `kubernetes.objects` as a Pod's
``securityContext``, volumes and resources. `FIXED` is the part no setting changes:
both renderers write exactly these facts, and the same-decision test holds them to it.
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


def normalise_capability(name: str, setting: str) -> str:
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


@dataclass(frozen=True)
class FixedHardening:
    """The hardening no setting changes: every capability dropped, a read-only root, no way
    to gain privileges (no-new-privileges, allowPrivilegeEscalation false), never
    privileged. (A seccomp filter is always on too: the engine's or runtime's default
    unless Docker's `seccomp_profile` names a custom one.)"""

    cap_drop: tuple[str, ...] = ("ALL",)
    read_only_root: bool = True
    no_new_privileges: bool = True
    privileged: bool = False


FIXED = FixedHardening()


def audit_summary(profile: SecurityProfile) -> dict:
    """The effective settings, for the audit trail: the profile's fields and the fixed
    hardening (the seccomp JSON itself is too big)."""
    summary = asdict(profile)
    summary["seccomp_profile"] = "custom" if profile.seccomp_profile else "engine-default"
    summary.update(
        read_only_root=FIXED.read_only_root,
        no_new_privileges=FIXED.no_new_privileges,
        cap_drop=list(FIXED.cap_drop),
        privileged=FIXED.privileged,
    )
    return summary
