"""deploy/kubernetes/ without a cluster: the RBAC the hub needs, and the z2jh values turned
into the hub's config the way the chart turns them, then judged by the spawner's own
hub-start check and by a spawn against the fake API (`fake_kube`).

Not shown here (deploy/kubernetes/README.md says so): Helm rendering the chart, an API
server enforcing the RBAC, a CNI enforcing the NetworkPolicies.
"""

import re
from importlib.metadata import entry_points
from pathlib import Path
from types import SimpleNamespace

import kubernetes_validate
import kubespawner.spawner as kubespawner_module
import pytest
import yaml
from fake_kube import FakeCoreV1Api, FakeNetworkingV1Api, FakePodReflector
from jupyterhub.objects import Server
from kubespawner import KubeSpawner
from traitlets import TraitError
from traitlets.config import Config

from hardened_spawner.errors import SpawnRefused
from hardened_spawner.kubernetes import spawner as spawner_module
from hardened_spawner.kubernetes.spawner import HardenedKubeSpawner

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "kubernetes"
RBAC = list(yaml.safe_load_all((DEPLOY / "rbac.yaml").read_text()))
VALUES = yaml.safe_load((DEPLOY / "values.yaml").read_text())
SCHEMA_VERSION = kubernetes_validate.latest_version()  # as test_kube_manifests
NS, RELEASE = "jhub", "jhub"

# --- the chart, as far as it reaches KubeSpawner ---------------------------------------

#: z2jh 4.4.0's defaults (jupyterhub/values.yaml) for the values its hub config turns into
#: KubeSpawner settings; values files are merged over them as Helm merges them.
CHART_DEFAULTS = yaml.safe_load("""
hub:
  config: {JupyterHub: {admin_access: true, authenticator_class: dummy}}
  extraConfig: {}
singleuser:
  extraTolerations: []
  nodeSelector: {}
  extraNodeAffinity: {required: [], preferred: []}
  extraPodAffinity: {required: [], preferred: []}
  extraPodAntiAffinity: {required: [], preferred: []}
  cloudMetadata: {blockWithIptables: true, ip: 169.254.169.254}
  networkPolicy: {enabled: true}
  events: true
  extraAnnotations: {}
  extraLabels: {hub.jupyter.org/network-access-hub: "true"}
  extraEnv: {}
  lifecycleHooks: {}
  initContainers: []
  extraContainers: []
  allowPrivilegeEscalation: false
  uid: 1000
  fsGid: 100
  storage:
    type: dynamic
    extraLabels: {}
    capacity: 10Gi
    homeMountPath: /home/jovyan
    dynamic: {volumeNameTemplate: "volume-{user_server}", storageAccessModes: [ReadWriteOnce]}
  image: {name: quay.io/jupyterhub/k8s-singleuser-sample, tag: "4.4.0"}
  startTimeout: 300
  memory: {guarantee: 1G}
  extraResource: {limits: {}, guarantees: {}}
  cmd: jupyterhub-singleuser
  extraPodConfig: {}
  profileList: []
scheduling:
  userScheduler: {enabled: true}
  userPods:
    tolerations:
      - {key: hub.jupyter.org/dedicated, operator: Equal, value: user, effect: NoSchedule}
    nodeAffinity: {matchNodePurpose: prefer}
""")

#: KubeSpawner setting <- `singleuser.<value>`: the chart sets each one whose value is not
#: null (z2jh's files/hub/jupyterhub_config.py, its loop over singleuser values).
CHART_PASS_THROUGH = {
    "pod_name_template": "podNameTemplate", "start_timeout": "startTimeout",
    "image_pull_policy": "image.pullPolicy", "events_enabled": "events", "extra_labels": "extraLabels",
    "extra_annotations": "extraAnnotations", "uid": "uid", "fs_gid": "fsGid",
    "service_account": "serviceAccountName", "storage_extra_labels": "storage.extraLabels",
    "node_selector": "nodeSelector",
    "node_affinity_required": "extraNodeAffinity.required", "node_affinity_preferred": "extraNodeAffinity.preferred",
    "pod_affinity_required": "extraPodAffinity.required", "pod_affinity_preferred": "extraPodAffinity.preferred",
    "pod_anti_affinity_required": "extraPodAntiAffinity.required",
    "pod_anti_affinity_preferred": "extraPodAntiAffinity.preferred",
    "lifecycle_hooks": "lifecycleHooks", "init_containers": "initContainers", "extra_containers": "extraContainers",
    "mem_limit": "memory.limit", "mem_guarantee": "memory.guarantee", "cpu_limit": "cpu.limit",
    "cpu_guarantee": "cpu.guarantee", "extra_resource_limits": "extraResource.limits",
    "extra_resource_guarantees": "extraResource.guarantees", "environment": "extraEnv",
    "profile_list": "profileList", "extra_pod_config": "extraPodConfig",
}


def helm_merge(base: dict, override: dict) -> dict:
    """Helm's merge of a values file over another: maps merge, anything else replaces, and
    null deletes the key (so the chart's config sees it unset)."""
    merged = dict(base)
    for key, value in override.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = helm_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def lookup(values: dict, path: str):
    """The value at a dotted path, None where any part is missing (as the chart reads values)."""
    for key in path.split("."):
        if not isinstance(values, dict) or key not in values:
            return None
        values = values[key]
    return values


def chart_config(*values_files: dict) -> Config:
    """The hub's config as z2jh's jupyterhub_config.py makes it from the chart's defaults and
    ``values_files`` (``helm --values`` in order), for the part that decides what the spawner
    is given: the singleuser settings and the chart's special cases among them, ``hub.config``,
    then the ``hub.extraConfig`` snippets, last and in key order as the chart runs them.
    (Left out: pull secrets, extra files and volumes, the idle culler, the proxy.)"""
    values = CHART_DEFAULTS
    for values_file in values_files:
        values = helm_merge(values, values_file)
    c = Config()
    c.JupyterHub.spawner_class = "kubespawner.KubeSpawner"
    c.KubeSpawner.namespace = NS  # the chart reads the hub pod's namespace
    c.KubeSpawner.common_labels = {"app": "jupyterhub", "release": RELEASE, "app.kubernetes.io/name": "jupyterhub",
                                   "app.kubernetes.io/instance": RELEASE, "app.kubernetes.io/managed-by": "kubespawner"}
    for trait, key in CHART_PASS_THROUGH.items():
        value = lookup(values, f"singleuser.{key}")
        if value is not None:
            c.KubeSpawner[trait] = value
    # set whatever the value, null included
    c.KubeSpawner.allow_privilege_escalation = lookup(values, "singleuser.allowPrivilegeEscalation")
    image, tag = lookup(values, "singleuser.image.name"), lookup(values, "singleuser.image.tag")
    c.KubeSpawner.image = f"{image}:{tag}" if tag else image
    if lookup(values, "scheduling.userScheduler.enabled"):
        c.KubeSpawner.scheduler_name = "user-scheduler"
    _node_purpose(c, lookup(values, "scheduling.userPods.nodeAffinity.matchNodePurpose"))
    tolerations = (lookup(values, "scheduling.userPods.tolerations") or []) + (
        lookup(values, "singleuser.extraTolerations") or [])
    if tolerations:
        c.KubeSpawner.tolerations = tolerations
    c.KubeSpawner.volumes, c.KubeSpawner.volume_mounts = _storage(c, values["singleuser"]["storage"])
    if lookup(values, "singleuser.cloudMetadata.blockWithIptables") is True:
        c.KubeSpawner.init_containers = [*c.KubeSpawner.get("init_containers", []), _metadata_block(values)]
    c.JupyterHub.services, c.JupyterHub.load_roles = [], []  # the chart's idle culler is left out here
    if "cmd" in values["singleuser"]:
        c.Spawner.cmd = values["singleuser"]["cmd"]
    for section, settings in (lookup(values, "hub.config") or {}).items():
        c[section].update(settings)
    for _, snippet in sorted((lookup(values, "hub.extraConfig") or {}).items()):
        exec(snippet, {"c": c})
    return c


def _node_purpose(c: Config, purpose: str | None) -> None:
    """``matchNodePurpose``: prefer or require nodes labelled for users, by node affinity."""
    user_nodes = {"matchExpressions": [{"key": "hub.jupyter.org/node-purpose", "operator": "In", "values": ["user"]}]}
    if purpose == "prefer":
        preferred = c.KubeSpawner.get("node_affinity_preferred", [])
        c.KubeSpawner.node_affinity_preferred = [*preferred, {"weight": 100, "preference": user_nodes}]
    elif purpose == "require":
        c.KubeSpawner.node_affinity_required = [*c.KubeSpawner.get("node_affinity_required", []), user_nodes]


def _storage(c: Config, storage: dict) -> tuple[dict, dict]:
    """``singleuser.storage.type``: dynamic has KubeSpawner make a claim per server, static
    mounts one shared claim, none mounts nothing. The chart sets the volumes either way."""
    home = storage.get("homeMountPath")
    if storage["type"] == "dynamic":
        c.KubeSpawner.storage_pvc_ensure = True
        c.KubeSpawner.storage_capacity = storage.get("capacity")
        name = storage["dynamic"]["volumeNameTemplate"]
        return ({name: {"name": name, "persistentVolumeClaim": {"claimName": "{pvc_name}"}}},
                {name: {"name": name, "mountPath": home}})
    if storage["type"] == "static":
        return ({"home": {"name": "home", "persistentVolumeClaim": {"claimName": storage["static"]["pvcName"]}}},
                {"home": {"name": "home", "mountPath": home, "subPath": storage["static"]["subPath"]}})
    return {}, {}


def _metadata_block(values: dict) -> dict:
    """The chart's init container that blocks the cloud metadata address with iptables."""
    return {
        "name": "block-cloud-metadata", "image": "quay.io/jupyterhub/k8s-network-tools:4.4.0",
        "command": ["iptables", "--append", "OUTPUT", "--protocol", "tcp", "--destination",
                    lookup(values, "singleuser.cloudMetadata.ip"), "--destination-port", "80", "--jump", "DROP"],
        "securityContext": {"privileged": True, "runAsUser": 0, "capabilities": {"add": ["NET_ADMIN"]}},
    }


# --- a spawner built from a config, against the fake API ------------------------------

#: what the chart's hub Role (jupyterhub/templates/hub/rbac.yaml) grants the hub's account
Z2JH_HUB_GRANTS = {
    ("", resource, verb)
    for resource in ("pods", "persistentvolumeclaims", "secrets", "services")
    for verb in ("get", "watch", "list", "create", "delete")
} | {("", "events", verb) for verb in ("get", "watch", "list")}

_API_CALL = re.compile(r"(create|read|list|replace|patch|delete)_namespaced_(\w+)")
_VERBS = {"create": "create", "read": "get", "list": "list", "replace": "update", "patch": "patch",
          "delete": "delete"}


def _resource(snake: str) -> str:
    """The API's plural resource name of a client method's object: config_map -> configmaps."""
    name = snake.replace("_", "")
    return name[:-1] + "ies" if name.endswith("y") else name + "s"


class RecordingApi:
    """A fake API that notes the (API group, resource, verb) of each call made through it."""

    def __init__(self, api, group: str, grants: set):
        self._api, self._group, self._grants = api, group, grants

    def __getattr__(self, name):
        call = _API_CALL.fullmatch(name)
        if call:
            self._grants.add((self._group, _resource(call[2]), _VERBS[call[1]]))
        return getattr(self._api, name)


@pytest.fixture
async def cluster(monkeypatch):
    monkeypatch.setattr(kubespawner_module, "load_config", lambda **kwargs: None)
    monkeypatch.setattr(kubespawner_module, "shared_client", lambda *args, **kwargs: None)
    monkeypatch.setattr(KubeSpawner, "reflectors", {})
    monkeypatch.setattr(spawner_module, "_BROKERS", {})
    reflector = FakePodReflector()
    grants: set = set()
    core, net = FakeCoreV1Api(reflector), FakeNetworkingV1Api()
    return SimpleNamespace(reflector=reflector, core=core, net=net, grants=grants,
                           core_api=RecordingApi(core, "", grants),
                           net_api=RecordingApi(net, "networking.k8s.io", grants))


def spawner_from(cluster, config: Config, name="alice", user_id=1) -> HardenedKubeSpawner:
    """A spawner as the hub builds one from its config (no cluster: kubespawner's _mock)."""
    user = SimpleNamespace(name=name, id=user_id, admin=False, groups=[], url=f"/user/{name}/", escaped_name=name)
    hub = SimpleNamespace(api_url="http://hub:8081/hub/api", base_url="/hub/", url="http://hub:8081/hub/",
                          public_host="", host="")
    spawner = HardenedKubeSpawner(_mock=True, config=config, user=user, hub=hub, start_timeout=5,
                                  k8s_api_request_retry_timeout=5)
    spawner.api, spawner._networking_api = cluster.core_api, cluster.net_api
    spawner.server = Server(base_url=f"/user/{name}/")
    spawner.db = SimpleNamespace(commit=lambda: None)
    spawner.user_options = {}
    KubeSpawner.reflectors[spawner._get_reflector_key("pods")] = cluster.reflector
    return spawner


def sent_pods(cluster) -> list[dict]:
    return [call[1] for call in cluster.core.calls if call[0] == "create_pod"]


# --- rbac.yaml -------------------------------------------------------------------------

@pytest.mark.parametrize("manifest", RBAC, ids=lambda m: m["kind"])
def test_each_rbac_object_is_valid_for_the_apis_schema(manifest):
    kubernetes_validate.validate(manifest, SCHEMA_VERSION, strict=True)


def test_the_binding_gives_the_role_to_the_charts_hub_service_account():
    role, binding = RBAC
    assert (role["kind"], binding["kind"]) == ("Role", "RoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}
    namespace = role["metadata"]["namespace"]
    assert binding["metadata"]["namespace"] == namespace
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "hub", "namespace": namespace}]


async def _a_servers_life(cluster) -> None:
    """Every API call the spawner makes to its objects: the hub's start audit, a first
    start (UID claimed, workspace and policy made), a stop, a start again (the claim and the
    workspace are there), and a start after the hub lost the pod (its policy is left over)."""
    config = chart_config(VALUES)
    spawner = spawner_from(cluster, config)
    await spawner.hub_start_work(SimpleNamespace(log=spawner.log))
    await spawner.start()
    await spawner.stop()
    await spawner.start()
    cluster.reflector.pods.clear()
    again = spawner_from(cluster, config)
    again.load_state(spawner.get_state())
    await again.start()
    await again.stop()


async def test_the_role_grants_exactly_what_the_spawner_calls_beyond_the_charts_hub_role(cluster):
    await _a_servers_life(cluster)
    assert ("networking.k8s.io", "networkpolicies", "update") in cluster.grants  # the left-over policy
    (role, _) = RBAC
    granted = {(group, resource, verb) for rule in role["rules"] for group in rule["apiGroups"]
               for resource in rule["resources"] for verb in rule["verbs"]}
    assert granted == cluster.grants - Z2JH_HUB_GRANTS


async def test_the_recorded_life_covers_every_call_the_spawner_makes_to_the_api(cluster):
    await _a_servers_life(cluster)
    package = ROOT / "hardened_spawner" / "kubernetes"
    in_code = {(call[1], call[2]) for path in package.glob("*.py")
               for call in _API_CALL.finditer(path.read_text())}
    assert in_code, "no API call found: the pattern no longer matches the code"
    recorded = {(verb, resource) for _, resource, verb in cluster.grants}
    assert {(_VERBS[verb], _resource(kind)) for verb, kind in in_code} <= recorded


# --- values.yaml -----------------------------------------------------------------------

def test_the_values_choose_the_hardened_spawner_and_turn_the_charts_user_policy_off():
    assert VALUES["hub"]["config"]["JupyterHub"]["spawner_class"] == "hardened-kube"
    assert entry_points(group="jupyterhub.spawners")["hardened-kube"].load() is HardenedKubeSpawner
    assert VALUES["singleuser"]["networkPolicy"]["enabled"] is False


@pytest.mark.parametrize("key", sorted(VALUES["hub"]["extraConfig"]))
def test_each_extra_config_snippet_compiles(key):
    compile(VALUES["hub"]["extraConfig"][key], f"hub.extraConfig.{key}", "exec")


async def test_the_charts_config_from_these_values_passes_the_hub_start_check(cluster):
    config = chart_config(VALUES)
    assert config.JupyterHub.spawner_class == "hardened-kube"
    spawner_from(cluster, config).check_config()


async def test_a_server_from_the_charts_config_passes_the_guard_and_the_charts_policies_select_it(cluster):
    spawner = spawner_from(cluster, chart_config(VALUES))
    await spawner.start()  # the guard judges the pod before it is sent
    (pod,) = sent_pods(cluster)
    assert re.fullmatch(r"registry\.example\.org/singleuser:[^@]+@sha256:[0-9a-f]{64}",
                        pod["spec"]["containers"][0]["image"])
    assert pod["spec"]["securityContext"]["runAsUser"] == 200001  # the user's own, not the chart's 1000
    assert "initContainers" not in pod["spec"]
    # the chart's hub and proxy NetworkPolicies reach servers (and admit them) by these labels
    z2jh_selectors = {"app": "jupyterhub", "release": RELEASE, "component": "singleuser-server",
                      "hub.jupyter.org/network-access-hub": "true"}
    assert z2jh_selectors.items() <= pod["metadata"]["labels"].items()
    assert list(cluster.net.policies) == [spawner.pod_name]
    assert spawner.gpu_board and spawner.gpu_idle_timeout == 900  # the extraConfig snippet ran


def test_the_gpu_culler_calls_the_hub_in_its_own_pod():
    (culler,) = chart_config(VALUES).JupyterHub.services
    assert culler["command"][-1] == "--url=http://localhost:8081/hub/api"


async def test_the_charts_defaults_alone_would_stop_the_hub(cluster):
    only_the_spawner = {"hub": {"config": {"JupyterHub": {"spawner_class": "hardened-kube"}}}}
    with pytest.raises(TraitError, match="KubeSpawner.uid = 1000 is not supported"):
        spawner_from(cluster, chart_config(only_the_spawner)).check_config()


@pytest.mark.parametrize("site, refused", [
    ({"singleuser": {"uid": 1000}}, "KubeSpawner.uid = 1000"),
    ({"singleuser": {"fsGid": 100}}, "KubeSpawner.fs_gid = 100"),
    ({"singleuser": {"allowPrivilegeEscalation": None}}, "KubeSpawner.allow_privilege_escalation = None"),
    ({"singleuser": {"storage": {"type": "dynamic"}}}, "KubeSpawner.storage_pvc_ensure = True"),
    ({"scheduling": {"userPods": {"nodeAffinity": {"matchNodePurpose": "prefer"}}}},
     "KubeSpawner.node_affinity_preferred = [{'weight': 100"),
    ({"singleuser": {"lifecycleHooks": {"postStart": {"exec": {"command": ["true"]}}}}},
     "KubeSpawner.lifecycle_hooks = {'postStart'"),
    ({"singleuser": {"extraResource": {"limits": {"nvidia.com/gpu": "1"}}}},
     "KubeSpawner.extra_resource_limits = {'nvidia.com/gpu': '1'}"),
    ({"singleuser": {"profileList": [{"display_name": "GPU"}]}}, "KubeSpawner.profile_list = [{'display_name'"),
])
async def test_a_value_that_the_chart_makes_a_refused_setting_stops_the_hub(cluster, site, refused):
    with pytest.raises(TraitError) as error:
        spawner_from(cluster, chart_config(VALUES, site)).check_config()
    assert str(error.value).startswith(f"{refused}")
    assert "is not supported by HardenedKubeSpawner" in str(error.value)


async def test_the_charts_metadata_blocking_init_container_gets_every_spawn_refused(cluster):
    spawner = spawner_from(cluster, chart_config(VALUES, {"singleuser": {"cloudMetadata": {"blockWithIptables": True}}}))
    spawner.check_config()  # a container, not a setting: the guard judges it at each spawn
    with pytest.raises(SpawnRefused, match="privileged"):
        await spawner.start()
    assert sent_pods(cluster) == []


# --- README.md -------------------------------------------------------------------------

async def test_the_readmes_config_for_a_hub_without_the_chart_passes_the_hub_start_check(cluster):
    (snippet,) = re.findall(r"```python\n(.*?)```", (DEPLOY / "README.md").read_text(), re.S)
    config = Config()
    exec(snippet, {"get_config": lambda: config})
    assert config.JupyterHub.spawner_class == "hardened-kube"
    spawner_from(cluster, config).check_config()
