"""hardened-spawner check --kubernetes: the user pods read through the API (a fake of the
sync client's CoreV1Api here) and judged by the pod guard; what the admin reads."""

import copy
import json
from types import SimpleNamespace

import kubernetes.client
from kube_fixtures import decision, pod, scheduler_gpus

from hardened_spawner import cli
from hardened_spawner.kubernetes.check import pods_as_table, report_pod, run_kube_check


class FakeCoreV1Api:
    """What `run_kube_check` asks of the kubernetes client."""

    def __init__(self, pods):
        self.pods = pods
        self.api_client = kubernetes.client.ApiClient()
        self.asked = []

    def list_namespaced_pod(self, namespace, label_selector=None):
        self.asked.append((namespace, label_selector))
        return SimpleNamespace(items=self.pods)


def _running(manifest):
    return {**manifest, "status": {"phase": "Running"}}


def _plain_kubespawner_pod():
    """What a plain KubeSpawner (z2jh's defaults) runs: UID 1000 for everyone, a writable root."""
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "jupyter-bob", "namespace": "jhub",
                         "labels": {"component": "singleuser-server", "hub.jupyter.org/username": "bob"}},
            "spec": {"restartPolicy": "OnFailure", "containers": [{
                "name": "notebook", "image": "quay.io/jupyter/base-notebook",
                "securityContext": {"runAsUser": 1000, "allowPrivilegeEscalation": False},
                "resources": {"limits": {"memory": "2Gi"}}}]},
            "status": {"phase": "Running"}}


def test_a_hardened_pod_is_ok_and_its_granted_gpus_are_allowed():
    report = report_pod(_running(pod(decision(gpus=scheduler_gpus("nvidia.com/gpu#0")))))
    assert (report.ok, report.managed, report.owner, report.name, report.phase) == (
        True, True, "alice@example.org", "jhub/jupyter-alice", "Running")


def test_a_pod_asking_for_more_gpus_than_its_grant_says_is_not():
    manifest = copy.deepcopy(pod(decision(gpus=scheduler_gpus("nvidia.com/gpu#0"))))
    manifest["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] = "8"
    assert [f.check for f in report_pod(manifest).findings] == ["gpu-count"]


def test_a_plain_kubespawner_pod_breaks_the_policy_and_the_table_says_how():
    report = report_pod(_plain_kubespawner_pod())
    assert [f.check for f in report.findings] == [
        "cap-drop", "user", "read-only-root", "seccomp-unconfined", "service-account-token", "cpu"]
    table = pods_as_table([report_pod(_running(pod())), report])
    assert table.splitlines()[0] == "OK            jhub/jupyter-alice  owner=alice@example.org  Running  (hardened)"
    assert table.splitlines()[1] == ("6 violations  jhub/jupyter-bob  owner=bob  Running  "
                                     "(not made by HardenedKubeSpawner)")
    assert table.endswith("2 pod(s) checked: 1 OK, 1 breaking the policy.\n")


def test_run_kube_check_lists_the_namespaces_user_pods_and_exits_1_on_violations():
    api = FakeCoreV1Api([_running(pod()), _plain_kubespawner_pod()])
    text, status = run_kube_check(api, "jhub", as_json=True)
    assert api.asked == [("jhub", "component=singleuser-server")]
    assert status == 1
    assert [(p["name"], p["ok"]) for p in json.loads(text)["pods"]] == [("jhub/jupyter-alice", True),
                                                                        ("jhub/jupyter-bob", False)]
    assert run_kube_check(FakeCoreV1Api([_running(pod())]), "jhub")[1] == 0


def test_the_command_without_a_cluster_says_so_and_exits_2(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert cli.main(["check", "--kubernetes", "--namespace", "jhub"]) == 2
    assert capsys.readouterr().err.startswith(
        "hardened-spawner check: no Kubernetes API to ask: not in a cluster, and no usable kube config")
