"""HardenedKubeSpawner: the Kubernetes backend's verbs under the one hardened lifecycle.

The order of a start, its refusals and audit, GPU assignment and the state a user keeps
are the shared lifecycle's (`lifecycle.HardenedLifecycle`); the decision is the Docker
backend's too (`core.decision`). Only its rendering and the objects that hold the truth
differ:

UID claim (a ConfigMap) -> (GPUs: the hub's slot table) -> workspace claim ->
NetworkPolicy -> decision -> Pod -> guard -> kubespawner's create and wait

kubespawner keeps what it does well: the pod reflector, the create-and-wait loop, poll
and stop. This class overrides the seams kubespawner offers for that (`_start`,
`get_pod_manifest`, `_make_create_pod_request`, `stop`, `poll`), so the guard judges the
final pod after ``modify_pod_hook`` and every escape hatch, right before it is sent.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from urllib.parse import urlparse

from jupyterhub.utils import url_path_join
from kubernetes_asyncio.client.rest import ApiException
from kubespawner import KubeSpawner
from kubespawner.clients import shared_client
from kubespawner.utils import update_k8s_model

from .._version import __version__
from ..core.decision import BY_SCHEDULER, GpuGrant, decide
from ..core.gpus import GpuAllocator, Holding
from ..core.identity import Identity, UidRequest
from ..core.profile import SecurityProfile
from ..core.quota import storage_request
from ..core.violations import describe
from ..errors import SpawnRefused
from ..gpu_broker import HoldingsSource, read_holding
from ..lifecycle import HardenedLifecycle
from . import claims, objects
from .guard import PodGuardPolicy, check_pod
from .models import to_dict, to_model
from .refusals import TABLE as REFUSALS
from .settings import KubeSettings


@dataclass(frozen=True)
class KubePlan:
    """What one start decided before the pod is made (`get_pod_manifest` reads it)."""

    identity: Identity
    gpus: GpuGrant
    profile: SecurityProfile
    image_digest: str  # the image as named: the cluster resolves it (image admission is Docker's)


def holdings_from_pods(pods: list) -> list[Holding]:
    """Who holds which GPU slot, from the annotations of the running or pending managed pods."""
    found = []
    for pod in pods:
        pod = pod if isinstance(pod, dict) else to_dict(pod)
        if (pod.get("status") or {}).get("phase") not in ("Pending", "Running"):
            continue
        metadata = pod.get("metadata") or {}
        annotations = metadata.get("annotations") or {}
        created = metadata.get("creationTimestamp") or ""
        holding = read_holding(
            annotations.get(objects.OWNER, "?"), annotations.get(objects.SERVER_NAME, ""),
            annotations.get(objects.GPUS, ""), annotations.get(objects.GPUS_SINCE, ""),
            datetime.fromisoformat(created) if created else datetime.fromtimestamp(0, timezone.utc),
        )
        if holding is not None:
            found.append(holding)
    return found


def _secret_names(secrets) -> list[str]:
    """kubespawner's image_pull_secrets: a name, or a list of names or ``{"name": ...}``."""
    if not secrets:
        return []
    if isinstance(secrets, str):
        return [secrets]
    return [s["name"] if isinstance(s, dict) else s for s in secrets]


class HardenedKubeSpawner(KubeSettings, HardenedLifecycle, KubeSpawner):
    """A KubeSpawner whose users each run as their own UID in a restricted, read-only pod.

    The shared lifecycle calls the verbs below; kubespawner's own ``_start``, ``stop`` and
    ``poll`` are called by name, under the lifecycle's.
    """

    refusals = REFUSALS
    devices_choosable = False
    devices_picked_by = BY_SCHEDULER
    _plan: KubePlan | None = None
    _networking_api = None

    def check_config(self) -> None:
        """Kubernetes' checks (they name the Docker-only settings set by mistake), then the
        shared settings' (run once at hub start: `hubstart`)."""
        self.check_kube_config()
        super().check_config()

    async def hub_start_work(self, app) -> None:
        """Once, in the background, when the hub starts: the running user pods that break
        the policy are named in the log (what ``hardened-spawner check --kubernetes`` lists)."""
        from .check import audit_at_hub_start

        await audit_at_hub_start(self.api, self.namespace, app.log)

    @property
    def networking_api(self):
        if self._networking_api is None:
            self._networking_api = shared_client("NetworkingV1Api")
        return self._networking_api

    def _backend_address(self) -> str:
        return f"the Kubernetes API ({self.namespace})"

    # --- the hub's GPU table: slots of the cluster's GPU resources -------------

    def gpu_allocator(self) -> GpuAllocator:
        return GpuAllocator(self.gpu_slots(), self._gpu_policy())

    def _gpu_table_settings(self):
        return self.gpu_resources

    def _gpu_table_scope(self) -> str:
        return f"kubernetes:{self.namespace}"

    def _holdings_source(self) -> HoldingsSource:
        """The annotations of the pods that run: the cluster's truth after a hub restart."""
        api, namespace = self.api, self.namespace

        async def holdings():
            pods = await api.list_namespaced_pod(namespace, label_selector=f"{objects.MANAGED}=true")
            return holdings_from_pods(pods.items)

        return holdings

    # --- the lifecycle's verbs: admit, claim -----------------------------------

    async def load_user_options(self):
        """The GPU form's options are read (and checked) at `_assign_gpus`; there are no
        profiles (`UNSUPPORTED_KUBESPAWNER`)."""

    def start(self):
        self._start_events()  # before kubespawner's task runs: the hub asks for progress at once
        return super().start()

    async def _start(self):
        return await self._hardened_start()

    async def _admit(self) -> None:
        """Nothing to judge before the UID's claim: the cluster resolves the image as named
        (image admission is Docker's), and the guard judges the pod before it is sent."""

    def _workspace_name(self) -> str:
        return self.pvc_name

    async def _workspace_uid(self) -> tuple[None, int | None]:
        """The UID the workspace claim carries (`_launch` makes the claim when it is missing,
        so nothing else found is handed on)."""
        uid = await claims.workspace_uid(self.api, self.namespace, self.pvc_name, self.user.name,
                                         self.workspace_allow_adopt)
        return None, uid

    async def _claimed_uid(self) -> int | None:
        return await claims.claimed_uid(self.api, self.namespace, self.user.name, self.pvc_name)

    async def _claim_new_uid(self, request: UidRequest) -> int:
        return await claims.claim_free_uid(self.api, self.namespace, request, self.home_template, self.log)

    async def _claim_known_uid(self, uid: int, source: str, request: UidRequest) -> None:
        await claims.claim_known_uid(self.api, self.namespace, uid, source, request, self.home_template, self.log)

    # --- the lifecycle's verbs: launch ---------------------------------------------

    async def _launch(self, identity: Identity, gpus: GpuGrant, admitted: None, workspace: None):
        self._report(30, "Preparing your workspace")
        await self._ensure_workspace(identity)
        await self._ensure_network_policy()
        self._plan = KubePlan(identity, gpus, self.base_profile(), self.image)
        self._report(55, "Creating your server pod")
        return await KubeSpawner._start(self)  # renders (`get_pod_manifest`), guards, creates, waits

    async def _ensure_workspace(self, identity: Identity) -> None:
        """Create the user's workspace claim, labelled with their UID and sized by their quota,
        unless it is there (a claim's size is the storage class's to enforce, and to grow:
        an existing claim keeps the size it was made with)."""
        quota = self.workspace_quota_for([g.name for g in self.user.groups])
        claim = objects.make_workspace_claim(
            self.pvc_name, self.namespace, self.user.name, identity,
            capacity=storage_request(quota, self.storage_capacity),
            storage_class=self.storage_class or None, access_modes=tuple(self.storage_access_modes),
            version=__version__, extra_labels=self._expand_all(self.storage_extra_labels),
        )
        try:
            await self.api.create_namespaced_persistent_volume_claim(namespace=self.namespace, body=claim)
            self.log.info("Created the workspace claim %s for %s (UID %s)", self.pvc_name, self.user.name,
                          identity.uid)
        except ApiException as e:
            if e.status != 409:
                raise
        self._pvc_exists = True

    def _network_rule(self) -> objects.NetworkRule:
        return objects.NetworkRule(
            hub_labels=dict(self.network_hub_labels), proxy_labels=dict(self.network_proxy_labels),
            dns_labels=dict(self.network_dns_labels), hub_port=self._hub_api_port(),
            egress=self.egress, allow_cidrs=tuple(self.egress_allow_cidrs), allow_dns=tuple(self.egress_allow_dns),
            dns_cidrs=tuple(self.network_dns_cidrs),
        )

    def _hub_api_port(self) -> int:
        return urlparse(self.hub.api_url).port or 8081

    async def _ensure_network_policy(self) -> None:
        """This server's NetworkPolicy, made (or made again, as the settings say now)."""
        policy = objects.make_network_policy(self.pod_name, self.namespace, self.port, self._network_rule())
        try:
            await self.networking_api.create_namespaced_network_policy(self.namespace, policy)
        except ApiException as e:
            if e.status != 409:
                raise
            await self.networking_api.replace_namespaced_network_policy(self.pod_name, self.namespace, policy)

    def pod_manifest(self) -> dict:
        """This start's Pod, as the builders render the decision (see the module docstring)."""
        plan = self._plan
        assert plan is not None, "get_pod_manifest before _prepare"
        args = self.get_args()
        decision = decide(
            owner=self.user.name, server_name=self.name, image=self.image,
            command=[*self.cmd, *args] if self.cmd else args, port=self.port,
            identity=plan.identity, profile=plan.profile, workspace=self.pvc_name, gpus=plan.gpus,
            hub_environment=self.get_env(),
        )
        placement = objects.PodPlacement(
            name=self.pod_name, namespace=self.namespace, identity_claim=objects.uid_claim_name(plan.identity.uid),
            labels=self._build_pod_labels(self._expand_all(self.extra_labels)),
            annotations=self._build_common_annotations(self._expand_all(self.extra_annotations)),
            cpu_request=self.cpu_guarantee or plan.profile.cpu_limit,
            memory_request=self.mem_guarantee or plan.profile.mem_limit,
            version=__version__, health_path=url_path_join(self.server.base_url, "api"),
            image_pull_policy=self.image_pull_policy, node_selector=dict(self.node_selector),
            tolerations=tuple(self._sorted_dict_values(self.tolerations)), hub_id=self.hub_id,
            volumes=tuple(self._expand_all(self._sorted_dict_values(self.volumes))),
            volume_mounts=tuple(self._expand_all(self._sorted_dict_values(self.volume_mounts))),
            init_containers=tuple(self._expand_all(self._sorted_dict_values(self.init_containers))),
            extra_containers=tuple(self._expand_all(self._sorted_dict_values(self.extra_containers))),
            image_pull_secrets=tuple(_secret_names(self.image_pull_secrets)),
            service_account=self._expand_all(self.service_account) or "",
            scheduler_name=self.scheduler_name or "", priority_class_name=self.priority_class_name or "",
            ephemeral_storage=self.ephemeral_storage_limit,
        )
        return objects.make_pod(decision, placement)

    async def get_pod_manifest(self):
        """kubespawner's seam: our Pod as its model; the escape hatches kubespawner applies
        to its own pods are applied here too, and the guard sees their result."""
        pod = to_model(self.pod_manifest(), "V1Pod")
        update_k8s_model(pod.spec, self.extra_pod_config, logger=self.log, target_name="pod.spec",
                         changes_name="extra_pod_config")
        update_k8s_model(pod.spec.containers[0], self.extra_container_config, logger=self.log,
                         target_name="pod.spec.containers[0]", changes_name="extra_container_config")
        return pod

    async def _make_create_pod_request(self, pod, request_timeout):
        """Judge the final pod (after ``modify_pod_hook``), then let kubespawner create it."""
        plan = self._plan
        policy = PodGuardPolicy(frozenset(self.cap_add), tuple(plan.gpus.resources().items()) if plan else ())
        violations = check_pod(to_dict(pod), policy)
        if violations:
            raise SpawnRefused(describe(violations), reason="policy", status_code=403,
                               log_message=f"Refused {self._log_name}: " + "; ".join(map(str, violations)))
        created = await super()._make_create_pod_request(pod, request_timeout)
        if created:
            self._report(70, "Waiting for your server to answer")
        return created

    # --- the lifecycle's verbs: stop and poll ------------------------------------

    async def _remove_server(self, now: bool) -> None:
        """The pod (kubespawner's stop), then its NetworkPolicy."""
        await KubeSpawner.stop(self, now=now)
        try:
            await self.networking_api.delete_namespaced_network_policy(self.pod_name, self.namespace)
        except ApiException as e:
            if e.status != 404:
                raise

    async def _poll_server(self):
        return await KubeSpawner.poll(self)  # it stops (removes) a pod whose server ended by itself

    def _workspace_quota(self) -> int | None:
        """The claim's size as asked for (whether the storage enforces it is its class's)."""
        return self.workspace_quota_for([g.name for g in self.user.groups])

    def _audit_object(self) -> dict:
        return {"container_id": None, "container_name": f"{self.namespace}/{self.pod_name}"}
