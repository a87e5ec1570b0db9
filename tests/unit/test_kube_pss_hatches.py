"""The Pod Security Standards items only a pod has (AppArmor as a field and as the older
annotation, SELinux options, a probe's or lifecycle hook's ``host``) and capabilities
beyond what *restricted* allows, sent through each of kubespawner's escape hatches
(`extra_annotations`, `extra_pod_config`, `extra_container_config`, `modify_pod_hook`, and
`cap_add` itself, for a hub whose start check was skipped): the spawn is refused with the
problem named, and no pod is sent. Each case's twin, the same hatch without the violation,
starts, so none of these tests passes by construction.

Against the fake API (`fake_kube`), as test_kube_spawner does; not integration tests. Also
the hub-start checks of the two settings this change adds (`network_dns_cidrs`,
`storage_extra_labels`).
"""


import pytest
from fake_kube import fake_cluster, kube_spawner, sent_pods
from kubernetes_asyncio.client import V1AppArmorProfile, V1SELinuxOptions
from traitlets import TraitError

from hardened_spawner.errors import SpawnRefused

APPARMOR = "container.apparmor.security.beta.kubernetes.io/"
METADATA = "169.254.169.254"
#: what the spawner sets for alice (UID uid_min + hub user id 1): an escape hatch that sets
#: a securityContext replaces it whole (kubespawner's update_k8s_model), so the cases below
#: start from it and change one thing
POD_CONTEXT = {"runAsUser": 200001, "runAsGroup": 200001, "runAsNonRoot": True, "fsGroup": 200001,
               "fsGroupChangePolicy": "OnRootMismatch", "seccompProfile": {"type": "RuntimeDefault"}}
CONTAINER_CONTEXT = {"runAsUser": 200001, "runAsGroup": 200001, "runAsNonRoot": True,
                     "allowPrivilegeEscalation": False, "privileged": False, "readOnlyRootFilesystem": True,
                     "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}


@pytest.fixture
async def cluster(monkeypatch, tmp_path):
    return fake_cluster(monkeypatch, tmp_path / "audit.jsonl")


make_spawner = kube_spawner


def _sidecar(**changes) -> dict:
    """A restartable init container (a sidecar) that keeps the policy, with ``changes``."""
    return {"name": "sidecar", "image": "registry.example.org/sidecar:1", "restartPolicy": "Always",
            "securityContext": dict(CONTAINER_CONTEXT),
            "resources": {"limits": {"cpu": "100m", "memory": "64Mi"}}, **changes}


def _hook(change):
    def hook(spawner, pod):
        change(pod)
        return pod
    return hook


def _annotate(value):
    def change(pod):
        pod.metadata.annotations[f"{APPARMOR}notebook"] = value
    return change


def _container_apparmor(kind):
    def change(pod):
        pod.spec.containers[0].security_context.app_armor_profile = V1AppArmorProfile(type=kind)
    return change


def _container_selinux(**options):
    def change(pod):
        pod.spec.containers[0].security_context.se_linux_options = V1SELinuxOptions(**options)
    return change


def _readiness_host(host):
    def change(pod):
        pod.spec.containers[0].readiness_probe.http_get.host = host
    return change


def _capabilities(*added):
    def change(pod):
        pod.spec.containers[0].security_context.capabilities.add = list(added)
    return change


#: name -> (the config that breaks the item, the same config that keeps it, words the refusal says)
CASES = {
    # AppArmor
    "apparmor annotation, extra_annotations": (
        {"extra_annotations": {f"{APPARMOR}notebook": "unconfined"}},
        {"extra_annotations": {f"{APPARMOR}notebook": "runtime/default"}},
        f"AppArmor would be switched off for container 'notebook' ('unconfined') "
        f"(metadata.annotations[{APPARMOR}notebook], set through extra_annotations)"),
    "apparmor annotation, modify_pod_hook": (
        {"modify_pod_hook": _hook(_annotate("unconfined"))},
        {"modify_pod_hook": _hook(_annotate("localhost/k8s-notebook"))},
        "AppArmor would be switched off for container 'notebook' ('unconfined')"),
    "apparmor field, extra_pod_config": (
        {"extra_pod_config": {"securityContext": {**POD_CONTEXT, "appArmorProfile": {"type": "Unconfined"}}}},
        {"extra_pod_config": {"securityContext": {**POD_CONTEXT, "appArmorProfile": {"type": "RuntimeDefault"}}}},
        "AppArmor would be switched off (Unconfined) (spec.securityContext.appArmorProfile.type, "
        "set through extra_pod_config)"),
    "apparmor field, extra_container_config": (
        {"extra_container_config": {"securityContext": {**CONTAINER_CONTEXT,
                                                        "appArmorProfile": {"type": "Unconfined"}}}},
        {"extra_container_config": {"securityContext": {**CONTAINER_CONTEXT,
                                                        "appArmorProfile": {"type": "RuntimeDefault"}}}},
        "AppArmor would be switched off (Unconfined) (spec.containers[notebook].securityContext.appArmorProfile.type"),
    "apparmor field, modify_pod_hook": (
        {"modify_pod_hook": _hook(_container_apparmor("Unconfined"))},
        {"modify_pod_hook": _hook(_container_apparmor("RuntimeDefault"))},
        "AppArmor would be switched off (Unconfined)"),
    # SELinux
    "selinux type, extra_pod_config": (
        {"extra_pod_config": {"securityContext": {**POD_CONTEXT, "seLinuxOptions": {"type": "spc_t"}}}},
        {"extra_pod_config": {"securityContext": {**POD_CONTEXT, "seLinuxOptions": {"type": "container_t"}}}},
        "The SELinux type would be 'spc_t', not one of the types that confine a container"),
    "selinux user, extra_container_config": (
        {"extra_container_config": {"securityContext": {**CONTAINER_CONTEXT,
                                                        "seLinuxOptions": {"user": "system_u"}}}},
        {"extra_container_config": {"securityContext": {**CONTAINER_CONTEXT,
                                                        "seLinuxOptions": {"level": "s0:c123,c456"}}}},
        "A custom SELinux user would be set ('system_u') "
        "(spec.containers[notebook].securityContext.seLinuxOptions.user, set through extra_container_config)"),
    "selinux role, modify_pod_hook": (
        {"modify_pod_hook": _hook(_container_selinux(role="system_r"))},
        {"modify_pod_hook": _hook(_container_selinux(type="container_init_t"))},
        "A custom SELinux role would be set ('system_r')"),
    # a probe's or lifecycle hook's host
    "liveness probe host, extra_container_config": (
        {"extra_container_config": {"livenessProbe": {"httpGet": {"host": METADATA, "path": "/latest/meta-data/",
                                                                  "port": 80}}}},
        {"extra_container_config": {"livenessProbe": {"httpGet": {"path": "/user/alice/api",
                                                                  "port": "notebook-port"}}}},
        f"The kubelet would connect to '{METADATA}' from the node for a probe or hook, past the server's "
        "NetworkPolicy (spec.containers[notebook].livenessProbe.httpGet.host, set through extra_container_config)"),
    "preStop hook host, extra_container_config": (
        {"extra_container_config": {"lifecycle": {"preStop": {"httpGet": {"host": METADATA, "path": "/",
                                                                          "port": 80}}}}},
        {"extra_container_config": {"lifecycle": {"preStop": {"exec": {"command": ["true"]}}}}},
        "(spec.containers[notebook].lifecycle.preStop.httpGet.host"),
    "a sidecar's startup probe host, extra_pod_config": (
        {"extra_pod_config": {"initContainers": [_sidecar(startupProbe={"tcpSocket": {"host": METADATA,
                                                                                      "port": 80}})]}},
        {"extra_pod_config": {"initContainers": [_sidecar(startupProbe={"tcpSocket": {"port": 8080}})]}},
        f"The kubelet would connect to '{METADATA}' from the node for a probe or hook, past the server's "
        "NetworkPolicy (spec.initContainers[sidecar].startupProbe.tcpSocket.host"),
    "readiness probe host, modify_pod_hook": (
        {"modify_pod_hook": _hook(_readiness_host(METADATA))},
        {"modify_pod_hook": _hook(_readiness_host(""))},  # "" is the pod's own address, as PSS allows
        "(spec.containers[notebook].readinessProbe.httpGet.host"),
    # capabilities restricted forbids, though cap_add lists them (the hub-start check skipped)
    "CHOWN, cap_add": (
        {"cap_add": ["CHOWN"]},
        {"cap_add": ["NET_BIND_SERVICE"]},
        "Capabilities the Pod Security Standards' restricted profile forbids would be added: CHOWN "
        "(spec.containers[notebook].securityContext.capabilities.add, set through HardenedKubeSpawner.cap_add). "
        "Fix: on Kubernetes add only NET_BIND_SERVICE"),
    "CHOWN, extra_container_config": (
        {"cap_add": ["CHOWN"], "extra_container_config": {"securityContext": {
            **CONTAINER_CONTEXT, "capabilities": {"drop": ["ALL"], "add": ["CHOWN"]}}}},
        {"cap_add": ["CHOWN"], "extra_container_config": {"securityContext": CONTAINER_CONTEXT}},
        "restricted profile forbids would be added: CHOWN"),
    # (a sidecar's capability not in cap_add is the allowlist's refusal; with CHOWN in cap_add
    # the server's container would carry it too, the case above)
    "CHOWN, a sidecar in extra_pod_config": (
        {"extra_pod_config": {"initContainers": [_sidecar(securityContext={
            **CONTAINER_CONTEXT, "capabilities": {"drop": ["ALL"], "add": ["CHOWN"]}})]}},
        {"cap_add": ["NET_BIND_SERVICE"], "extra_pod_config": {"initContainers": [_sidecar(securityContext={
            **CONTAINER_CONTEXT, "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}})]}},
        "Capabilities outside the allowlist would be added: CHOWN (spec.initContainers[sidecar].securityContext"),
    "CHOWN, modify_pod_hook": (
        {"cap_add": ["CHOWN"], "modify_pod_hook": _hook(_capabilities("CHOWN"))},
        {"cap_add": ["CHOWN"], "modify_pod_hook": _hook(_capabilities())},
        "restricted profile forbids would be added: CHOWN"),
}


@pytest.mark.parametrize("bad, good, words", CASES.values(), ids=CASES.keys())
async def test_each_pss_item_through_each_hatch_is_refused_and_nothing_is_sent(cluster, bad, good, words):
    with pytest.raises(SpawnRefused) as refused:
        await make_spawner(cluster, **bad).start()
    message = refused.value.jupyterhub_message
    problems = [line for line in message.splitlines() if line.startswith("- ")]
    assert len(problems) == 1 and words in problems[0], message  # this problem, and only it
    assert message.startswith("The server was not started because its container would break the security policy:")
    assert refused.value.status_code == 403
    assert sent_pods(cluster) == []


@pytest.mark.parametrize("bad, good, words", CASES.values(), ids=CASES.keys())
async def test_the_same_hatch_without_the_violation_starts(cluster, bad, good, words):
    spawner = make_spawner(cluster, **good)
    assert await spawner.start() == "http://10.0.0.5:8888"
    assert len(sent_pods(cluster)) == 1


async def test_what_the_hatch_sets_reaches_the_pod_that_is_judged(cluster):
    # the twins above start because the hatch's value is allowed, not because it was lost
    await make_spawner(cluster, extra_annotations={f"{APPARMOR}notebook": "runtime/default"},
                       extra_pod_config={"securityContext": {**POD_CONTEXT, "seLinuxOptions": {"type": "container_t"}}},
                       extra_container_config={"livenessProbe": {"httpGet": {"path": "/user/alice/api",
                                                                             "port": "notebook-port"}}}).start()
    (pod,) = sent_pods(cluster)
    assert pod["metadata"]["annotations"][f"{APPARMOR}notebook"] == "runtime/default"
    assert pod["spec"]["securityContext"]["seLinuxOptions"] == {"type": "container_t"}
    assert pod["spec"]["containers"][0]["livenessProbe"]["httpGet"] == {"path": "/user/alice/api",
                                                                        "port": "notebook-port"}


# --- the hub-start checks of the settings this change adds -----------------------------


async def test_network_dns_cidrs_defaults_to_the_node_local_dns_cache(cluster):
    assert make_spawner(cluster).network_dns_cidrs == ["169.254.20.10/32"]


async def test_network_dns_cidrs_are_normalised(cluster):
    spawner = make_spawner(cluster, network_dns_cidrs=["10.96.0.10", "fd00::a", "169.254.169.254/32"])
    assert spawner.network_dns_cidrs == ["10.96.0.10/32", "fd00::a/128", "169.254.169.254/32"]


@pytest.mark.parametrize("value, message", [
    ("kube-dns", "HardenedKubeSpawner.network_dns_cidrs: 'kube-dns' is not an address range"),
    ("10.96.0.10/12", "HardenedKubeSpawner.network_dns_cidrs: '10.96.0.10/12' is not an address range "
                      "(10.96.0.10/12 has host bits set)"),
    ("0.0.0.0/0", "HardenedKubeSpawner.network_dns_cidrs: '0.0.0.0/0' would open port 53 of every address"),
    ("::/0", "HardenedKubeSpawner.network_dns_cidrs: '::/0' would open port 53 of every address"),
])
async def test_a_bad_network_dns_cidr_stops_the_hub_with_the_settings_name(cluster, value, message):
    with pytest.raises(TraitError) as error:
        make_spawner(cluster, network_dns_cidrs=["169.254.20.10/32", value])
    assert str(error.value).startswith(message)


async def test_storage_extra_labels_in_the_spawners_own_domain_stop_the_hub(cluster):
    with pytest.raises(TraitError) as error:
        make_spawner(cluster, storage_extra_labels={"team": "ml", "hardened-spawner.jupyter.org/uid": "0"})
    assert str(error.value) == (
        "HardenedKubeSpawner.storage_extra_labels: hardened-spawner.jupyter.org/uid is the spawner's own (the "
        "workspace claim's labels say whose UID its files carry); remove it.")


async def test_other_storage_extra_labels_pass_the_hub_start_check(cluster):
    spawner = make_spawner(cluster, storage_extra_labels={"team": "ml", "backup.example.org/policy": "daily"})
    spawner.check_config()
    assert spawner.storage_extra_labels == {"team": "ml", "backup.example.org/policy": "daily"}
