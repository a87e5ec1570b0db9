"""Every generated manifest, checked by other people's code: the Kubernetes API's own
OpenAPI schemas (kubernetes-validate, strict: an unknown field fails), the kubernetes
client's models (which load every field back), and the Pod Security Standards'
*restricted* rules as the PSS document words them, for the items checkov (test_checkov)
does not cover. The project's own guard is not used here: it cannot prove itself."""

import dataclasses
import json

import kubernetes.client
import kubernetes_validate
import pytest
from kube_fixtures import ALICE
from kube_manifests import RULE, generated

from hardened_spawner.kubernetes.objects import make_network_policy, make_workspace_claim

SCHEMA_VERSION = kubernetes_validate.latest_version()
MANIFESTS = generated()
MODELS = {"Pod": "V1Pod", "PersistentVolumeClaim": "V1PersistentVolumeClaim", "ConfigMap": "V1ConfigMap",
          "NetworkPolicy": "V1NetworkPolicy"}


@pytest.mark.parametrize("name", MANIFESTS)
def test_the_apis_schema_accepts_it_strictly(name):
    kubernetes_validate.validate(MANIFESTS[name], SCHEMA_VERSION, strict=True)


def test_the_schema_check_is_strict_enough_to_fail():
    bad = json.loads(json.dumps(MANIFESTS["pod"]))
    bad["spec"]["containers"][0]["securityContext"]["readOnlyRootFileSystem"] = True  # a typo'd field
    with pytest.raises(kubernetes_validate.ValidationError, match="readOnlyRootFileSystem"):
        kubernetes_validate.validate(bad, SCHEMA_VERSION, strict=True)


#: what the settings this file's builders gained can add: the node-local DNS ranges of a
#: NetworkPolicy (`network_dns_cidrs`) and the workspace claim's extra labels (`storage_extra_labels`)
MORE = {
    "network-policy-node-local-dns": make_network_policy(
        "jupyter-alice", "jhub", 8888,
        dataclasses.replace(RULE, egress="none", dns_cidrs=("169.254.20.10/32", "10.96.0.10/32", "fd00::a/128"))),
    "workspace-claim-extra-labels": make_workspace_claim(
        "workspace-alice", "jhub", "alice@example.org", ALICE, capacity="10Gi", storage_class="standard",
        access_modes=("ReadWriteOnce",), version="0.1.0",
        extra_labels={"backup.example.org/policy": "daily", "team": "ml"}),
}


@pytest.mark.parametrize("name", MORE)
def test_the_apis_schema_and_the_clients_models_accept_what_the_new_settings_add(name):
    manifest = MORE[name]
    kubernetes_validate.validate(manifest, SCHEMA_VERSION, strict=True)
    client = kubernetes.client.ApiClient()
    model = client.deserialize(json.dumps(manifest), MODELS[manifest["kind"]], "application/json")
    assert client.sanitize_for_serialization(model) == manifest


def test_the_schema_check_refuses_a_bad_dns_rule():
    # the check above can fail: a port 53 rule whose ipBlock misspells its field is not a NetworkPolicy
    bad = json.loads(json.dumps(MORE["network-policy-node-local-dns"]))
    bad["spec"]["egress"][1]["to"][1]["ipBlock"] = {"cidrs": "169.254.20.10/32"}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, SCHEMA_VERSION, strict=True)


@pytest.mark.parametrize("name", MANIFESTS)
def test_the_kubernetes_clients_models_load_it_whole(name):
    manifest = MANIFESTS[name]
    client = kubernetes.client.ApiClient()
    model = client.deserialize(json.dumps(manifest), MODELS[manifest["kind"]], "application/json")
    assert client.sanitize_for_serialization(model) == manifest  # nothing dropped, nothing added


# --- the PSS restricted profile, rule by rule, from its text -------------------------
# https://kubernetes.io/docs/concepts/security/pod-security-standards/ ("Restricted"; the
# baseline rules it includes are checked by checkov, see test_checkov)

PODS = {name: m for name, m in MANIFESTS.items() if m["kind"] == "Pod"}


def _containers(pod):
    spec = pod["spec"]
    return [*spec.get("initContainers", []), *spec["containers"], *spec.get("ephemeralContainers", [])]


@pytest.mark.parametrize("name", PODS)
def test_pss_volume_types(name):
    # "In addition to restricting HostPath volumes, the restricted policy limits usage of
    # non-core volume types to those defined through PersistentVolumes." Allowed:
    # configMap, csi, downwardAPI, emptyDir, ephemeral, persistentVolumeClaim, projected, secret
    allowed = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected",
               "secret"}
    for volume in PODS[name]["spec"]["volumes"]:
        assert set(volume) - {"name"} <= allowed, volume


@pytest.mark.parametrize("name", PODS)
def test_pss_privilege_escalation(name):
    # "Privilege escalation (such as via set-user-ID or set-group-ID file mode) should not be
    # allowed." spec.containers[*].securityContext.allowPrivilegeEscalation: false
    for container in _containers(PODS[name]):
        assert container["securityContext"]["allowPrivilegeEscalation"] is False


@pytest.mark.parametrize("name", PODS)
def test_pss_running_as_non_root(name):
    # "Containers must be required to run as non-root users." spec.securityContext.runAsNonRoot
    # must be true, or every container's must be (and none false)
    pod = PODS[name]
    pod_level = pod["spec"].get("securityContext", {}).get("runAsNonRoot")
    for container in _containers(pod):
        value = container.get("securityContext", {}).get("runAsNonRoot", pod_level)
        assert value is True


@pytest.mark.parametrize("name", PODS)
def test_pss_running_as_non_root_user(name):
    # "Containers must not set runAsUser to 0."
    pod = PODS[name]
    assert pod["spec"].get("securityContext", {}).get("runAsUser") != 0
    for container in _containers(pod):
        assert container.get("securityContext", {}).get("runAsUser") != 0


@pytest.mark.parametrize("name", PODS)
def test_pss_seccomp(name):
    # "Seccomp profile must be explicitly set to one of the allowed values. Both the
    # Unconfined profile and the absence of a profile are prohibited." (RuntimeDefault, Localhost)
    pod = PODS[name]
    pod_level = pod["spec"].get("securityContext", {}).get("seccompProfile", {}).get("type")
    for container in _containers(pod):
        value = container.get("securityContext", {}).get("seccompProfile", {}).get("type", pod_level)
        assert value in ("RuntimeDefault", "Localhost")


@pytest.mark.parametrize("name", PODS)
def test_pss_capabilities(name):
    # "Containers must drop ALL capabilities, and are only permitted to add back the
    # NET_BIND_SERVICE capability."
    for container in _containers(PODS[name]):
        capabilities = container["securityContext"]["capabilities"]
        assert "ALL" in capabilities["drop"]
        assert set(capabilities.get("add", [])) <= {"NET_BIND_SERVICE"}


@pytest.mark.parametrize("name", PODS)
def test_beyond_restricted(name):
    # what this project adds to the profile: a read-only root, no API token, limits
    pod = PODS[name]
    assert pod["spec"]["automountServiceAccountToken"] is False
    for container in _containers(pod):
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        resources = container["resources"]
        assert {"cpu", "memory"} <= set(resources["requests"]) and {"cpu", "memory"} <= set(resources["limits"])


def test_the_pss_tests_can_fail():
    # each rule above, on a pod that breaks it, fails: none passes by construction
    import copy

    bad = copy.deepcopy(PODS["pod"])
    container = bad["spec"]["containers"][0]
    container["securityContext"].update(allowPrivilegeEscalation=True, runAsNonRoot=False, runAsUser=0,
                                        seccompProfile={"type": "Unconfined"},
                                        capabilities={"drop": [], "add": ["SYS_ADMIN"]})
    bad["spec"]["volumes"].append({"name": "h", "hostPath": {"path": "/"}})
    PODS["broken"] = bad
    try:
        for rule in (test_pss_volume_types, test_pss_privilege_escalation, test_pss_running_as_non_root,
                     test_pss_running_as_non_root_user, test_pss_seccomp, test_pss_capabilities):
            with pytest.raises(AssertionError):
                rule("broken")
    finally:
        del PODS["broken"]
