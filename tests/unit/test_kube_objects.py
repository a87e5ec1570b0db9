"""kubernetes.objects: each builder's output against a complete literal manifest (as
kubespawner's own tests of `objects.make_pod` do), one test per option."""

import copy
import dataclasses

import pytest
from kube_fixtures import ALICE, GIB, PLACEMENT, PROFILE, decision, pod, scheduler_gpus

from hardened_spawner.core.profile import SecurityProfile
from hardened_spawner.kubernetes.objects import (
    NetworkRule,
    cpu_quantity,
    make_network_policy,
    make_uid_claim,
    make_workspace_claim,
    memory_quantity,
    owner_key,
)

D = "hardened-spawner.jupyter.org"
ALICE_KEY = owner_key("alice@example.org")
HOME = "/home/alice"
ENV = {
    "CUDA_CACHE_PATH": f"{HOME}/.cache/nv", "HF_HOME": f"{HOME}/.cache/huggingface", "HOME": HOME,
    "IPYTHONDIR": f"{HOME}/.ipython", "JUPYTERHUB_API_TOKEN": "secret", "JUPYTER_CONFIG_DIR": f"{HOME}/.jupyter",
    "JUPYTER_DATA_DIR": f"{HOME}/.local/share/jupyter", "JUPYTER_RUNTIME_DIR": "/tmp/jupyter-runtime",
    "LOGNAME": "alice", "MPLCONFIGDIR": f"{HOME}/.config/matplotlib", "NVIDIA_VISIBLE_DEVICES": "void",
    "PIP_CACHE_DIR": f"{HOME}/.cache/pip", "PYTHONUSERBASE": f"{HOME}/.local", "SHELL": "/bin/bash",
    "TMPDIR": "/tmp", "TORCHINDUCTOR_CACHE_DIR": f"{HOME}/.cache/torchinductor",
    "TORCH_HOME": f"{HOME}/.cache/torch", "TRITON_CACHE_DIR": f"{HOME}/.cache/triton", "USER": "alice",
    "XDG_CACHE_HOME": f"{HOME}/.cache", "XDG_CONFIG_HOME": f"{HOME}/.config", "XDG_DATA_HOME": f"{HOME}/.local/share",
}
SECURITY_CONTEXT = {
    "runAsUser": 300001, "runAsGroup": 300001, "runAsNonRoot": True, "allowPrivilegeEscalation": False,
    "privileged": False, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}
EXPECTED_POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {
        "name": "jupyter-alice",
        "namespace": "jhub",
        "labels": {
            "app": "jupyterhub", "component": "singleuser-server", "hub.jupyter.org/username": "alice",
            f"{D}/managed": "true", f"{D}/role": "server", f"{D}/uid": "300001",
            f"{D}/owner-key": ALICE_KEY, f"{D}/server": "jupyter-alice",
        },
        "annotations": {
            f"{D}/owner": "alice@example.org", f"{D}/server-name": "", f"{D}/gid": "300001",
            f"{D}/workspace": "workspace-alice", f"{D}/policy-fingerprint": PROFILE.fingerprint(),
            f"{D}/gpus": "", f"{D}/gpus-since": "", f"{D}/version": "0.1.0",
        },
    },
    "spec": {
        "securityContext": {
            "runAsUser": 300001, "runAsGroup": 300001, "runAsNonRoot": True, "fsGroup": 300001,
            "fsGroupChangePolicy": "OnRootMismatch", "seccompProfile": {"type": "RuntimeDefault"},
        },
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "hostNetwork": False,
        "hostPID": False,
        "hostIPC": False,
        "restartPolicy": "Never",
        "hostname": "alice",
        "containers": [{
            "name": "notebook",
            "image": "registry.example.org/singleuser:1.2",
            "imagePullPolicy": "IfNotPresent",
            "args": ["jupyterhub-singleuser"],
            "env": [{"name": k, "value": v} for k, v in ENV.items()],
            "workingDir": HOME,
            "ports": [{"name": "notebook-port", "containerPort": 8888, "protocol": "TCP"}],
            "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": "4", "memory": "8Gi"}},
            "securityContext": SECURITY_CONTEXT,
            "volumeMounts": [
                {"name": "workspace", "mountPath": HOME},
                {"name": "tmp", "mountPath": "/tmp"},
                {"name": "dshm", "mountPath": "/dev/shm"},
                {"name": "identity", "mountPath": "/etc/passwd", "subPath": "passwd", "readOnly": True},
                {"name": "identity", "mountPath": "/etc/group", "subPath": "group", "readOnly": True},
            ],
            "readinessProbe": {"httpGet": {"path": "/user/alice/api", "port": "notebook-port"},
                               "periodSeconds": 10, "failureThreshold": 3},
        }],
        "volumes": [
            {"name": "workspace", "persistentVolumeClaim": {"claimName": "workspace-alice"}},
            {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}},
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}},
            {"name": "identity", "configMap": {"name": "hardened-spawner-uid-300001", "items": [
                {"key": "passwd", "path": "passwd"}, {"key": "group", "path": "group"}]}},
        ],
    },
}


def _container(manifest: dict) -> dict:
    return manifest["spec"]["containers"][0]


def test_make_pod():
    assert pod() == EXPECTED_POD


def test_make_pod_with_gpu_slots_asks_for_their_resources_and_lets_the_device_plugin_say_which():
    manifest = pod(decision(gpus=scheduler_gpus("nvidia.com/gpu#0", "nvidia.com/gpu#1", "nvidia.com/mig-1g.10gb#3")))
    expected = copy.deepcopy(EXPECTED_POD)
    expected["metadata"]["annotations"].update({
        f"{D}/gpus": "nvidia.com/gpu#0,nvidia.com/gpu#1,nvidia.com/mig-1g.10gb#3",
        f"{D}/gpus-since": "2026-01-01T00:00:00+00:00",
    })
    gpus = {"nvidia.com/gpu": "2", "nvidia.com/mig-1g.10gb": "1"}
    _container(expected)["resources"] = {"requests": {"cpu": "500m", "memory": "1Gi", **gpus},
                                         "limits": {"cpu": "4", "memory": "8Gi", **gpus}}
    # no NVIDIA_VISIBLE_DEVICES: the device plugin sets it for the devices it picked
    _container(expected)["env"] = [{"name": k, "value": v} for k, v in ENV.items() if k != "NVIDIA_VISIBLE_DEVICES"]
    assert manifest == expected


def test_make_pod_adds_back_only_the_profiles_capabilities():
    profile = dataclasses.replace(PROFILE, cap_add=("NET_BIND_SERVICE",))
    assert _container(pod(decision(profile=profile)))["securityContext"]["capabilities"] == {
        "drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}


def test_make_pod_extra_tmpfs_become_memory_emptydirs_sized_alike():
    profile = dataclasses.replace(PROFILE, tmpfs={"/tmp": GIB, "/var/tmp": 256 * 1024**2}, shm_size=2 * GIB)
    manifest = pod(decision(profile=profile))
    assert manifest["spec"]["volumes"][1:4] == [
        {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}},
        {"name": "tmpfs-1", "emptyDir": {"medium": "Memory", "sizeLimit": "256Mi"}},
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "2Gi"}},
    ]
    assert _container(manifest)["volumeMounts"][1:4] == [
        {"name": "tmp", "mountPath": "/tmp"}, {"name": "tmpfs-1", "mountPath": "/var/tmp"},
        {"name": "dshm", "mountPath": "/dev/shm"},
    ]


def test_make_pod_requests_never_exceed_limits():
    placement = dataclasses.replace(PLACEMENT, cpu_request=16.0, memory_request=64 * GIB)
    assert _container(pod(placement=placement))["resources"]["requests"] == {"cpu": "4", "memory": "8Gi"}


def test_make_pod_node_selector_tolerations_and_hub_id():
    placement = dataclasses.replace(PLACEMENT, node_selector={"gpu": "h200"}, hub_id="abc",
                                    tolerations=({"key": "gpu", "operator": "Exists", "effect": "NoSchedule"},))
    manifest = pod(placement=placement)
    assert manifest["spec"]["nodeSelector"] == {"gpu": "h200"}
    assert manifest["spec"]["tolerations"] == [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert manifest["metadata"]["annotations"][f"{D}/hub"] == "abc"


def test_make_pod_shares_nothing_with_its_inputs():
    manifest = pod()
    manifest["spec"]["containers"][0]["args"].append("--allow-root")
    manifest["metadata"]["labels"]["x"] = "y"
    assert pod() == EXPECTED_POD


def test_make_workspace_claim():
    assert make_workspace_claim("workspace-alice", "jhub", "alice@example.org", ALICE, capacity="10Gi",
                                storage_class="fast", access_modes=("ReadWriteOnce",), version="0.1.0") == {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": "workspace-alice",
            "namespace": "jhub",
            "labels": {f"{D}/managed": "true", f"{D}/role": "workspace", f"{D}/uid": "300001",
                       f"{D}/owner-key": ALICE_KEY},
            "annotations": {f"{D}/owner": "alice@example.org", f"{D}/gid": "300001", f"{D}/version": "0.1.0"},
        },
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "10Gi"}},
                 "storageClassName": "fast"},
    }


def test_make_workspace_claim_without_a_storage_class_takes_the_clusters_default():
    claim = make_workspace_claim("w", "jhub", "alice@example.org", ALICE, capacity="1Gi", storage_class=None,
                                 access_modes=("ReadWriteOnce",), version="0.1.0")
    assert "storageClassName" not in claim["spec"]


def test_make_workspace_claim_carries_storage_extra_labels():
    claim = make_workspace_claim("workspace-alice", "jhub", "alice@example.org", ALICE, capacity="10Gi",
                                 storage_class=None, access_modes=("ReadWriteOnce",), version="0.1.0",
                                 extra_labels={"backup.example.org/policy": "daily", "team": "ml"})
    assert claim["metadata"] == {
        "name": "workspace-alice",
        "namespace": "jhub",
        "labels": {"backup.example.org/policy": "daily", "team": "ml", f"{D}/managed": "true",
                   f"{D}/role": "workspace", f"{D}/uid": "300001", f"{D}/owner-key": ALICE_KEY},
        "annotations": {f"{D}/owner": "alice@example.org", f"{D}/gid": "300001", f"{D}/version": "0.1.0"},
    }


def test_storage_extra_labels_never_replace_or_add_the_spawners_own():
    # the hub-start check refuses these (test_kube_pss_hatches); the builder leaves them out anyway
    claim = make_workspace_claim("workspace-alice", "jhub", "alice@example.org", ALICE, capacity="10Gi",
                                 storage_class=None, access_modes=("ReadWriteOnce",), version="0.1.0",
                                 extra_labels={f"{D}/uid": "0", f"{D}/managed": "false", f"{D}/role": "uid-claim",
                                               f"{D}/owner-key": owner_key("bob"), f"{D}/server": "jupyter-bob",
                                               "team": "ml"})
    assert claim["metadata"]["labels"] == {"team": "ml", f"{D}/managed": "true", f"{D}/role": "workspace",
                                           f"{D}/uid": "300001", f"{D}/owner-key": ALICE_KEY}


def test_make_workspace_claims_default_extra_labels_are_none_and_stay_none():
    def claim():
        return make_workspace_claim("w", "jhub", "alice@example.org", ALICE, capacity="1Gi", storage_class=None,
                                    access_modes=("ReadWriteOnce",), version="0.1.0")

    claim()["metadata"]["labels"]["x"] = "y"  # a caller changing one claim changes no later one
    assert claim()["metadata"]["labels"] == {f"{D}/managed": "true", f"{D}/role": "workspace", f"{D}/uid": "300001",
                                             f"{D}/owner-key": ALICE_KEY}


def test_make_uid_claim_carries_the_account_files():
    assert make_uid_claim("alice@example.org", ALICE, "workspace-alice", "jhub", "0.1.0") == {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "hardened-spawner-uid-300001",
            "namespace": "jhub",
            "labels": {f"{D}/managed": "true", f"{D}/role": "uid-claim", f"{D}/uid": "300001",
                       f"{D}/owner-key": ALICE_KEY},
            "annotations": {f"{D}/owner": "alice@example.org", f"{D}/workspace": "workspace-alice",
                            f"{D}/version": "0.1.0"},
        },
        "data": {
            "passwd": "root:x:0:0:root:/root:/usr/sbin/nologin\n"
                      "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
                      "alice:x:300001:300001::/home/alice:/bin/bash\n",
            "group": "root:x:0:\nnogroup:x:65534:\nalice:x:300001:\n",
        },
    }


RULE = NetworkRule(hub_labels={"app": "jupyterhub", "component": "hub"},
                   proxy_labels={"app": "jupyterhub", "component": "proxy"},
                   dns_labels={"k8s-app": "kube-dns"}, hub_port=8081, egress="internet")
HUB_AND_DNS = [
    {"to": [{"podSelector": {"matchLabels": {"app": "jupyterhub", "component": "hub"}}}],
     "ports": [{"port": 8081, "protocol": "TCP"}]},
    {"to": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
     "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]},
]


def test_make_network_policy_egress_internet():
    assert make_network_policy("jupyter-alice", "jhub", 8888, RULE) == {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "jupyter-alice", "namespace": "jhub",
                     "labels": {f"{D}/managed": "true", f"{D}/role": "server", f"{D}/server": "jupyter-alice"}},
        "spec": {
            "podSelector": {"matchLabels": {f"{D}/server": "jupyter-alice"}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "jupyterhub", "component": "hub"}}},
                                  {"podSelector": {"matchLabels": {"app": "jupyterhub", "component": "proxy"}}}],
                         "ports": [{"port": 8888, "protocol": "TCP"}]}],
            "egress": [*HUB_AND_DNS, {"to": [
                {"ipBlock": {"cidr": "0.0.0.0/0", "except": ["169.254.0.0/16", "10.0.0.0/8", "172.16.0.0/12",
                                                             "192.168.0.0/16", "100.64.0.0/10"]}},
                {"ipBlock": {"cidr": "::/0", "except": ["fe80::/10", "fc00::/7"]}},
            ]}],
        },
    }


def test_make_network_policy_egress_none_opens_only_the_hub_dns_and_the_admins_ranges():
    rule = dataclasses.replace(RULE, egress="none", allow_cidrs=("10.20.30.0/24",), allow_dns=("10.0.0.53", "fd00::53"))
    assert make_network_policy("jupyter-alice", "jhub", 8888, rule)["spec"]["egress"] == [
        *HUB_AND_DNS,
        {"to": [{"ipBlock": {"cidr": "10.20.30.0/24"}}]},
        {"to": [{"ipBlock": {"cidr": "10.0.0.53/32"}}, {"ipBlock": {"cidr": "fd00::53/128"}}],
         "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]},
    ]


def test_make_network_policy_asks_node_local_dns_caches_on_port_53_only():
    rule = dataclasses.replace(RULE, dns_cidrs=("169.254.20.10/32", "10.96.0.10/32", "fd00::a/128"))
    egress = make_network_policy("jupyter-alice", "jhub", 8888, rule)["spec"]["egress"]
    assert egress[1] == {
        "to": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}},
               {"ipBlock": {"cidr": "169.254.20.10/32"}}, {"ipBlock": {"cidr": "10.96.0.10/32"}},
               {"ipBlock": {"cidr": "fd00::a/128"}}],
        "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}],
    }
    # the rest is unchanged: link-local (169.254.20.10 too) stays blocked on every other port
    assert egress[0] == HUB_AND_DNS[0]
    assert egress[2:] == make_network_policy("jupyter-alice", "jhub", 8888, RULE)["spec"]["egress"][2:]
    assert "169.254.0.0/16" in egress[2]["to"][0]["ipBlock"]["except"]


def test_make_network_policy_without_dns_cidrs_asks_only_the_dns_pods():
    assert make_network_policy("jupyter-alice", "jhub", 8888, RULE)["spec"]["egress"][1] == HUB_AND_DNS[1]


@pytest.mark.parametrize("size, expected", [(GIB, "1Gi"), (8 * GIB, "8Gi"), (512 * 1024**2, "512Mi"), (1000, "1000")])
def test_memory_quantity(size, expected):
    assert memory_quantity(size) == expected


@pytest.mark.parametrize("cpus, expected", [(4.0, "4"), (0.5, "500m"), (1.25, "1250m"), (0.001, "1m")])
def test_cpu_quantity(cpus, expected):
    assert cpu_quantity(cpus) == expected


def test_owner_key_is_label_safe_and_stable():
    key = owner_key("Alice.Smith+ml@example.org")
    assert key == owner_key("Alice.Smith+ml@example.org") and len(key) == 40 and key.isalnum()
    assert key != owner_key("alice.smith+ml@example.org")


def test_the_profile_dataclass_is_what_the_pod_renders():
    # every field of SecurityProfile is either rendered in the pod or deliberately Docker's
    rendered = {"mem_limit", "cpu_limit", "shm_size", "tmpfs", "cap_add"}
    dockers = {"pids_limit", "seccomp_profile", "apparmor_profile", "healthcheck"}  # README: Kubernetes section
    assert {f.name for f in dataclasses.fields(SecurityProfile)} == rendered | dockers
