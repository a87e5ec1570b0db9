"""The z2jh chart's translation of its values into the hub's config, as far as it reaches
KubeSpawner, without Helm or a cluster: `chart_config` builds the `Config` the chart's
jupyterhub_config.py makes, `chart_config_source` writes it out as such a file for a real
``jupyterhub -f`` (tests/integration/test_kube_deploy_start.py). Shared by those and the
offline tests of deploy/kubernetes/ (tests/unit/test_kube_deploy.py).
"""

import ast
from pathlib import Path

import yaml
from traitlets.config import Config

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy" / "kubernetes"
VALUES = yaml.safe_load((DEPLOY / "values.yaml").read_text())
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


def chart_config(*values_files: dict, extra_config: bool = True) -> Config:
    """The hub's config as z2jh's jupyterhub_config.py makes it from the chart's defaults and
    ``values_files`` (``helm --values`` in order), for the part that decides what the spawner
    is given: the singleuser settings and the chart's special cases among them, ``hub.config``,
    then the ``hub.extraConfig`` snippets (unless ``extra_config`` is False), last and in
    key order as the chart runs them.
    (Left out: pull secrets, extra files and volumes, the idle culler, the proxy.)"""
    values = merged_values(*values_files)
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
    if extra_config:
        for _, snippet in extra_config_snippets(values):
            exec(snippet, {"c": c})
    return c


def merged_values(*values_files: dict) -> dict:
    """The chart's defaults with ``values_files`` merged over them, in order."""
    values = CHART_DEFAULTS
    for values_file in values_files:
        values = helm_merge(values, values_file)
    return values


def extra_config_snippets(values: dict) -> list[tuple[str, str]]:
    """``hub.extraConfig``'s (key, snippet) pairs, in the key order the chart runs them."""
    return sorted((lookup(values, "hub.extraConfig") or {}).items())


def chart_config_source(*values_files: dict) -> str:
    """`chart_config` as the text of a jupyterhub_config.py: each setting the chart makes as
    ``c.Section.key = <repr(value)>`` (plain data only: each repr is checked to read back
    as the same value), then the ``hub.extraConfig`` snippets as written, in key order, as
    the chart's own config file runs them."""
    lines = ["# the z2jh chart's config from its values (tests/kube_chart.py)"]
    for section, settings in chart_config(*values_files, extra_config=False).items():
        for key, value in settings.items():
            text = repr(value)
            try:
                read_back = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                read_back = _UNREADABLE
            if read_back != value or repr(read_back) != text:
                raise ValueError(f"c.{section}.{key} = {text} does not read back as the same value")
            lines.append(f"c.{section}.{key} = {text}")
    for key, snippet in extra_config_snippets(merged_values(*values_files)):
        lines += [f"# hub.extraConfig.{key}", snippet.rstrip("\n")]
    return "\n".join(lines) + "\n"


_UNREADABLE = object()


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
