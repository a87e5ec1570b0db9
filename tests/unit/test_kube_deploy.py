"""deploy/kubernetes/ without a cluster: the RBAC the hub needs, and the z2jh values turned
into the hub's config the way the chart turns them (tests/kube_chart.py), then judged by a
spawn against the fake API (`fake_kube`). That a value the chart makes a refused setting stops
a real hub is shown by starting one (tests/integration/test_kube_deploy_start.py).

Not shown here (deploy/kubernetes/README.md says so): Helm rendering the chart, an API
server enforcing the RBAC, a CNI enforcing the NetworkPolicies.
"""

import re
from importlib.metadata import entry_points
from types import SimpleNamespace

import kubernetes_validate
import kubespawner.spawner as kubespawner_module
import pytest
import yaml
from fake_kube import FakeCoreV1Api, FakeNetworkingV1Api, FakePodReflector
from jupyterhub.objects import Server
from kubespawner import KubeSpawner
from traitlets.config import Config, LazyConfigValue

from hardened_spawner.errors import SpawnRefused
from hardened_spawner.kubernetes.spawner import HardenedKubeSpawner
from tests.kube_chart import DEPLOY, RELEASE, ROOT, VALUES, chart_config, chart_config_source

RBAC = list(yaml.safe_load_all((DEPLOY / "rbac.yaml").read_text()))
SCHEMA_VERSION = kubernetes_validate.latest_version()  # as test_kube_manifests

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


def _plain(config: Config) -> dict:
    """A Config as plain data, with what a config file appends to (`LazyConfigValue`) as its
    additions, so two configs compare by what they would set."""
    return {section: {key: value.to_dict() if isinstance(value, LazyConfigValue) else value
                      for key, value in settings.items()}
            for section, settings in config.items()}


@pytest.mark.parametrize("site", [{}, {"singleuser": {"uid": 1000, "storage": {"type": "dynamic"}}},
                                  {"singleuser": {"allowPrivilegeEscalation": None}}], ids=["values", "refused", "null"])
def test_the_charts_config_as_a_config_file_reads_back_as_the_charts_config(site):
    """What tests/integration/test_kube_deploy_start.py gives the hub (`chart_config_source`) is
    the config these tests judge."""
    from_file = Config()
    exec(chart_config_source(VALUES, site), {"c": from_file, "get_config": lambda: from_file})
    assert _plain(from_file) == _plain(chart_config(VALUES, site))


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
