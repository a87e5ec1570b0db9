"""A way a final spec breaks the policy, said so that an admin can act on it; and the one
message a refused spawn shows, whichever backend's guard found it (`docker.guard`,
`kubernetes.guard`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Violation:
    """One way a spec breaks the policy, said so that an admin can act on it."""

    check: str  # stable id, for --json and tests
    key: str  # the spec field, as `docker inspect` (or the Pod manifest) shows it
    setting: str  # where an admin sets it in jupyterhub_config.py
    problem: str
    fix: str

    def __str__(self) -> str:
        return f"{self.problem} ({self.key}, set through {self.setting}). Fix: {self.fix}"


def describe(violations: list[Violation]) -> str:
    """One message for the spawn page and the log: every reason, each with its fix."""
    lines = [f"- {violation}" for violation in violations]
    return "The server was not started because its container would break the security policy:\n" + "\n".join(lines)
