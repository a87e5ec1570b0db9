"""checkov's Kubernetes checks over every generated manifest: someone else's code judging
the policy. One checkov run reads our manifests and a set of mutants (our Pod with one
protection removed each); ours must pass every check but the ones listed with their
reason, and each mutant must fail the checks that cover what it removed, so no check here
passes by construction. checkov lives in its own venv (scripts/setup.sh --gpu-stub).

Which checks cover which item of the Pod Security Standards' restricted profile is
`PSS_RESTRICTED`; the items checkov has no check for (or checks only in part) are tested
from the PSS text in test_kube_manifests."""

import copy
import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml
from kube_fixtures import decision, pod
from kube_manifests import generated

CHECKOV = Path(__file__).resolve().parents[2] / ".venv-checkov" / "bin" / "checkov"
#: what every user's image should be named by on a cluster (README: pin images by digest)
PINNED = "registry.example.org/singleuser@sha256:" + "5" * 64

#: PSS restricted item (and what we add beyond it) -> the checkov checks that cover it
PSS_RESTRICTED = {
    "privileged containers": ["CKV_K8S_16"],
    "host namespaces": ["CKV_K8S_17", "CKV_K8S_18", "CKV_K8S_19"],
    "host ports": ["CKV_K8S_26"],
    "hostPath volumes (only the Docker socket)": ["CKV_K8S_27"],
    "privilege escalation": ["CKV_K8S_20"],
    "running as non-root": ["CKV_K8S_23"],
    "running as a non-root, high UID": ["CKV_K8S_40"],
    "seccomp": ["CKV_K8S_31"],
    "capabilities: drop ALL": ["CKV_K8S_28", "CKV_K8S_37"],
    "capabilities: add nothing dangerous": ["CKV_K8S_25", "CKV_K8S_39"],
    "beyond restricted: read-only root": ["CKV_K8S_22"],
    "beyond restricted: no API token": ["CKV_K8S_38"],
    "beyond restricted: requests and limits": ["CKV_K8S_10", "CKV_K8S_11", "CKV_K8S_12", "CKV_K8S_13"],
    "beyond restricted: a NetworkPolicy selects the pod": ["CKV2_K8S_6"],
}
#: checks our pods fail on purpose, and why
ACCEPTED = {
    # a liveness probe restarts (here: ends) a server whose /api is slow, as it is while a
    # kernel holds the GIL; the readiness probe (CKV_K8S_9, passing) is what the hub needs
    "CKV_K8S_8": "no liveness probe",
}


def _ours() -> dict[str, dict]:
    manifests = copy.deepcopy(generated())
    for manifest in manifests.values():
        if manifest["kind"] == "Pod":
            manifest["spec"]["containers"][0]["image"] = PINNED
    return manifests


def _context(container):
    return container["securityContext"]


#: name -> (what it removes, the checks that must then fail)
MUTANTS = {
    "privileged": (lambda s, c: _context(c).update(privileged=True), {"CKV_K8S_16"}),
    "host-network": (lambda s, c: s.update(hostNetwork=True), {"CKV_K8S_19"}),
    "host-pid": (lambda s, c: s.update(hostPID=True), {"CKV_K8S_17"}),
    "host-ipc": (lambda s, c: s.update(hostIPC=True), {"CKV_K8S_18"}),
    "host-port": (lambda s, c: c["ports"][0].update(hostPort=8888), {"CKV_K8S_26"}),
    "docker-socket": (lambda s, c: (s["volumes"].append({"name": "d", "hostPath": {"path": "/var/run/docker.sock"}}),
                                    c["volumeMounts"].append({"name": "d", "mountPath": "/d"})), {"CKV_K8S_27"}),
    "escalation": (lambda s, c: _context(c).update(allowPrivilegeEscalation=True), {"CKV_K8S_20"}),
    # the image's user (no runAsUser anywhere) with runAsNonRoot false
    "root-allowed": (lambda s, c: (_context(c).update(runAsNonRoot=False), _context(c).pop("runAsUser"),
                                   s["securityContext"].pop("runAsUser")), {"CKV_K8S_23"}),
    "uid-0": (lambda s, c: _context(c).update(runAsUser=0), {"CKV_K8S_40"}),
    "no-seccomp": (lambda s, c: (_context(c).pop("seccompProfile"), s["securityContext"].pop("seccompProfile")),
                   {"CKV_K8S_31"}),
    "no-drop": (lambda s, c: _context(c)["capabilities"].pop("drop"), {"CKV_K8S_28", "CKV_K8S_37"}),
    "sys-admin": (lambda s, c: _context(c)["capabilities"].update(add=["SYS_ADMIN"]), {"CKV_K8S_25", "CKV_K8S_39"}),
    "writable-root": (lambda s, c: _context(c).update(readOnlyRootFilesystem=False), {"CKV_K8S_22"}),
    "api-token": (lambda s, c: s.update(automountServiceAccountToken=True), {"CKV_K8S_38"}),
    "no-limits": (lambda s, c: c["resources"].pop("limits"), {"CKV_K8S_11", "CKV_K8S_13"}),
    "no-resources": (lambda s, c: c.pop("resources"), {"CKV_K8S_10", "CKV_K8S_11", "CKV_K8S_12", "CKV_K8S_13"}),
    "unpinned-image": (lambda s, c: c.update(image="registry.example.org/singleuser:1.2"), {"CKV_K8S_15", "CKV_K8S_43"}),
    "not-selected": (lambda s, c: None, {"CKV2_K8S_6"}),  # its labels below match no NetworkPolicy
}


def _mutants() -> dict[str, dict]:
    found = {}
    for name, (change, _) in MUTANTS.items():
        manifest = copy.deepcopy(pod(decision(image=PINNED)))
        manifest["metadata"]["name"] = f"mutant-{name}"
        if name == "not-selected":
            manifest["metadata"]["labels"]["hardened-spawner.jupyter.org/server"] = "nobody"
        change(manifest["spec"], manifest["spec"]["containers"][0])
        found[f"mutant-{name}"] = manifest
    return found


@pytest.fixture(scope="module")
def verdicts(tmp_path_factory) -> dict[str, dict[str, set[str]]]:
    """resource name -> {"passed": check ids, "failed": check ids}, from one checkov run."""
    if not CHECKOV.exists():
        pytest.fail(f"checkov is missing ({CHECKOV}). Run scripts/setup.sh --gpu-stub first.")
    folder = tmp_path_factory.mktemp("manifests")
    for name, manifest in {**_ours(), **_mutants()}.items():
        manifest = {**manifest, "metadata": {**manifest["metadata"], "name": name}}
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(manifest))
    # offline: no update check, no download of guidelines
    env = {**os.environ, "CKV_SKIP_PACKAGE_UPDATE_CHECK": "true"}
    done = subprocess.run([str(CHECKOV), "-d", str(folder), "--framework", "kubernetes", "-o", "json",
                           "--skip-download"], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode in (0, 1), done.stderr  # 1: some checks failed (the mutants)
    results = json.loads(done.stdout)["results"]
    found: dict[str, dict[str, set[str]]] = {}
    for outcome in ("passed", "failed"):
        for check in results[f"{outcome}_checks"]:
            name = check["resource"].split(".")[-1]
            found.setdefault(name, {"passed": set(), "failed": set()})[outcome].add(check["check_id"])
    assert results["parsing_errors"] == []
    return found


@pytest.mark.parametrize("name", _ours())
def test_every_manifest_passes_but_the_accepted_checks(verdicts, name):
    manifest = _ours()[name]
    failed = verdicts.get(name, {"failed": set()})["failed"]
    if manifest["kind"] == "Pod" and "NET_BIND_SERVICE" in json.dumps(manifest):
        # checkov fails any capability added back; PSS restricted allows NET_BIND_SERVICE
        assert failed == {*ACCEPTED, "CKV_K8S_25"}
    elif manifest["kind"] == "Pod":
        assert failed == set(ACCEPTED)
    else:
        assert failed == set()


@pytest.mark.parametrize("item", PSS_RESTRICTED)
def test_each_restricted_item_is_judged_on_every_pod_and_passes(verdicts, item):
    for name, manifest in _ours().items():
        if manifest["kind"] != "Pod" or "NET_BIND_SERVICE" in json.dumps(manifest):
            continue
        assert set(PSS_RESTRICTED[item]) <= verdicts[name]["passed"], name


@pytest.mark.parametrize("name", MUTANTS)
def test_each_mutant_is_caught(verdicts, name):
    assert MUTANTS[name][1] <= verdicts[f"mutant-{name}"]["failed"]


def test_every_listed_check_is_proven_live_by_a_mutant():
    caught = {check for _, checks in MUTANTS.values() for check in checks}
    assert {check for checks in PSS_RESTRICTED.values() for check in checks} <= caught
