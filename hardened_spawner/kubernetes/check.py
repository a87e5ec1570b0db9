"""``hardened-spawner check --kubernetes``: the user pods that break the policy, read through
the Kubernetes API and judged by the guard the spawner runs before it creates one
(`guard.check_pod`), so an audit cannot disagree with what the spawner enforces.

Plain functions: pods (the API's dicts) in, reports and their renderings out; the command
and the hub's start fetch the pods, these decide and format.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from ..core.decision import BY_SCHEDULER, GpuGrant
from ..core.violations import Violation
from . import objects
from .guard import PodGuardPolicy, check_pod
from .models import to_dict
from .settings import RESTRICTED_ADDABLE

#: kubespawner's label on every user server pod, ours or not
USER_PODS = "component=singleuser-server"


@dataclass(frozen=True)
class PodReport:
    name: str
    owner: str  # the hub user the pod says it is for ("" when it says none)
    managed: bool  # made by HardenedKubeSpawner
    phase: str
    findings: tuple[Violation, ...]

    @property
    def ok(self) -> bool:
        return not self.findings


def report_pod(pod: dict, allowed_cap_add: frozenset[str] = RESTRICTED_ADDABLE) -> PodReport:
    """One pod judged; the GPUs it may ask for are those its own grant annotation names
    (a pod nobody granted GPUs may ask for none)."""
    metadata = pod.get("metadata") or {}
    annotations, labels = metadata.get("annotations") or {}, metadata.get("labels") or {}
    slots = tuple(s for s in annotations.get(objects.GPUS, "").split(",") if s)
    granted = GpuGrant(slots, picked_by=BY_SCHEDULER).resources()
    policy = PodGuardPolicy(allowed_cap_add, tuple(granted.items()))
    return PodReport(
        name=f"{metadata.get('namespace', '')}/{metadata.get('name', '?')}",
        owner=annotations.get(objects.OWNER) or labels.get("hub.jupyter.org/username", ""),
        managed=labels.get(objects.MANAGED) == "true",
        phase=(pod.get("status") or {}).get("phase", ""),
        findings=tuple(check_pod(pod, policy)),
    )


def pods_as_table(reports: list[PodReport]) -> str:
    if not reports:
        return "No user pods found.\n"
    lines = []
    for r in reports:
        verdict = "OK" if r.ok else f"{len(r.findings)} violation{'s' if len(r.findings) != 1 else ''}"
        made_by = "hardened" if r.managed else "not made by HardenedKubeSpawner"
        lines.append(f"{verdict:<13} {r.name}  owner={r.owner or '?'}  {r.phase}  ({made_by})")
        for f in r.findings:
            lines.append(f"    {f.check} ({f.key}): {f.problem}")
            lines.append(f"      fix: {f.fix}")
    bad = [r for r in reports if not r.ok]
    lines += ["", f"{len(reports)} pod(s) checked: {len(reports) - len(bad)} OK, {len(bad)} breaking the policy."]
    return "\n".join(lines) + "\n"


def pods_as_json(reports: list[PodReport]) -> str:
    return json.dumps({"pods": [
        {"name": r.name, "owner": r.owner, "managed": r.managed, "phase": r.phase, "ok": r.ok,
         "violations": [{"check": f.check, "key": f.key, "problem": f.problem, "fix": f.fix} for f in r.findings]}
        for r in reports
    ]}, indent=2, sort_keys=True)


def run_kube_check(core_api, namespace: str, *, as_json: bool = False) -> tuple[str, int]:
    """List the user pods through a (sync) ``kubernetes`` CoreV1Api, judge them; the text and
    the exit status (0 none breaks the policy, 1 some do)."""
    pods = core_api.list_namespaced_pod(namespace, label_selector=USER_PODS).items
    reports = [report_pod(core_api.api_client.sanitize_for_serialization(pod)) for pod in pods]
    text = pods_as_json(reports) + "\n" if as_json else pods_as_table(reports)
    return text, 0 if all(r.ok for r in reports) else 1


async def audit_at_hub_start(api, namespace: str, log) -> None:
    """At hub start: name each running user pod that breaks the policy in the log. Never
    raises: the hub starts whatever the cluster says."""
    try:
        pods = (await api.list_namespaced_pod(namespace, label_selector=USER_PODS)).items
    except Exception as e:
        log.error("Could not list the user pods in %s to check them: %s", namespace, e)
        return
    reports = [report_pod(to_dict(pod)) for pod in pods]
    for report in reports:
        if not report.ok:
            log.warning("User pod %s breaks the policy: %s", report.name, "; ".join(map(str, report.findings)))
    log.info("Checked %d user pod(s) in %s: %d breaking the policy", len(reports), namespace,
             sum(not r.ok for r in reports))
