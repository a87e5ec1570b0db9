"""Every kind of manifest HardenedKubeSpawner sends, as its builders make them: the Pod
(with and without GPUs, with extra scratch space and a capability), the workspace claim,
the UID claim and the NetworkPolicy (both egress modes). The schema and policy checkers
(test_kube_manifests) and the podman run (tests/integration/test_kube_podman) read these."""

import dataclasses

from kube_fixtures import ALICE, GIB, PLACEMENT, PROFILE, decision, pod, scheduler_gpus

from hardened_spawner.kubernetes.objects import (
    NetworkRule,
    make_network_policy,
    make_uid_claim,
    make_workspace_claim,
)

RULE = NetworkRule(hub_labels={"app": "jupyterhub", "component": "hub"},
                   proxy_labels={"app": "jupyterhub", "component": "proxy"},
                   dns_labels={"k8s-app": "kube-dns"}, hub_port=8081, egress="internet")


def generated() -> dict[str, dict]:
    """name -> manifest."""
    roomy = dataclasses.replace(PROFILE, tmpfs={"/tmp": GIB, "/var/tmp": 256 * 1024**2}, cap_add=("NET_BIND_SERVICE",))
    return {
        "pod": pod(),
        "pod-gpus": pod(decision(gpus=scheduler_gpus("nvidia.com/gpu#0", "nvidia.com/mig-1g.10gb#1"))),
        "pod-scratch-and-capability": pod(decision(profile=roomy)),
        "pod-pinned-to-nodes": pod(placement=dataclasses.replace(
            PLACEMENT, node_selector={"nvidia.com/gpu.present": "true"},
            tolerations=({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},))),
        "workspace-claim": make_workspace_claim("workspace-alice", "jhub", "alice@example.org", ALICE,
                                                capacity="10Gi", storage_class="standard",
                                                access_modes=("ReadWriteOnce",), version="0.1.0"),
        "uid-claim": make_uid_claim("alice@example.org", ALICE, "workspace-alice", "jhub", "0.1.0"),
        "network-policy": make_network_policy("jupyter-alice", "jhub", 8888, RULE),
        "network-policy-egress-none": make_network_policy(
            "jupyter-alice", "jhub", 8888,
            dataclasses.replace(RULE, egress="none", allow_cidrs=("10.20.30.0/24",), allow_dns=("10.0.0.53",))),
    }
