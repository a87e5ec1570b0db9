"""What one start of one user's server is, decided once, for either backend.

The spawner gathers the facts (the user's UID, their GPUs from the hub's table, the
workspace's name, the hub's environment) and calls `decide`; the result is all that a
backend renders. `docker.container.build_server_spec` writes it as a container spec and
`kubernetes.objects.make_pod` as a Pod: neither decides a policy fact again, and the
same-decision test (``tests/unit/test_same_decision.py``) holds both to one decision.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from .environment import hardened_environment
from .identity import Identity
from .profile import SecurityProfile

#: Who picks the physical devices for a grant: the hub's table (Docker: the grant's ids
#: are device UUIDs) or the cluster's scheduler and device plugin (Kubernetes: the ids
#: are the hub's slots of a resource, ``nvidia.com/gpu#0``, and only their count is asked).
BY_HUB, BY_SCHEDULER = "hub", "scheduler"


@dataclass(frozen=True)
class GpuGrant:
    """The GPUs a server holds, as the hub's GPU table assigned them."""

    devices: tuple[str, ...] = ()
    since: str = ""  # ISO time of the assignment; "" without GPUs
    picked_by: str = BY_HUB

    @property
    def visible_devices(self) -> str | None:
        """``NVIDIA_VISIBLE_DEVICES``: the assigned devices, ``"void"`` for none (so an image
        that says ``all`` on a host whose default runtime is nvidia still sees none), or
        None where the device plugin writes it for the devices it picked."""
        if not self.devices:
            return "void"
        return ",".join(self.devices) if self.picked_by == BY_HUB else None

    def resources(self) -> dict[str, int]:
        """How many of each extended resource a Pod asks for: a slot ``RESOURCE#N`` is one
        of RESOURCE (a whole ``nvidia.com/gpu`` or a MIG profile like
        ``nvidia.com/mig-1g.10gb``)."""
        if self.picked_by != BY_SCHEDULER:
            return {}
        return dict(sorted(Counter(slot.rpartition("#")[0] for slot in self.devices).items()))


@dataclass(frozen=True)
class ServerDecision:
    """Everything policy says about one server; a backend adds only where it runs."""

    owner: str  # the hub user name
    server_name: str  # "" for the default server
    image: str
    command: tuple[str, ...]
    port: int
    identity: Identity
    profile: SecurityProfile
    workspace: str  # the name of the user's volume (Docker) or claim (Kubernetes)
    gpus: GpuGrant
    environment: dict[str, str] = field(default_factory=dict)


def decide(
    *,
    owner: str,
    server_name: str,
    image: str,
    command: list[str] | tuple[str, ...],
    port: int,
    identity: Identity,
    profile: SecurityProfile,
    workspace: str,
    gpus: GpuGrant,
    hub_environment: dict[str, str],
) -> ServerDecision:
    """One server's decision. The hardened environment wins over the hub's own (an admin's
    ``environment`` setting cannot move HOME off the workspace or show more GPUs)."""
    return ServerDecision(
        owner=owner,
        server_name=server_name,
        image=image,
        command=tuple(command),
        port=port,
        identity=identity,
        profile=profile,
        workspace=workspace,
        gpus=gpus,
        environment={**hub_environment, **hardened_environment(identity, gpus.visible_devices)},
    )
