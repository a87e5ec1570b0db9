"""One decision, two renderings: the Docker container spec and the Pod say the same UID,
capabilities, seccomp, read-only root, no-new-privileges, scratch sizes, limits, GPUs,
environment and workspace. Each side's facts are read back from what it rendered, in its
own words, so a renderer that re-decided a fact (or dropped one) fails here."""

import dataclasses
import re

import pytest
from kube_fixtures import ALICE, GIB, PLACEMENT, PROFILE, SINCE, decision, scheduler_gpus

from hardened_spawner.core.decision import GpuGrant
from hardened_spawner.docker.container import DockerPlacement, WorkspaceMount, build_server_spec
from hardened_spawner.kubernetes.objects import make_pod

DOCKER_PLACEMENT = DockerPlacement(
    workspace=WorkspaceMount("workspace-alice", ALICE.home), identity_files={}, network_name="users", version="0.1.0",
)
_UNITS = {"Gi": 1024**3, "Mi": 1024**2, "": 1}


def _bytes(quantity: str) -> int:
    number, unit = re.fullmatch(r"(\d+)(Gi|Mi|)", quantity).groups()
    return int(number) * _UNITS[unit]


def _cpus(quantity: str) -> float:
    return int(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def docker_facts(spec) -> dict:
    create, host = spec.create, spec.host
    options = host["security_opt"]
    tmpfs = {path: int(re.search(r"size=(\d+)", opts).group(1)) for path, opts in host["tmpfs"].items()}
    gpus = [d for request in host["device_requests"] for d in request["DeviceIDs"]]
    return {
        "uid_gid": tuple(int(i) for i in create["user"].split(":")),
        "cap_drop": sorted(host["cap_drop"]),
        "cap_add": sorted(host["cap_add"]),
        "seccomp": "default" if not any(o.startswith("seccomp=") for o in options) else "custom",
        "read_only_root": host["read_only"],
        "no_new_privileges": "no-new-privileges:true" in options,
        "privileged": host["privileged"],
        "scratch": {**tmpfs, "/dev/shm": host["shm_size"]},
        "memory_limit": host["mem_limit"],
        "cpu_limit": host["nano_cpus"] / 1e9,
        "gpu_count": len(gpus),
        "environment": {k: v for k, v in create["environment"].items() if k != "NVIDIA_VISIBLE_DEVICES"},
        "gpus_hidden": create["environment"]["NVIDIA_VISIBLE_DEVICES"] == "void",
        "workspace": [(m["Source"], m["Target"]) for m in host["mounts"]],
        "working_dir": create["working_dir"],
    }


def pod_facts(pod: dict) -> dict:
    spec = pod["spec"]
    container = spec["containers"][0]
    context = container["securityContext"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
    limits = container["resources"]["limits"]
    env = {e["name"]: e["value"] for e in container["env"]}
    return {
        "uid_gid": (context["runAsUser"], context["runAsGroup"]),
        "cap_drop": sorted(context["capabilities"]["drop"]),
        "cap_add": sorted(context["capabilities"].get("add", [])),
        "seccomp": "default" if context["seccompProfile"] == {"type": "RuntimeDefault"} else "custom",
        "read_only_root": context["readOnlyRootFilesystem"],
        "no_new_privileges": context["allowPrivilegeEscalation"] is False,
        "privileged": context["privileged"],
        "scratch": {path: _bytes(v["emptyDir"]["sizeLimit"]) for path, v in mounts.items()
                    if v.get("emptyDir", {}).get("medium") == "Memory"},
        "memory_limit": _bytes(limits["memory"]),
        "cpu_limit": _cpus(limits["cpu"]),
        "gpu_count": sum(int(n) for name, n in limits.items() if name.startswith("nvidia.com/")),
        "environment": {k: v for k, v in env.items() if k != "NVIDIA_VISIBLE_DEVICES"},
        "gpus_hidden": env.get("NVIDIA_VISIBLE_DEVICES") == "void",
        "workspace": [(v["persistentVolumeClaim"]["claimName"], path) for path, v in mounts.items()
                      if "persistentVolumeClaim" in v],
        "working_dir": container["workingDir"],
    }


PROFILES = {
    "defaults": PROFILE,
    "a capability added back": dataclasses.replace(PROFILE, cap_add=("NET_BIND_SERVICE",)),
    "more scratch space, other limits": dataclasses.replace(
        PROFILE, tmpfs={"/tmp": 2 * GIB, "/var/tmp": 256 * 1024**2}, shm_size=4 * GIB, mem_limit=16 * GIB,
        cpu_limit=1.5),
}
#: what the hub's table hands out on each backend for the same number of GPUs
GRANTS = {
    0: (GpuGrant(), GpuGrant()),
    2: (GpuGrant(("GPU-aaaa", "GPU-bbbb"), SINCE), scheduler_gpus("nvidia.com/gpu#0", "nvidia.com/gpu#1")),
}


@pytest.mark.parametrize("profile", PROFILES.values(), ids=PROFILES.keys())
@pytest.mark.parametrize("gpus", GRANTS, ids=lambda n: f"{n} GPUs")
def test_the_docker_spec_and_the_pod_say_the_same(profile, gpus):
    docker_grant, pod_grant = GRANTS[gpus]
    on_docker = docker_facts(build_server_spec(decision(profile=profile, gpus=docker_grant), DOCKER_PLACEMENT, {}, {}))
    on_kubernetes = pod_facts(make_pod(decision(profile=profile, gpus=pod_grant), PLACEMENT))
    assert on_docker == on_kubernetes
    assert on_docker["gpu_count"] == gpus and on_docker["gpus_hidden"] is (gpus == 0)


def test_the_facts_are_read_from_the_renderings_not_assumed():
    # the comparison would see a renderer that drifted: break the Pod and it differs
    pod = make_pod(decision(), PLACEMENT)
    pod["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"] = False
    pod["spec"]["volumes"][1]["emptyDir"]["sizeLimit"] = "2Gi"
    on_docker = docker_facts(build_server_spec(decision(), DOCKER_PLACEMENT, {}, {}))
    differs = {key for key, value in pod_facts(pod).items() if on_docker[key] != value}
    assert differs == {"read_only_root", "scratch"}
