"""kubernetes.guard: the generated Pod passes; every way an escape hatch could weaken it is
caught with its check id; the Docker guard's rules each have their pod counterpart."""

import copy

import pytest
from kube_fixtures import decision, pod, scheduler_gpus

from hardened_spawner.core.violations import describe
from hardened_spawner.docker import guard as docker_guard
from hardened_spawner.kubernetes.guard import DOCKER_RULES, RULES, SELINUX_TYPES, PodGuardPolicy, check_pod

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
    "AppArmor Unconfined for the pod": (lambda s, c: s["securityContext"].update(appArmorProfile={"type": "Unconfined"}),
                                        ["apparmor-unconfined"]),
    "SELinux spc_t": (lambda s, c: _context(c).update(seLinuxOptions={"type": "spc_t"}), ["selinux-options"]),
    "SELinux unconfined_t for the pod": (lambda s, c: s["securityContext"].update(seLinuxOptions={"type": "unconfined_t"}),
                                         ["selinux-options"]),
    "SELinux user": (lambda s, c: _context(c).update(seLinuxOptions={"user": "system_u"}), ["selinux-options"]),
    "SELinux role for the pod": (lambda s, c: s["securityContext"].update(seLinuxOptions={"role": "system_r"}),
                                 ["selinux-options"]),
    "liveness probe to the metadata address": (lambda s, c: c.update(livenessProbe={"httpGet": {
        "host": "169.254.169.254", "path": "/computeMetadata/v1/", "port": 80}}), ["probe-host"]),
    "readiness probe host (the server's own)": (lambda s, c: c["readinessProbe"]["httpGet"].update(host="10.0.0.7"),
                                                ["probe-host"]),
    "startup probe tcpSocket host": (lambda s, c: c.update(startupProbe={"tcpSocket": {"host": "kubernetes.default",
                                                                                      "port": 443}}), ["probe-host"]),
    "postStart httpGet host": (lambda s, c: c.update(lifecycle={"postStart": {"httpGet": {
        "host": "169.254.169.254", "path": "/", "port": 80}}}), ["probe-host"]),
    "preStop tcpSocket host": (lambda s, c: c.update(lifecycle={"preStop": {"tcpSocket": {"host": "10.0.0.1",
                                                                                          "port": 22}}}), ["probe-host"]),
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


# --- the PSS items only a pod has, each with the same pod that keeps it (so none passes by construction)

CHOWN_POLICY = PodGuardPolicy(allowed_cap_add=frozenset({"CHOWN", "NET_BIND_SERVICE"}))


def test_a_capability_in_cap_add_that_restricted_forbids_is_refused_on_kubernetes():
    # the hub-start check refuses cap_add = ["CHOWN"]; the guard refuses the pod even so
    manifest = _mutated(lambda s, c: _context(c)["capabilities"].update(add=["CHOWN", "NET_BIND_SERVICE"]))
    violations = check_pod(manifest, CHOWN_POLICY)
    assert [str(v) for v in violations] == [
        "Capabilities the Pod Security Standards' restricted profile forbids would be added: CHOWN "
        "(spec.containers[notebook].securityContext.capabilities.add, set through HardenedKubeSpawner.cap_add). "
        "Fix: on Kubernetes add only NET_BIND_SERVICE; remove the others from cap_add"]
    assert [v.check for v in violations] == ["cap-add"]
    # the same pod adding only what restricted allows passes the same policy
    allowed = _mutated(lambda s, c: _context(c)["capabilities"].update(add=["NET_BIND_SERVICE"]))
    assert check_pod(allowed, CHOWN_POLICY) == []


def test_cap_chown_spelled_with_its_prefix_is_refused_too():
    manifest = _mutated(lambda s, c: _context(c)["capabilities"].update(add=["cap_chown"]))
    assert [v.check for v in check_pod(manifest, CHOWN_POLICY)] == ["cap-add"]


def _annotated(**annotations) -> dict:
    manifest = copy.deepcopy(pod())
    manifest["metadata"]["annotations"].update(annotations)
    return manifest


APPARMOR = "container.apparmor.security.beta.kubernetes.io/"


@pytest.mark.parametrize("value", ["unconfined", "localhost/", "runtime/unconfined", ""])
def test_an_apparmor_annotation_other_than_the_default_or_a_local_profile_is_refused(value):
    violations = check_pod(_annotated(**{f"{APPARMOR}notebook": value}), POLICY)
    assert [v.check for v in violations] == ["apparmor-unconfined"]
    assert violations[0].key == f"metadata.annotations[{APPARMOR}notebook]"
    assert violations[0].setting == "extra_annotations"


def test_the_apparmor_annotation_is_judged_whatever_container_it_names():
    # an annotation for a container added later (an ephemeral one) is refused all the same
    assert [v.problem for v in check_pod(_annotated(**{f"{APPARMOR}debugger": "unconfined"}), POLICY)] == [
        "AppArmor would be switched off for container 'debugger' ('unconfined')"]


def test_the_apparmor_annotations_that_keep_confinement_pass():
    manifest = _annotated(**{f"{APPARMOR}notebook": "runtime/default", f"{APPARMOR}side": "localhost/k8s-notebook",
                             "apparmor.example.org/note": "unconfined"})  # not the PSS key: not AppArmor's
    assert check_pod(manifest, POLICY) == []


@pytest.mark.parametrize("profile", [{"type": "RuntimeDefault"}, {"type": "Localhost", "localhostProfile": "k8s-nb"}])
def test_the_apparmor_fields_that_keep_confinement_pass_at_both_levels(profile):
    def change(s, c):
        s["securityContext"]["appArmorProfile"] = dict(profile)
        _context(c)["appArmorProfile"] = dict(profile)
    assert check_pod(_mutated(change), POLICY) == []


def test_each_apparmor_field_is_judged_on_its_own():
    # a container's own RuntimeDefault does not excuse the pod's Unconfined (PSS reads each field)
    def change(s, c):
        s["securityContext"]["appArmorProfile"] = {"type": "Unconfined"}
        _context(c)["appArmorProfile"] = {"type": "RuntimeDefault"}
    assert [v.key for v in check_pod(_mutated(change), POLICY)] == ["spec.securityContext.appArmorProfile.type"]


@pytest.mark.parametrize("selinux_type", sorted(SELINUX_TYPES))
def test_the_selinux_types_pss_allows_pass_with_a_level(selinux_type):
    options = {"type": selinux_type, "level": "s0:c123,c456"}  # the level (categories) is free

    def change(s, c):
        s["securityContext"]["seLinuxOptions"] = dict(options)
        _context(c)["seLinuxOptions"] = dict(options)
    assert check_pod(_mutated(change), POLICY) == []


def test_the_selinux_types_are_exactly_those_of_the_pss_text():
    # PSS baseline, SELinux (Kubernetes 1.34): undefined/"", container_t, container_init_t,
    # container_kvm_t, container_engine_t (since 1.31)
    assert set(SELINUX_TYPES) == {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}


def test_an_selinux_refusal_says_what_and_how_to_fix_it():
    (violation,) = check_pod(_mutated(lambda s, c: _context(c).update(seLinuxOptions={"type": "spc_t"})), POLICY)
    assert str(violation) == (
        "The SELinux type would be 'spc_t', not one of the types that confine a container (container_engine_t, "
        "container_init_t, container_kvm_t, container_t) (spec.containers[notebook].securityContext.seLinuxOptions"
        ".type, set through extra_container_config). Fix: remove seLinuxOptions.type (the runtime gives container_t)")


def test_selinux_user_and_role_empty_pass():
    assert check_pod(_mutated(lambda s, c: _context(c).update(seLinuxOptions={"user": "", "role": ""})), POLICY) == []


def test_probes_and_hooks_without_a_host_pass():
    def change(s, c):
        c["readinessProbe"]["httpGet"]["host"] = ""  # "" is the pod's own address, as PSS allows
        c["livenessProbe"] = {"httpGet": {"path": "/user/alice/api", "port": "notebook-port"}}
        c["startupProbe"] = {"tcpSocket": {"port": "notebook-port"}}
        c["lifecycle"] = {"postStart": {"exec": {"command": ["true"]}},
                          "preStop": {"httpGet": {"path": "/", "port": 8888}}}
    assert check_pod(_mutated(change), POLICY) == []


def test_a_probe_host_refusal_names_the_field_and_the_fix():
    manifest = _mutated(lambda s, c: c.update(livenessProbe={"httpGet": {"host": "169.254.169.254", "port": 80}}))
    assert [str(v) for v in check_pod(manifest, POLICY)] == [
        "The kubelet would connect to '169.254.169.254' from the node for a probe or hook, past the server's "
        "NetworkPolicy (spec.containers[notebook].livenessProbe.httpGet.host, set through extra_container_config). "
        "Fix: remove 'host'; a probe or hook reaches the container at the pod's own address"]


def test_an_init_containers_probe_host_is_refused_too():
    def change(s, c):
        sidecar = {**copy.deepcopy(c), "name": "sidecar", "restartPolicy": "Always",
                   "startupProbe": {"tcpSocket": {"host": "169.254.169.254", "port": 80}}}
        s["initContainers"] = [sidecar]
    assert [v.key for v in check_pod(_mutated(change), POLICY)] == [
        "spec.initContainers[sidecar].startupProbe.tcpSocket.host"]


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
