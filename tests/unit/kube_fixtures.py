"""One decision and one placement for the Kubernetes builder tests (plain values; no cluster)."""

from hardened_spawner.core.decision import BY_SCHEDULER, GpuGrant, ServerDecision, decide
from hardened_spawner.core.identity import make_identity
from hardened_spawner.core.profile import SecurityProfile
from hardened_spawner.kubernetes.objects import PodPlacement, make_pod, uid_claim_name

GIB = 1024**3
ALICE = make_identity("alice@example.org", 300001, "/home/{username}")
PROFILE = SecurityProfile(mem_limit=8 * GIB, cpu_limit=4.0, pids_limit=1024, shm_size=GIB, tmpfs={"/tmp": GIB})
SINCE = "2026-01-01T00:00:00+00:00"


def decision(**changes) -> ServerDecision:
    """Alice's default server, decided by the core with ``changes`` to its inputs."""
    inputs = {
        "owner": "alice@example.org", "server_name": "", "image": "registry.example.org/singleuser:1.2",
        "command": ["jupyterhub-singleuser"], "port": 8888, "identity": ALICE, "profile": PROFILE,
        "workspace": "workspace-alice", "gpus": GpuGrant(), "hub_environment": {"JUPYTERHUB_API_TOKEN": "secret"},
    }
    return decide(**{**inputs, **changes})


def scheduler_gpus(*slots: str) -> GpuGrant:
    """GPU slots the hub's table granted on Kubernetes (the scheduler picks the devices)."""
    return GpuGrant(slots, SINCE, picked_by=BY_SCHEDULER)


PLACEMENT = PodPlacement(
    name="jupyter-alice", namespace="jhub", identity_claim=uid_claim_name(300001),
    labels={"app": "jupyterhub", "component": "singleuser-server", "hub.jupyter.org/username": "alice"},
    cpu_request=0.5, memory_request=GIB, version="0.1.0", health_path="/user/alice/api",
)


def pod(server: ServerDecision | None = None, placement: PodPlacement = PLACEMENT) -> dict:
    return make_pod(server or decision(), placement)
