"""The guard on Kubernetes: does a final Pod manifest keep the policy?

It reads the Pod in the API's own shape, which is both what the spawner is about to send
(after kubespawner's ``modify_pod_hook``, ``extra_pod_config`` and
``extra_container_config``) and what the API returns for a running pod, so one function
refuses a bad spawn and audits running pods (``hardened-spawner check --kubernetes``).

The rules are the Docker guard's (`docker.guard`), said in a Pod's words, and report the
same check ids where the meaning is the same; `DOCKER_RULES` says, for each Docker check,
which pod check carries it or why a pod has nothing to judge. Every container of the pod
is judged (init and ephemeral containers too). A violation's words reach the spawn page
through the same `core.violations.describe` as on Docker.

Beyond the Docker guard's rules, the pod is held to the Pod Security Standards' *baseline*
and *restricted* items that only a Pod has (the PSS text of Kubernetes 1.34): AppArmor as a
field or as the older ``container.apparmor.security.beta.kubernetes.io/*`` annotation,
SELinux options, and a probe's or lifecycle hook's ``host`` (which makes the kubelet
connect from the node, past the server's NetworkPolicy). Capabilities are held to what
restricted allows (`RESTRICTED_ADDABLE`) here too, not only by the hub-start check.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from ..core.identity import MIN_SAFE_UID
from ..core.violations import Violation
from .objects import RESTRICTED_VOLUME_TYPES

#: what the PSS restricted profile lets a container add back after dropping ALL: a
#: capability beyond it is refused even where `PodGuardPolicy.allowed_cap_add` lists it
RESTRICTED_ADDABLE = frozenset({"NET_BIND_SERVICE"})
#: AppArmor profiles PSS baseline allows, as a field and as the older annotation
APPARMOR_TYPES = ("RuntimeDefault", "Localhost")
APPARMOR_ANNOTATION = "container.apparmor.security.beta.kubernetes.io/"
#: SELinux types PSS baseline allows ("" is unset; container_engine_t since Kubernetes 1.31)
SELINUX_TYPES = frozenset({"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"})


@dataclass(frozen=True)
class PodGuardPolicy:
    """What the guard allows beyond the fixed rules."""

    allowed_cap_add: frozenset[str] = frozenset()
    #: the GPUs the hub's table granted this server, per extended resource
    gpu_resources: tuple[tuple[str, int], ...] = ()


def _containers(spec: dict) -> Iterator[tuple[str, dict]]:
    for kind in ("initContainers", "containers", "ephemeralContainers"):
        for container in spec.get(kind) or []:
            yield f"spec.{kind}[{container.get('name', '?')}]", container


def _security_contexts(spec: dict) -> Iterator[tuple[str, str, dict]]:
    """Each securityContext of the pod as PSS reads them, one by one: the pod's own, then each
    container's (where it is, the escape hatch that sets it, the context)."""
    yield "spec.securityContext", "extra_pod_config", spec.get("securityContext") or {}
    for where, container in _containers(spec):
        yield f"{where}.securityContext", "extra_container_config", container.get("securityContext") or {}


def _effective(spec: dict, container: dict, key: str):
    """A securityContext field as the kubelet applies it: the container's, else the pod's."""
    value = (container.get("securityContext") or {}).get(key)
    return (spec.get("securityContext") or {}).get(key) if value is None else value


Judge = Callable[[dict, PodGuardPolicy], Iterator[Violation]]
#: every rule, in the order its violations are reported; each judges the whole Pod
RULES: list[tuple[tuple[str, ...], Judge]] = []


def rule(*checks: str) -> Callable[[Judge], Judge]:
    """Register a rule that judges the pod's ``spec``."""
    def register(judge: Judge) -> Judge:
        RULES.append((checks, lambda pod, policy: judge(pod.get("spec") or {}, policy)))
        return judge
    return register


def pod_rule(*checks: str) -> Callable[[Judge], Judge]:
    """Register a rule that judges the whole Pod (its metadata too)."""
    def register(judge: Judge) -> Judge:
        RULES.append((checks, judge))
        return judge
    return register


@rule("privileged")
def _privileged(spec, policy):
    for where, container in _containers(spec):
        if (container.get("securityContext") or {}).get("privileged"):
            yield Violation("privileged", f"{where}.securityContext.privileged", "extra_container_config",
                            "A container would run privileged, with every capability and every host device",
                            "remove 'privileged'; it is never allowed")


@rule("host-namespace")
def _host_namespaces(spec, policy):
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(key):
            yield Violation("host-namespace", f"spec.{key}", "extra_pod_config",
                            f"The pod would share the node's {key.removeprefix('host').lower()} namespace",
                            f"remove '{key}' so the pod gets its own namespace")


@rule("host-path")
def _host_paths(spec, policy):
    for volume in spec.get("volumes") or []:
        if "hostPath" in volume:
            yield Violation("host-path", f"spec.volumes[{volume.get('name')}].hostPath", "HardenedKubeSpawner.volumes",
                            f"A directory of the node would be mounted ({volume['hostPath'].get('path')!r})",
                            "remove the hostPath volume; workspaces are claims, data sets are claims or configMaps")


@rule("volume-type")
def _volume_types(spec, policy):
    for volume in spec.get("volumes") or []:
        kinds = sorted(set(volume) - {"name"} - RESTRICTED_VOLUME_TYPES - {"hostPath"})
        if kinds:
            yield Violation("volume-type", f"spec.volumes[{volume.get('name')}]", "HardenedKubeSpawner.volumes",
                            f"A volume of a type the restricted profile forbids: {', '.join(kinds)}",
                            "use a persistentVolumeClaim, configMap, secret, emptyDir, projected, csi or "
                            "ephemeral volume")


@rule("published-ports")
def _host_ports(spec, policy):
    for where, container in _containers(spec):
        for port in container.get("ports") or []:
            if port.get("hostPort"):
                yield Violation("published-ports", f"{where}.ports", "extra_container_config",
                                f"Port {port.get('containerPort')} would be published on the node "
                                f"({port['hostPort']}), past the proxy", "remove 'hostPort'")


@rule("restart-policy")
def _restart_policy(spec, policy):
    if spec.get("restartPolicy", "Always") == "Always":
        yield Violation("restart-policy", "spec.restartPolicy", "extra_pod_config",
                        "The kubelet would restart the server on its own (Always), behind the hub's back",
                        "remove 'restartPolicy'; the hub starts and stops servers")


@rule("cap-drop", "cap-add")
def _capabilities(spec, policy):
    for where, container in _containers(spec):
        capabilities = (container.get("securityContext") or {}).get("capabilities") or {}
        if "ALL" not in [c.upper() for c in capabilities.get("drop") or []]:
            yield Violation("cap-drop", f"{where}.securityContext.capabilities.drop", "extra_container_config",
                            "Not all capabilities would be dropped", "keep capabilities.drop: [ALL]")
        added = {c.upper().removeprefix("CAP_") for c in capabilities.get("add") or []}
        extra = sorted(added - policy.allowed_cap_add)
        if extra:
            yield Violation("cap-add", f"{where}.securityContext.capabilities.add",
                            "HardenedKubeSpawner.cap_add or extra_container_config",
                            f"Capabilities outside the allowlist would be added: {', '.join(extra)}",
                            "add capabilities only through HardenedKubeSpawner.cap_add, from its allowlist")
        # allowed by the policy (cap_add), but not by the restricted profile a pod is held to
        beyond = sorted((added & policy.allowed_cap_add) - RESTRICTED_ADDABLE)
        if beyond:
            yield Violation("cap-add", f"{where}.securityContext.capabilities.add", "HardenedKubeSpawner.cap_add",
                            f"Capabilities the Pod Security Standards' restricted profile forbids would be "
                            f"added: {', '.join(beyond)}",
                            "on Kubernetes add only NET_BIND_SERVICE; remove the others from cap_add")


@rule("group-add")
def _supplemental_groups(spec, policy):
    groups = (spec.get("securityContext") or {}).get("supplementalGroups")
    if groups:
        yield Violation("group-add", "spec.securityContext.supplementalGroups", "supplemental_gids",
                        f"Supplementary groups would be added: {', '.join(map(str, groups))}",
                        "remove 'supplemental_gids'; each user has only their private group")


@rule("user")
def _user(spec, policy):
    for where, container in _containers(spec):
        uid, gid = _effective(spec, container, "runAsUser"), _effective(spec, container, "runAsGroup")
        non_root = _effective(spec, container, "runAsNonRoot")
        if not (non_root is True and all(isinstance(i, int) and i >= MIN_SAFE_UID for i in (uid, gid))):
            yield Violation("user", f"{where}.securityContext.runAsUser", "uid / gid / container_security_context",
                            f"A container would run as {uid!r}:{gid!r} (runAsNonRoot {non_root!r}), not as a "
                            f"dedicated UID:GID >= {MIN_SAFE_UID} with runAsNonRoot true",
                            "do not set uid, gid or runAs*; the spawner sets the user's own UID:GID")


@rule("allow-root")
def _allow_root(spec, policy):
    for where, container in _containers(spec):
        if "--allow-root" in (container.get("command") or []) + (container.get("args") or []):
            yield Violation("allow-root", f"{where}.args", "HardenedKubeSpawner.cmd / args",
                            "The server command contains --allow-root", "remove --allow-root from cmd and args")


@rule("read-only-root")
def _read_only_root(spec, policy):
    for where, container in _containers(spec):
        if not (container.get("securityContext") or {}).get("readOnlyRootFilesystem"):
            yield Violation("read-only-root", f"{where}.securityContext.readOnlyRootFilesystem",
                            "extra_container_config", "A root filesystem would be writable",
                            "keep readOnlyRootFilesystem: true; writable places are the workspace and emptyDirs")


@rule("no-new-privileges")
def _privilege_escalation(spec, policy):
    for where, container in _containers(spec):
        if (container.get("securityContext") or {}).get("allowPrivilegeEscalation") is not False:
            yield Violation("no-new-privileges", f"{where}.securityContext.allowPrivilegeEscalation",
                            "allow_privilege_escalation / extra_container_config",
                            "allowPrivilegeEscalation is not false, so setuid programs could raise privileges",
                            "keep allowPrivilegeEscalation: false")


def _profile_type(context: dict | None, key: str) -> str | None:
    return ((context or {}).get(key) or {}).get("type")


@rule("seccomp-unconfined", "proc-mount")
def _unconfined(spec, policy):
    pod_context = spec.get("securityContext") or {}
    for where, container in _containers(spec):
        context = container.get("securityContext") or {}
        seccomp = _profile_type(context, "seccompProfile") or _profile_type(pod_context, "seccompProfile")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            yield Violation("seccomp-unconfined", f"{where}.securityContext.seccompProfile",
                            "container_security_context / pod_security_context",
                            f"seccomp would be off ({seccomp or 'not set, which Kubernetes runs Unconfined'})",
                            "keep seccompProfile type RuntimeDefault")
        if context.get("procMount", "Default") != "Default":
            yield Violation("proc-mount", f"{where}.securityContext.procMount", "container_security_context",
                            "/proc would be unmasked", "remove 'procMount'")


def _allowed_apparmor_annotation(value: str) -> bool:
    return value == "runtime/default" or (value.startswith("localhost/") and value != "localhost/")


@pod_rule("apparmor-unconfined")
def _apparmor(pod, policy):
    """PSS baseline: each appArmorProfile field (pod and containers, each on its own) is unset,
    RuntimeDefault or Localhost; each AppArmor annotation is runtime/default or localhost/*."""
    for where, setting, context in _security_contexts(pod.get("spec") or {}):
        kind = _profile_type(context, "appArmorProfile")
        if kind is not None and kind not in APPARMOR_TYPES:
            yield Violation("apparmor-unconfined", f"{where}.appArmorProfile.type", setting,
                            f"AppArmor would be switched off ({kind})",
                            "remove the appArmorProfile, or set its type to RuntimeDefault")
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    for key, value in sorted(annotations.items()):
        if key.startswith(APPARMOR_ANNOTATION) and not _allowed_apparmor_annotation(str(value)):
            container = key.removeprefix(APPARMOR_ANNOTATION)
            yield Violation("apparmor-unconfined", f"metadata.annotations[{key}]", "extra_annotations",
                            f"AppArmor would be switched off for container {container!r} ({value!r})",
                            "remove the annotation, or set it to runtime/default")


@rule("selinux-options")
def _selinux(spec, policy):
    """PSS baseline: seLinuxOptions.type only one of the runtime's container types, and no
    custom SELinux user or role (each securityContext on its own)."""
    for where, setting, context in _security_contexts(spec):
        options = context.get("seLinuxOptions") or {}
        kind = options.get("type") or ""
        if kind not in SELINUX_TYPES:
            yield Violation("selinux-options", f"{where}.seLinuxOptions.type", setting,
                            f"The SELinux type would be {kind!r}, not one of the types that confine a container "
                            f"({', '.join(sorted(SELINUX_TYPES - {''}))})",
                            "remove seLinuxOptions.type (the runtime gives container_t)")
        for field in ("user", "role"):
            if options.get(field):
                yield Violation("selinux-options", f"{where}.seLinuxOptions.{field}", setting,
                                f"A custom SELinux {field} would be set ({options[field]!r})",
                                f"remove seLinuxOptions.{field}")


_PROBES = ("livenessProbe", "readinessProbe", "startupProbe")
_HOOKS = ("postStart", "preStop")


@rule("probe-host")
def _probe_hosts(spec, policy):
    """PSS baseline (1.34): no probe or lifecycle hook names a ``host``. The kubelet makes
    those connections itself, from the node, where no NetworkPolicy of the pod applies."""
    for where, container in _containers(spec):
        handlers = [(f"{where}.{probe}", container.get(probe)) for probe in _PROBES]
        handlers += [(f"{where}.lifecycle.{hook}", (container.get("lifecycle") or {}).get(hook)) for hook in _HOOKS]
        for path, handler in handlers:
            for action in ("httpGet", "tcpSocket"):
                host = ((handler or {}).get(action) or {}).get("host")
                if host:
                    yield Violation("probe-host", f"{path}.{action}.host", "extra_container_config",
                                    f"The kubelet would connect to {host!r} from the node for a probe or hook, "
                                    "past the server's NetworkPolicy",
                                    "remove 'host'; a probe or hook reaches the container at the pod's own address")


@rule("sysctls")
def _sysctls(spec, policy):
    sysctls = (spec.get("securityContext") or {}).get("sysctls")
    if sysctls:
        yield Violation("sysctls", "spec.securityContext.sysctls", "extra_pod_config",
                        f"Kernel parameters would be set: {', '.join(s.get('name', '?') for s in sysctls)}",
                        "remove 'sysctls'")


@rule("service-account-token")
def _token(spec, policy):
    if spec.get("automountServiceAccountToken") is not False:
        yield Violation("service-account-token", "spec.automountServiceAccountToken",
                        "automount_service_account_token / extra_pod_config",
                        "The cluster's API token would be mounted into the server",
                        "keep automountServiceAccountToken: false")


@rule("memory", "cpu")
def _limits(spec, policy):
    for where, container in _containers(spec):
        limits = (container.get("resources") or {}).get("limits") or {}
        for resource, setting in (("memory", "mem_limit"), ("cpu", "cpu_limit")):
            if not limits.get(resource):
                yield Violation(resource, f"{where}.resources.limits.{resource}", f"HardenedKubeSpawner.{setting}",
                                f"No {resource} limit: one user could take the node's {resource}",
                                f"set {setting}")


@rule("gpu-count")
def _gpus(spec, policy):
    granted = dict(policy.gpu_resources)
    for where, container in _containers(spec):
        resources = container.get("resources") or {}
        for kind in ("limits", "requests"):
            asked = {name: int(value) for name, value in (resources.get(kind) or {}).items()
                     if name.startswith("nvidia.com/") and int(value)}
            if asked != (granted if where.startswith("spec.containers[") else {}):
                yield Violation("gpu-count", f"{where}.resources.{kind}", "extra_resource_limits / extra_resource_guarantees",
                                f"GPUs would be asked for that the hub's GPU table did not grant: {asked or 'none'} "
                                f"instead of {granted or 'none'}",
                                "ask for GPUs only through the spawn form (gpu_* settings)")


def check_pod(pod: dict, policy: PodGuardPolicy) -> list[Violation]:
    """Every way the Pod ``pod`` breaks the policy; empty means allowed."""
    return [violation for _, judge in RULES for violation in judge(pod, policy)]


#: each Docker guard check, and the pod check that carries it or why a pod has none
DOCKER_RULES = {
    "privileged": "privileged",
    "host-namespace": "host-namespace",
    "docker-socket": "host-path",
    "sensitive-mount": "host-path",
    "mount-propagation": "host-path (only hostPath volumes propagate mounts, and none is allowed)",
    "volumes-from": "none: a pod cannot mount another pod's volumes",
    "devices": "none: a pod names no host devices; GPUs come from the device plugin (gpu-count)",
    "gpu-count": "gpu-count",
    "published-ports": "published-ports",
    "default-bridge": "none: pods share the cluster network; the NetworkPolicy keeps them apart",
    "cgroup-parent": "none: the kubelet places pods in cgroups",
    "restart-policy": "restart-policy",
    "cap-drop": "cap-drop",
    "cap-add": "cap-add",
    "group-add": "group-add",
    "user": "user",
    "allow-root": "allow-root",
    "read-only-root": "read-only-root",
    "no-new-privileges": "no-new-privileges",
    "seccomp-unconfined": "seccomp-unconfined",
    "apparmor-unconfined": "apparmor-unconfined",
    "systempaths-unconfined": "proc-mount",
    "label-unconfined": "selinux-options (a pod cannot switch SELinux off; it may set only the container types)",
    "memory": "memory",
    "oom-kill-disable": "none: a pod cannot turn off the OOM killer",
    "cpu": "cpu",
    "pids": "none: a pod has no pids field; the kubelet's podPidsLimit is the node's (README)",
    "healthcheck": "none: the server's readiness probe is the spawner's own, not a policy item",
    "log-cap": "none: a pod names no log driver; the kubelet rotates container logs (containerLogMaxSize, "
               "containerLogMaxFiles: node config)",
}
