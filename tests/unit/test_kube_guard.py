"""kubernetes.guard: the generated Pod passes; every way an escape hatch could weaken it is
caught with its check id; the Docker guard's rules each have their pod counterpart."""

import copy

import pytest
from kube_fixtures import decision, pod, scheduler_gpus

from hardened_spawner.core.violations import describe
from hardened_spawner.docker import guard as docker_guard
from hardened_spawner.kubernetes.guard import DOCKER_RULES, RULES, PodGuardPolicy, check_pod

POLICY = PodGuardPolicy()


def _mutated(change) -> dict:
    manifest = copy.deepcopy(pod())
    change(manifest["spec"], manifest["spec"]["containers"][0])
    return manifest


def _context(container) -> dict:
    return container["securityContext"]


MUTATIONS = {
    "privileged": (lambda s, c: _context(c).update(privileged=True), ["privileged"]),
    "host network": (lambda s, c: s.update(hostNetwork=True), ["host-namespace"]),
    "host PID": (lambda s, c: s.update(hostPID=True), ["host-namespace"]),
    "hostPath /": (lambda s, c: s["volumes"].append({"name": "root", "hostPath": {"path": "/"}}), ["host-path"]),
    "an nfs volume": (lambda s, c: s["volumes"].append({"name": "n", "nfs": {"server": "x", "path": "/"}}),
                      ["volume-type"]),
    "hostPort": (lambda s, c: c["ports"][0].update(hostPort=8888), ["published-ports"]),
    "restart Always": (lambda s, c: s.update(restartPolicy="Always"), ["restart-policy"]),
    "no restartPolicy (Always)": (lambda s, c: s.pop("restartPolicy"), ["restart-policy"]),
    "caps not dropped": (lambda s, c: _context(c)["capabilities"].update(drop=[]), ["cap-drop"]),
    "SYS_ADMIN added": (lambda s, c: _context(c)["capabilities"].update(add=["SYS_ADMIN"]), ["cap-add"]),
    "supplemental groups": (lambda s, c: s["securityContext"].update(supplementalGroups=[0]), ["group-add"]),
    "root": (lambda s, c: _context(c).update(runAsUser=0), ["user"]),
    "a system UID from the pod": (lambda s, c: (_context(c).pop("runAsUser"), s["securityContext"].update(runAsUser=33)),
                                  ["user"]),
    "runAsNonRoot false": (lambda s, c: _context(c).update(runAsNonRoot=False), ["user"]),
    "--allow-root": (lambda s, c: c["args"].append("--allow-root"), ["allow-root"]),
    "writable root": (lambda s, c: _context(c).update(readOnlyRootFilesystem=False), ["read-only-root"]),
    "privilege escalation": (lambda s, c: _context(c).update(allowPrivilegeEscalation=True), ["no-new-privileges"]),
    "allowPrivilegeEscalation unset": (lambda s, c: _context(c).pop("allowPrivilegeEscalation"),
                                       ["no-new-privileges"]),
    "seccomp Unconfined": (lambda s, c: _context(c).update(seccompProfile={"type": "Unconfined"}),
                           ["seccomp-unconfined"]),
    "no seccomp anywhere": (lambda s, c: (_context(c).pop("seccompProfile"), s["securityContext"].pop("seccompProfile")),
                            ["seccomp-unconfined"]),
    "AppArmor Unconfined": (lambda s, c: _context(c).update(appArmorProfile={"type": "Unconfined"}),
                            ["apparmor-unconfined"]),
    "/proc unmasked": (lambda s, c: _context(c).update(procMount="Unmasked"), ["proc-mount"]),
    "sysctls": (lambda s, c: s["securityContext"].update(sysctls=[{"name": "kernel.shm_rmid_forced", "value": "0"}]),
                ["sysctls"]),
    "the API token mounted": (lambda s, c: s.update(automountServiceAccountToken=True), ["service-account-token"]),
    "no memory limit": (lambda s, c: c["resources"]["limits"].pop("memory"), ["memory"]),
    "no CPU limit": (lambda s, c: c["resources"]["limits"].pop("cpu"), ["cpu"]),
    "a GPU nobody granted": (lambda s, c: c["resources"]["limits"].update({"nvidia.com/gpu": "1"}), ["gpu-count"]),
    "a sidecar running as root": (lambda s, c: s["containers"].append(
        {**copy.deepcopy(c), "name": "side", "securityContext": {**_context(c), "runAsUser": 0}}), ["user"]),
    "an init container with every capability": (lambda s, c: s.setdefault("initContainers", []).append(
        {**copy.deepcopy(c), "name": "init", "securityContext": {**_context(c), "capabilities": {}}}), ["cap-drop"]),
}


def test_the_generated_pod_passes():
    assert check_pod(pod(), POLICY) == []


def test_a_granted_gpu_pod_passes_and_more_gpus_than_granted_do_not():
    slots = ("nvidia.com/gpu#0", "nvidia.com/mig-1g.10gb#2")
    manifest = pod(decision(gpus=scheduler_gpus(*slots)))
    granted = PodGuardPolicy(gpu_resources=(("nvidia.com/gpu", 1), ("nvidia.com/mig-1g.10gb", 1)))
    assert check_pod(manifest, granted) == []
    manifest["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] = "4"
    assert [v.check for v in check_pod(manifest, granted)] == ["gpu-count"]


@pytest.mark.parametrize("change, checks", MUTATIONS.values(), ids=MUTATIONS.keys())
def test_each_weakening_is_caught(change, checks):
    assert [v.check for v in check_pod(_mutated(change), POLICY)] == checks


def test_an_allowed_capability_passes():
    manifest = _mutated(lambda s, c: _context(c)["capabilities"].update(add=["NET_BIND_SERVICE"]))
    assert check_pod(manifest, PodGuardPolicy(allowed_cap_add=frozenset({"NET_BIND_SERVICE"}))) == []


def test_the_refusal_reads_as_on_docker():
    violations = check_pod(_mutated(lambda s, c: _context(c).update(privileged=True)), POLICY)
    assert describe(violations) == (
        "The server was not started because its container would break the security policy:\n"
        "- A container would run privileged, with every capability and every host device "
        "(spec.containers[notebook].securityContext.privileged, set through extra_container_config). "
        "Fix: remove 'privileged'; it is never allowed"
    )


def test_every_docker_rule_has_a_pod_rule_or_a_reason():
    docker_checks = {check for rule in docker_guard.RULES for check in rule.checks}
    pod_checks = {check for checks, _ in RULES for check in checks}
    assert set(DOCKER_RULES) == docker_checks
    for docker_check, carried_by in DOCKER_RULES.items():
        pod_check = carried_by.split(" ")[0]
        assert pod_check in pod_checks or carried_by.startswith("none: "), docker_check
    # and every pod rule is exercised by a mutation above
    assert pod_checks == {check for _, checks in MUTATIONS.values() for check in checks}
