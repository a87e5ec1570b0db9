"""A fake of the two kubernetes_asyncio APIs kubespawner and HardenedKubeSpawner call, and of
kubespawner's pod reflector: the seams kubespawner's own no-cluster tests use.

These are not integration tests: nothing here is a cluster. Objects are kept as the API's
dicts; a create of an existing name answers 409 as the API server does (which is what
decides a UID claim); a pod that is created is "running" at once, with an address, as the
reflector would soon report it, and a deleted one leaves the reflector a moment later.
"""

import asyncio
from types import SimpleNamespace

import kubespawner.spawner as kubespawner_module
from jupyterhub.objects import Server
from kubernetes_asyncio.client.rest import ApiException
from kubespawner import KubeSpawner

from hardened_spawner.kubernetes.models import to_dict
from hardened_spawner.kubernetes.spawner import HardenedKubeSpawner

NS = "jhub"


def _conflict(kind, name):
    return ApiException(status=409, reason=f"{kind} {name} already exists")


def _missing(kind, name):
    return ApiException(status=404, reason=f"{kind} {name} not found")


def _matches(item: dict, selector: str | None) -> bool:
    labels = item["metadata"].get("labels") or {}
    for term in filter(None, (selector or "").split(",")):
        key, _, value = term.partition("=")
        if labels.get(key) != value:
            return False
    return True


class FakePodReflector:
    """What kubespawner's `PodReflector` offers `_start`, `poll` and `stop`."""

    def __init__(self):
        self.pods: dict[str, dict] = {}  # "namespace/name" -> the pod's dict
        self.resources = self.pods
        self.first_load_future = asyncio.get_running_loop().create_future()
        self.first_load_future.set_result(None)

    async def stop(self):
        pass


class FakeCoreV1Api:
    def __init__(self, reflector: FakePodReflector, pod_ip: str = "10.0.0.5"):
        self.reflector = reflector
        self.pod_ip = pod_ip
        self.config_maps: dict[str, dict] = {}
        self.claims: dict[str, dict] = {}
        self.calls: list[tuple] = []

    # --- pods (kubespawner passes them positionally) ---
    async def create_namespaced_pod(self, namespace, body, **kwargs):
        self.calls.append(("create_pod", to_dict(body)))  # as sent
        pod = to_dict(body)
        key = f"{namespace}/{pod['metadata']['name']}"
        if key in self.reflector.pods:
            raise _conflict("pod", key)
        pod["metadata"].update(namespace=namespace, uid=f"uid-{len(self.calls)}",
                               creationTimestamp="2026-12-04T10:00:00+00:00")
        pod["status"] = {"phase": "Running", "podIP": self.pod_ip,
                         "containerStatuses": [{"name": "notebook", "ready": True, "state": {"running": {}}}]}
        self.reflector.pods[key] = pod
        return body

    async def delete_namespaced_pod(self, name, namespace, body=None, grace_period_seconds=None, **kwargs):
        key = f"{namespace}/{name}"
        self.calls.append(("delete_pod", name, grace_period_seconds))
        if key not in self.reflector.pods:
            raise _missing("pod", key)
        asyncio.get_running_loop().call_later(0.05, self.reflector.pods.pop, key, None)

    async def list_namespaced_pod(self, namespace, label_selector=None, **kwargs):
        pods = [p for k, p in self.reflector.pods.items() if k.startswith(f"{namespace}/")]
        return SimpleNamespace(items=[p for p in pods if _matches(p, label_selector)])

    # --- config maps: the UID claims ---
    async def create_namespaced_config_map(self, namespace, body, **kwargs):
        name = body["metadata"]["name"]
        self.calls.append(("create_config_map", name))
        if name in self.config_maps:
            raise _conflict("configmap", name)
        self.config_maps[name] = body

    async def read_namespaced_config_map(self, name, namespace, **kwargs):
        if name not in self.config_maps:
            raise _missing("configmap", name)
        return self.config_maps[name]

    async def list_namespaced_config_map(self, namespace, label_selector=None, **kwargs):
        return SimpleNamespace(items=[c for c in self.config_maps.values() if _matches(c, label_selector)])

    # --- persistent volume claims: the workspaces (kubespawner passes keywords) ---
    async def create_namespaced_persistent_volume_claim(self, namespace, body, **kwargs):
        name = body["metadata"]["name"]
        self.calls.append(("create_pvc", name))
        if name in self.claims:
            raise _conflict("persistentvolumeclaim", name)
        self.claims[name] = body

    async def read_namespaced_persistent_volume_claim(self, name, namespace, **kwargs):
        if name not in self.claims:
            raise _missing("persistentvolumeclaim", name)
        return self.claims[name]

    async def list_namespaced_persistent_volume_claim(self, namespace, label_selector=None, **kwargs):
        return SimpleNamespace(items=[c for c in self.claims.values() if _matches(c, label_selector)])


class FakeNetworkingV1Api:
    def __init__(self):
        self.policies: dict[str, dict] = {}
        self.calls: list[tuple] = []

    async def create_namespaced_network_policy(self, namespace, body, **kwargs):
        name = body["metadata"]["name"]
        self.calls.append(("create", name))
        if name in self.policies:
            raise _conflict("networkpolicy", name)
        self.policies[name] = body

    async def replace_namespaced_network_policy(self, name, namespace, body, **kwargs):
        self.calls.append(("replace", name))
        self.policies[name] = body

    async def delete_namespaced_network_policy(self, name, namespace, **kwargs):
        self.calls.append(("delete", name))
        if self.policies.pop(name, None) is None:
            raise _missing("networkpolicy", name)


def fake_cluster(monkeypatch, audit) -> SimpleNamespace:
    """kubespawner pointed at the fakes (no kube config, no clients, no reflectors of its own);
    ``audit``: where the spawners made by `kube_spawner` write their audit trail."""
    monkeypatch.setattr(kubespawner_module, "load_config", lambda **kwargs: None)
    monkeypatch.setattr(kubespawner_module, "shared_client", lambda *args, **kwargs: None)
    monkeypatch.setattr(KubeSpawner, "reflectors", {})
    reflector = FakePodReflector()
    return SimpleNamespace(reflector=reflector, core=FakeCoreV1Api(reflector), net=FakeNetworkingV1Api(),
                           audit=audit)


def kube_spawner(cluster, name="alice", user_id=1, groups=(), options=None, **config) -> HardenedKubeSpawner:
    """A spawner of ``name`` as the hub makes one (kubespawner's _mock: no cluster), on the fakes."""
    user = SimpleNamespace(name=name, id=user_id, admin=False, groups=[SimpleNamespace(name=g) for g in groups],
                           url=f"/user/{name}/", escaped_name=name)
    hub = SimpleNamespace(api_url="http://hub:8081/hub/api", base_url="/hub/", url="http://hub:8081/hub/",
                          public_host="", host="")
    spawner = HardenedKubeSpawner(
        _mock=True, user=user, hub=hub, namespace=NS, cmd=["jupyterhub-singleuser"],
        start_timeout=5, k8s_api_request_retry_timeout=5, audit_log=str(cluster.audit), **config)
    spawner.api, spawner._networking_api = cluster.core, cluster.net
    spawner.server = Server(base_url=f"/user/{name}/")
    spawner.db = SimpleNamespace(commit=lambda: None)
    spawner.user_options = options or {}
    KubeSpawner.reflectors[spawner._get_reflector_key("pods")] = cluster.reflector
    return spawner


def sent_pods(cluster) -> list[dict]:
    return [call[1] for call in cluster.core.calls if call[0] == "create_pod"]
