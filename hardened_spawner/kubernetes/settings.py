"""The settings only the Kubernetes backend carries out, and the kubespawner defaults it
changes: the cluster's GPUs by extended resource, whom a server's NetworkPolicy lets in
and out, requests beside the limits, and a workspace claim that is kept.

`KubeSettings` is a mixin of `HardenedKubeSpawner`, before `HardenedSettings` (the
settings both backends share); config is ``c.HardenedKubeSpawner.<name>``. kubespawner
settings that would weaken the pod or that the hardened pod does not carry out are
refused at hub start, naming what to use instead (`UNSUPPORTED_KUBESPAWNER`).
"""

from __future__ import annotations

import ipaddress
import re
from typing import TYPE_CHECKING, Any

from jupyterhub.traitlets import ByteSpecification
from traitlets import Dict, HasTraits, List, TraitError, Unicode, default, validate

from ..core.gpus import GpuDevice
from .guard import RESTRICTED_ADDABLE  # what PSS restricted lets a pod add back: `cap_add` beyond it stops the hub
from .objects import DOMAIN

#: where NodeLocal DNSCache listens unless the cluster chose otherwise (the upstream add-on's
#: default): a link-local address, so `egress` alone blocks it
NODE_LOCAL_DNS = "169.254.20.10/32"

_RESOURCE = re.compile(r"^nvidia\.com/(gpu|mig-[0-9]+g\.[0-9]+gb)$")

#: kubespawner settings the hardened pod would not carry out, or that would weaken it:
#: refused at hub start, so none is dropped or applied silently. (`volumes`,
#: `volume_mounts`, `init_containers`, `extra_containers`, `node_selector`, `tolerations`,
#: `image_pull_secrets`, `service_account`, `scheduler_name`, `priority_class_name`,
#: `extra_labels`, `extra_annotations`, `extra_pod_config`, `extra_container_config` and
#: `modify_pod_hook` are honoured, and the guard judges the pod they make.)
UNSUPPORTED_KUBESPAWNER = {
    "uid": "the spawner gives each user a UID of their own (uid_min, uid_max, uid_map).",
    "gid": "each user's GID is their UID's private group.",
    "fs_gid": "the workspace's fsGroup is the user's private group.",
    "supplemental_gids": "each user has only their private group.",
    "privileged": "servers never run privileged.",
    "allow_privilege_escalation": "servers never gain privileges (allowPrivilegeEscalation is false).",
    "profile_list": "the spawn form is the GPU form; give images with allowed_images and GPUs with gpu_*.",
    "storage_pvc_ensure": "the spawner makes and labels the workspace claim itself (it is how UIDs are remembered).",
    "delete_pvc": "a user's workspace is never deleted with their hub user; remove the claim by hand.",
    "container_security_context": "the spawner sets the container's securityContext from the policy.",
    "pod_security_context": "the spawner sets the pod's securityContext from the policy.",
    "working_dir": "servers start in the user's workspace (home_template).",
    "extra_resource_limits": "GPUs are asked for from gpu_resources, through the hub's GPU table.",
    "extra_resource_guarantees": "GPUs are asked for from gpu_resources, through the hub's GPU table.",
    "lifecycle_hooks": "not carried out by the hardened pod; start things from the image instead.",
    "internal_ssl": "not carried out by the hardened pod yet; use the cluster's network encryption.",
    "node_affinity_preferred": "not carried out as a setting; give affinity through extra_pod_config.",
    "node_affinity_required": "not carried out as a setting; give affinity through extra_pod_config.",
    "pod_affinity_preferred": "not carried out as a setting; give affinity through extra_pod_config.",
    "pod_affinity_required": "not carried out as a setting; give affinity through extra_pod_config.",
    "pod_anti_affinity_preferred": "not carried out as a setting; give affinity through extra_pod_config.",
    "pod_anti_affinity_required": "not carried out as a setting; give affinity through extra_pod_config.",
}


class KubeSettings(HasTraits):
    """The settings of `HardenedKubeSpawner` that only Kubernetes carries out."""

    if TYPE_CHECKING:  # kubespawner's and HardenedSettings' traits read below
        cap_add: Any
        gpu_inventory: Any
        gpu_pins: Any
        gpu_pool: Any
        gpu_max_users_per_gpu: Any

    gpu_resources = Dict(
        help="""The cluster's GPUs this hub hands out, by the NVIDIA device plugin's extended
        resource name: `{"nvidia.com/gpu": 4, "nvidia.com/mig-1g.10gb": 14}`. The hub's GPU
        table counts each as a slot (`nvidia.com/gpu#0`, ...), so the per-user quotas
        (`gpu_max_per_user`, `gpu_group_max`, `gpu_default_per_user`), the GPU board and the
        GPU culler work as on Docker; the pod asks for that many of the resource and the
        scheduler and device plugin pick the devices. Empty: no GPUs.""",
    ).tag(config=True)

    network_hub_labels = Dict(
        {"app": "jupyterhub", "component": "hub"},
        help="""Labels of the hub's pod: the only pod (with the proxy's) that may reach a server,
        and the one a server may reach on the hub API's port. z2jh's labels by default.""",
    ).tag(config=True)

    network_proxy_labels = Dict(
        {"app": "jupyterhub", "component": "proxy"},
        help="Labels of the proxy's pod, which may reach servers on their port. z2jh's by default.",
    ).tag(config=True)

    network_dns_labels = Dict(
        {"k8s-app": "kube-dns"},
        help="""Labels of the cluster's DNS pods (in any namespace), which servers may ask on
        port 53. `k8s-app: kube-dns` is what kube-dns and CoreDNS carry.""",
    ).tag(config=True)

    network_dns_cidrs = List(
        Unicode(),
        [NODE_LOCAL_DNS],
        help=f"""Address ranges servers may ask for DNS on port 53 (UDP and TCP) only, besides
        the DNS pods of `network_dns_labels`: where a node-local DNS cache answers. The default,
        `{NODE_LOCAL_DNS}`, is the address NodeLocal DNSCache listens on unless the cluster
        chose another; it is link-local, so without this rule `egress` blocks it, and a cache
        runs with hostNetwork, so no pod selector reaches it. Where the cache also answers at
        the kube-dns Service's ClusterIP (kube-proxy in iptables mode), add that address
        (`kubectl -n kube-system get svc kube-dns -o jsonpath='{{.spec.clusterIP}}'`); on GKE
        with Cloud DNS add `169.254.169.254/32` (port 53 only: the metadata API stays blocked).
        Unlike z2jh, port 53 of the private ranges is not opened by default. `0.0.0.0/0` and
        `::/0` are refused. Empty: DNS pods only.""",
    ).tag(config=True)

    ephemeral_storage_limit = ByteSpecification(
        "1G",
        help="""Most node disk a server may use outside its workspace: the container's log and
        anything else the kubelet counts as ephemeral storage (the root is read-only and /tmp
        is memory). Past it the kubelet evicts the pod, so one user's runaway output cannot
        fill a node's disk. The workspace's own limit is `workspace_quota` (the claim's size).
        At least 64M.""",
    ).tag(config=True)

    @validate("ephemeral_storage_limit")
    def _validate_ephemeral_storage_limit(self, proposal):
        if proposal.value < 64 * 1024 * 1024:
            raise TraitError(f"{type(self).__name__}.ephemeral_storage_limit is {proposal.value} bytes; "
                             "use at least 64M (e.g. '1G').")
        return proposal.value

    # --- kubespawner defaults that hardening changes -----------------------

    @default("cpu_guarantee")
    def _default_cpu_guarantee(self):
        return 0.5

    @default("mem_guarantee")
    def _default_mem_guarantee(self):
        return 1024**3

    @default("pvc_name_template")
    def _default_pvc_name_template(self):
        # one workspace per person, shared by their named servers, as on Docker
        return "workspace-{username}"

    @default("storage_capacity")
    def _default_storage_capacity(self):
        return "10Gi"

    @default("storage_pvc_ensure")
    def _default_storage_pvc_ensure(self):
        return False

    @default("delete_pvc")
    def _default_delete_pvc(self):
        return False

    @default("events_enabled")
    def _default_events_enabled(self):
        # the spawn page shows the spawner's own steps (`ServerEvents`)
        return False

    @validate("gpu_resources")
    def _validate_gpu_resources(self, proposal):
        for name, count in proposal.value.items():
            if not _RESOURCE.match(str(name)):
                raise TraitError(
                    f"HardenedKubeSpawner.gpu_resources: {name!r} is not an NVIDIA extended resource "
                    "(nvidia.com/gpu, or a MIG profile like nvidia.com/mig-1g.10gb)."
                )
            if not isinstance(count, int) or isinstance(count, bool) or count < 0:
                raise TraitError(f"HardenedKubeSpawner.gpu_resources[{name!r}] must be a count >= 0, not {count!r}.")
        return dict(proposal.value)

    @validate("network_dns_cidrs")
    def _validate_network_dns_cidrs(self, proposal):
        ranges = []
        for value in proposal.value:
            try:
                network = ipaddress.ip_network(value)
            except ValueError as e:
                raise TraitError(
                    f"HardenedKubeSpawner.network_dns_cidrs: {value!r} is not an address range ({e}); give "
                    f"CIDRs such as {NODE_LOCAL_DNS!r} or '10.96.0.10/32'."
                ) from None
            if network.prefixlen == 0:
                raise TraitError(
                    f"HardenedKubeSpawner.network_dns_cidrs: {value!r} would open port 53 of every address, a "
                    "way out past egress 'none'; name the DNS caches' addresses."
                )
            ranges.append(str(network))
        return ranges

    @validate("storage_extra_labels")
    def _validate_storage_extra_labels(self, proposal):
        ours = sorted(key for key in proposal.value if str(key).startswith(f"{DOMAIN}/"))
        if ours:
            raise TraitError(
                f"HardenedKubeSpawner.storage_extra_labels: {', '.join(ours)} "
                f"{'is' if len(ours) == 1 else 'are'} the spawner's own "
                "(the workspace claim's labels say whose UID its files carry); remove "
                f"{'it' if len(ours) == 1 else 'them'}."
            )
        return proposal.value

    def check_kube_config(self) -> None:
        """Checks across the Kubernetes settings, run once at hub start (`hubstart`)."""
        for name, why in UNSUPPORTED_KUBESPAWNER.items():
            value, default_value = getattr(self, name), self.trait_defaults(name)
            if value != default_value:
                raise TraitError(f"KubeSpawner.{name} = {value!r} is not supported by HardenedKubeSpawner: {why}")
        beyond = sorted(set(self.cap_add) - RESTRICTED_ADDABLE)
        if beyond:
            raise TraitError(
                f"HardenedKubeSpawner.cap_add: {', '.join(beyond)} may not be added on Kubernetes; the "
                "Pod Security Standards' restricted profile allows only NET_BIND_SERVICE."
            )
        if self.gpu_inventory != "none":
            raise TraitError(
                "HardenedKubeSpawner.gpu_inventory is for a Docker host's own GPUs; on Kubernetes "
                "give the cluster's GPUs as gpu_resources (e.g. {'nvidia.com/gpu': 4})."
            )
        if self.gpu_pins or self.gpu_pool is not None or self.gpu_max_users_per_gpu != 1:
            raise TraitError(
                "HardenedKubeSpawner.gpu_pins, gpu_pool and gpu_max_users_per_gpu name or share "
                "devices, which on Kubernetes the scheduler and the device plugin pick; leave them "
                "unset and give the counts the hub may hand out as gpu_resources."
            )

    def gpu_slots(self) -> tuple[GpuDevice, ...]:
        """The hub's GPU table on Kubernetes: one slot per GPU (or MIG slice) the hub hands out."""
        return tuple(
            GpuDevice(uuid=f"{name}#{i}", index=str(i), name=name)
            for name, count in sorted(self.gpu_resources.items())
            for i in range(count)
        )
