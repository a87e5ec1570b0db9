"""HardenedKubeSpawner: the glue between JupyterHub, kubespawner and the policy core.

The decision is the Docker backend's (`core.decision`); only its rendering and the
objects that hold the truth differ. A start is:

identity (UID claim) -> GPUs (the hub's slot table) -> workspace claim -> NetworkPolicy
-> decision -> Pod -> guard -> kubespawner's create and wait

kubespawner keeps what it does well: the pod reflector, the create-and-wait loop, poll
and stop. This class overrides the seams kubespawner offers for that (`_start`,
`get_pod_manifest`, `_make_create_pod_request`, `stop`, `poll`), so the guard judges the
final pod after ``modify_pod_hook`` and every escape hatch, right before it is sent.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlparse

from jupyterhub.utils import maybe_future, url_path_join
from kubernetes_asyncio.client.rest import ApiException
from kubespawner import KubeSpawner
from kubespawner.clients import shared_client
from kubespawner.utils import update_k8s_model

from .. import hub_database, labels
from .._version import __version__
from ..core.decision import BY_SCHEDULER, GpuGrant, decide
from ..core.gpus import GpuAllocator
from ..core.identity import Identity, UidRequest, check_policy_uid, derived_uid, make_identity, resolve_uid
from ..core.options import OptionsError, gpu_request
from ..core.profile import SecurityProfile
from ..core.violations import describe
from ..errors import SpawnRefused
from ..gpu_broker import GpuBroker, holder_key
from ..refusals import Situation, as_refusal
from ..server_events import ServerEvents
from ..settings import HardenedSettings
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


#: the hub's GPU tables on Kubernetes, one per namespace, slots and policy
_BROKERS: dict[str, GpuBroker] = {}
_BROKERS_LOCK = threading.Lock()


def _pods_as_servers(pods: list) -> list[dict]:
    """Running or pending managed pods in the shape `gpu_broker.holdings_from_containers` reads."""
    servers = []
    for pod in pods:
        pod = pod if isinstance(pod, dict) else to_dict(pod)
        if (pod.get("status") or {}).get("phase") not in ("Pending", "Running"):
            continue
        annotations = (pod.get("metadata") or {}).get("annotations") or {}
        created = (pod.get("metadata") or {}).get("creationTimestamp") or ""
        servers.append({
            "Labels": {
                labels.GPUS: annotations.get(objects.GPUS, ""),
                labels.GPUS_SINCE: annotations.get(objects.GPUS_SINCE, ""),
                labels.OWNER: annotations.get(objects.OWNER, "?"),
                labels.SERVER_NAME: annotations.get(objects.SERVER_NAME, ""),
            },
            "Created": int(datetime.fromisoformat(created).timestamp()) if created else 0,
        })
    return servers


def _secret_names(secrets) -> list[str]:
    """kubespawner's image_pull_secrets: a name, or a list of names or ``{"name": ...}``."""
    if not secrets:
        return []
    if isinstance(secrets, str):
        return [secrets]
    return [s["name"] if isinstance(s, dict) else s for s in secrets]


class HardenedKubeSpawner(ServerEvents, KubeSettings, HardenedSettings, KubeSpawner):
    """A KubeSpawner whose users each run as their own UID in a restricted, read-only pod."""

    _plan: KubePlan | None = None
    #: why the next stop happens, for the audit trail: set by the GPU reclaim API (`gpu_pages`)
    stop_reason: str | None = None
    _uid: int | None = None
    _gpus_held: tuple[str, ...] = ()
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

    @property
    def hub_id(self) -> str:
        return hub_database.hub_id(getattr(self.user, "db", None))

    # --- the hub's GPU table: slots of the cluster's GPU resources -------------

    def gpu_allocator(self) -> GpuAllocator:
        return GpuAllocator(self.gpu_slots(), self._gpu_policy())

    @property
    def gpus(self) -> GpuBroker:
        """The GPU table for this namespace, slots and policy, one per hub; rebuilt from the
        annotations of the pods that run (the cluster's truth after a hub restart)."""
        key = json.dumps([self.namespace, self.gpu_resources, repr(self._gpu_policy())], default=repr)
        api, namespace, log = self.api, self.namespace, self.log
        with _BROKERS_LOCK:
            broker = _BROKERS.get(key)
            if broker is None:
                async def running() -> list[dict]:
                    pods = await api.list_namespaced_pod(namespace, label_selector=f"{objects.MANAGED}=true")
                    return _pods_as_servers(pods.items)

                broker = _BROKERS[key] = GpuBroker(self.gpu_allocator(), running, log)
            return broker

    # --- state: the UID outlives each server -----------------------------------

    def load_state(self, state):
        super().load_state(state)
        self._uid = state.get("uid", self._uid)

    def get_state(self):
        state = super().get_state()
        if self._uid is not None:
            state["uid"] = self._uid
        return state

    def clear_state(self):
        """Forget the pod, never the UID: it owns the user's files."""
        uid = self._uid
        super().clear_state()
        self._uid = uid

    # --- start, step by step ---------------------------------------------------

    async def load_user_options(self):
        """The GPU form's options are read (and checked) at `_assign_gpus`; there are no
        profiles (`UNSUPPORTED_KUBESPAWNER`)."""

    def start(self):
        self._start_events()  # before kubespawner's task runs: the hub asks for progress at once
        return super().start()

    async def _start(self):
        self.audit.emit("spawn-requested", **self._audit_fields())
        try:
            await self._prepare()
            url = await super()._start()
        except Exception as e:
            await self._release_gpus()
            refusal = self._as_refusal(e)
            self.audit.emit("spawn-refused", **self._audit_fields(reason=refusal.jupyterhub_message))
            if refusal is e:
                raise
            raise refusal from e
        else:
            self.audit.emit("server-started", **self._audit_fields())
            return url
        finally:
            self._end_events()

    def _as_refusal(self, e: Exception) -> SpawnRefused:
        board = url_path_join(self.hub.base_url, "gpus") if self.gpu_board else ""
        return as_refusal(e, Situation(self.image, f"the Kubernetes API ({self.namespace})", board),
                          self.log, self._log_name, REFUSALS)

    async def _prepare(self) -> None:
        self._report(5, "Checking your identity")
        identity = await self._resolve_identity()
        self._report(15, "Assigning GPUs")
        gpus = await self._assign_gpus()
        self._report(30, "Preparing your workspace")
        await self._ensure_workspace(identity)
        await self._ensure_network_policy()
        self._plan = KubePlan(identity, gpus, self.base_profile(), self.image)
        self._report(55, "Creating your server pod")

    async def _static_uid(self) -> int | None:
        if callable(self.uid_map):
            return check_policy_uid(await maybe_future(self.uid_map(self)), self.user.name)
        if self.user.name in self.uid_map:
            return check_policy_uid(self.uid_map[self.user.name], self.user.name)
        return None

    async def _resolve_identity(self) -> Identity:
        """The user's UID: their state's, else their workspace claim's, else their UID claim's,
        else `uid_map`'s, else the first free one from `uid_min + hub user id`; claimed on
        the cluster before anyone else can take it (`claims`)."""
        api, namespace = self.api, self.namespace
        remembered = await claims.workspace_uid(api, namespace, self.pvc_name, self.user.name,
                                                self.workspace_allow_adopt)
        if self._uid is None and remembered is None:
            remembered = await claims.claimed_uid(api, namespace, self.user.name, self.pvc_name)
        offer, static = derived_uid(self.user.id, self.uid_min, self.uid_max), await self._static_uid()
        decision = resolve_uid(self.user.name, from_state=self._uid, from_workspace=remembered,
                               from_policy=offer if static is None else static, static=static is not None)
        if decision.warning:
            self.log.warning(decision.warning)
        request = UidRequest(self.user.name, self.pvc_name, offer, self.uid_min, self.uid_max, __version__)
        uid = decision.uid
        if uid is None:
            uid = await claims.claim_free_uid(api, namespace, request, self.home_template, self.log)
        else:
            await claims.claim_known_uid(api, namespace, uid, decision.source, request, self.home_template, self.log)
        self._uid = uid
        return make_identity(self.user.name, uid, self.home_template)

    async def _assign_gpus(self) -> GpuGrant:
        try:
            count, devices = gpu_request(self.user_options)
        except OptionsError as e:
            raise SpawnRefused(str(e), reason="options") from None
        if devices is not None:
            raise SpawnRefused("On Kubernetes the scheduler picks the GPUs; ask for a number of them.",
                               reason="gpu", status_code=403)
        groups = [g.name for g in self.user.groups]
        slots, since = await self.gpus.assign(holder_key(self.user.name, self.name), groups, count, None,
                                              owner=self.user.name)
        self._gpus_held = slots
        if slots:
            self.audit.emit("gpus-assigned", **self._audit_fields(devices=list(slots)))
        return GpuGrant(slots, since.isoformat(), picked_by=BY_SCHEDULER)

    async def _ensure_workspace(self, identity: Identity) -> None:
        """Create the user's workspace claim, labelled with their UID, unless it is there."""
        claim = objects.make_workspace_claim(
            self.pvc_name, self.namespace, self.user.name, identity, capacity=self.storage_capacity,
            storage_class=self.storage_class or None, access_modes=tuple(self.storage_access_modes),
            version=__version__,
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

    # --- stop and poll -----------------------------------------------------------

    async def _release_gpus(self, reason: str | None = None) -> None:
        released = await self.gpus.release(holder_key(self.user.name, self.name))
        if released:
            self.audit.emit("gpus-released", **self._audit_fields(devices=list(released), reason=reason))
        self._gpus_held = ()

    async def stop(self, now=False):
        await super().stop(now=now)
        try:
            await self.networking_api.delete_namespaced_network_policy(self.pod_name, self.namespace)
        except ApiException as e:
            if e.status != 404:
                raise
        if self._polling:  # kubespawner's poll removes a pod whose server ended by itself
            self.audit.emit("server-died", **self._audit_fields(reason="the server's container ended"))
            await self._release_gpus()
            return
        reason, self.stop_reason = self.stop_reason, None
        await self._release_gpus(reason)
        self.audit.emit("server-stopped", **self._audit_fields(reason=reason))

    _polling = False

    async def poll(self):
        self._polling = True
        try:
            status = await super().poll()
        finally:
            self._polling = False
        if status is not None and await self.gpus.held_by(holder_key(self.user.name, self.name)):
            self.audit.emit("server-died", **self._audit_fields(reason=str(status)))  # the pod is gone
            await self._release_gpus()
        return status

    def _audit_object(self) -> dict:
        return {"container_id": None, "container_name": f"{self.namespace}/{self.pod_name}"}
