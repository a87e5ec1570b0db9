"""Issue 21: image admission on the real engine, through real hubs.

Small images are built here from the Debian base (their exports read in a second or two)
with what a real build writes: a setuid file, the same file removed by a later ``RUN rm``
(a whiteout in the engine's own layer), a file capability set in a ``RUN``. The spawn-level
tests go through a real hub and proxy and read the spawn page's progress stream; the
pinning test retags a name the hub approved at its start, and approves it with the admin
command. The scanner is the stand-in `tests/stubs/scanner`, printing reports in Trivy's
schema: no real scanner can be installed here.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import docker
import pytest

from hardened_spawner import labels
from hardened_spawner.admission.rules import AdmissionRules, Case, judge
from hardened_spawner.docker import image_records
from hubdriver import SINGLEUSER_IMAGE, TEST_PREFIX

BASE_IMAGE = "hardened-spawner-base:bookworm"
STUBS = Path(__file__).parents[1] / "stubs"
SCANS = Path(__file__).parents[1] / "fixtures" / "scans"
NET_RAW_EP = "0100000200200000000000000000000000000000"
NAMES = {
    "setuid": f"{TEST_PREFIX}-adm-setuid:1",
    "removed": f"{TEST_PREFIX}-adm-removed:1",
    "fcap": f"{TEST_PREFIX}-adm-fcap:1",
    "retag": f"{TEST_PREFIX}-adm-retag:1",
    "rebuilt": f"{TEST_PREFIX}-adm-rebuilt:1",
    "closed": f"{TEST_PREFIX}-adm-closed:1",
    "late": f"{TEST_PREFIX}-adm-late:1",
}
#: a stand-in server program: admission only asks that it is there and anyone may run it
FAKE_SINGLEUSER = ("printf '#!/bin/sh\\nexit 1\\n' > /usr/local/bin/jupyterhub-singleuser && "
                   "chmod 755 /usr/local/bin/jupyterhub-singleuser")
DOCKERFILES = {
    # the base's own setuid files stripped, one of ours added: exactly one to find
    "setuid": f"""FROM {BASE_IMAGE}
RUN find / -xdev -perm /6000 -type f -exec chmod a-s {{}} + && cp /usr/bin/true /usr/local/bin/escalate \\
    && chmod 4755 /usr/local/bin/escalate && {FAKE_SINGLEUSER}
""",
    "removed": f"""FROM {NAMES['setuid']}
RUN rm /usr/local/bin/escalate
""",
    "fcap": f"""FROM {NAMES['removed']}
RUN cp /usr/bin/true /usr/local/bin/pinger && python3 -c "import os; \\
os.setxattr('/usr/local/bin/pinger', 'security.capability', bytes.fromhex('{NET_RAW_EP}'))"
""",
    "rebuilt": f"""FROM {SINGLEUSER_IMAGE}
LABEL org.example.rebuilt=yes
""",
    # issue 29, item 5: the program stays 0755, the directory holding it is closed to others
    "closed": f"""FROM {SINGLEUSER_IMAGE}
USER root
RUN chmod 700 /opt/venv/bin
USER 1000:100
""",
}


def build(name: str, dockerfile: str, where: Path) -> None:
    (where / "Dockerfile").write_text(dockerfile)
    done = subprocess.run(["docker", "build", "-q", "-t", name, str(where)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def images(engine, tmp_path_factory):
    for key in ("setuid", "removed", "fcap", "rebuilt", "closed"):
        build(NAMES[key], DOCKERFILES[key], tmp_path_factory.mktemp(key))
    api = engine.api
    ids = {key: api.inspect_image(name)["Id"] for key, name in NAMES.items() if key not in ("retag", "late")}
    yield ids
    for name in NAMES.values():
        try:
            engine.images.remove(name, force=True)
        except docker.errors.ImageNotFound:
            pass
    remove_records(engine, set(ids.values()) | {api.inspect_image(i)["Id"] for i in (SINGLEUSER_IMAGE, BASE_IMAGE)})


def remove_records(engine, image_ids: set[str]) -> None:
    """What this module left in the engine's admission records: facts of its own images, the
    stand-in scanner's reports, approvals of its names (never the project image's facts or
    approval, which scripts/setup.sh made)."""
    project = engine.api.inspect_image(SINGLEUSER_IMAGE)["Id"]
    for volume in engine.volumes.list(filters={"label": f"{labels.ROLE}"}):
        found = volume.attrs["Labels"]
        role, image_id = found.get(labels.ROLE), found.get(image_records.IMAGE_ID)
        if (role == image_records.ROLE_APPROVAL and found.get(image_records.IMAGE_NAME, "").startswith(TEST_PREFIX)) \
                or (role == image_records.ROLE_SCAN and image_id in image_ids) \
                or (role == image_records.ROLE_FACTS and image_id in image_ids and image_id != project):
            volume.remove(force=True)


def facts_of(engine, name):
    return image_records.read_facts(engine.api, engine.api.inspect_image(name))


def test_the_engines_own_layers_are_read_as_they_apply(engine, images):
    setuid = facts_of(engine, NAMES["setuid"])
    assert [s.describe() for s in setuid.special] == ["/usr/local/bin/escalate (setuid, owner 0:0, mode 4755)"]
    # removed by a later RUN rm: the engine wrote a whiteout; the image no longer holds it
    assert facts_of(engine, NAMES["removed"]).special == ()
    assert judge(Case(NAMES["removed"], facts_of(engine, NAMES["removed"]), ())) == []
    fcap = facts_of(engine, NAMES["fcap"])
    assert [s.describe() for s in fcap.special] == [
        "/usr/local/bin/pinger (file capability cap_net_raw+ep, owner 0:0, mode 0755)"]
    [refused] = judge(Case(NAMES["fcap"], fcap, ()))
    assert refused.check == "special-files"
    allowed = AdmissionRules(allowed_special_files=frozenset({"/usr/local/bin/pinger"}))
    assert judge(Case(NAMES["fcap"], fcap, (), rules=allowed)) == []


def test_the_base_images_stock_setuid_files_are_found(engine, images):
    """What a stock Debian (or docker-stacks) image carries: the admission of a base built
    by debootstrap lists the setuid and setgid files Debian installs."""
    paths = [s.path for s in facts_of(engine, BASE_IMAGE).special]
    assert {"/usr/bin/su", "/usr/bin/passwd", "/usr/bin/mount", "/usr/lib/openssh/ssh-keysign"} <= set(paths)


def test_the_projects_image_is_admitted(engine, hub):
    facts = image_records.facts_for(engine.api, engine.api.inspect_image(SINGLEUSER_IMAGE))
    assert (facts.special_count, facts.commands["jupyterhub-singleuser"].path) == (0, "/opt/venv/bin/jupyterhub-singleuser")
    hub.create_user("admitted")
    result = hub.spawn("admitted")
    assert result.ready, result.message
    assert "Checking the image" in [e.get("message") for e in result.events]
    [admitted] = [e for e in hub.audit_events() if e["event"] == "image-admitted" and e["user"] == "admitted"]
    assert admitted["admission"]["violations"] == [] and admitted["admission"]["special_files"] == 0
    hub.stop_server("admitted")


def test_a_setuid_image_is_refused_on_the_spawn_page_and_nothing_is_left(engine, images, hub_factory):
    hub = hub_factory(f'c.HardenedSpawner.image = "{NAMES["setuid"]}"')
    hub.create_user("suid")
    result = hub.spawn("suid")
    assert not result.ready
    assert result.message.startswith(f"Spawn failed: The image {NAMES['setuid']} ({images['setuid'][:19]}) was not "
                                     "admitted, so your server was not started.")
    assert "/usr/local/bin/escalate (setuid, owner 0:0, mode 4755)" in result.message
    assert "chmod a-s" in result.message  # the fix
    # nothing of the user's was made: no container, no workspace, no UID claim
    assert engine.containers.list(all=True, filters={"label": f"{labels.OWNER}=suid"}) == []
    assert engine.volumes.list(filters={"label": f"{labels.OWNER}=suid"}) == []
    [refused] = [e for e in hub.audit_events() if e["event"] == "image-refused"]
    assert refused["user"] == "suid" and refused["admission"]["special_paths"] == ["/usr/local/bin/escalate"]
    assert refused["image_digest"] == images["setuid"]
    assert hub.api("GET", "/").ok  # a refusal, not a hub failure
    # the admin sees the same from the command line
    shown = admin_command(hub, "images")
    assert shown.returncode == 1 and "refused" in shown.stdout and "/usr/local/bin/escalate" in shown.stdout


def test_an_image_whose_venv_bin_others_may_not_search_is_refused_with_the_directory_named(engine, images, hub_factory):
    """Issue 29, item 5: `chmod 700 /opt/venv/bin` (the program itself stays 0755) was admitted,
    and the server then died with "exec jupyterhub-singleuser failed: Permission denied",
    leaving a workspace, a UID claim and an exited container behind."""
    name = NAMES["closed"]
    # what the engine does with such an image: no other UID finds the program
    ran = subprocess.run(["docker", "run", "--rm", "--name", f"{TEST_PREFIX}-adm-closed-probe", "--user", "4242:4242",
                          name, "jupyterhub-singleuser", "--version"], capture_output=True, text=True, timeout=120)
    assert ran.returncode != 0 and "executable file not found" in ran.stderr, ran
    hub = hub_factory(f'c.HardenedSpawner.image = "{name}"')
    hub.create_user("closed")
    result = hub.spawn("closed")
    assert not result.ready
    assert result.message.startswith(f"Spawn failed: The image {name} ({images['closed'][:19]}) was not admitted")
    assert ("(/opt/venv/bin/jupyterhub-singleuser) lies behind /opt/venv/bin (mode 0700), a directory others may "
            "not search") in result.message
    assert ("Fix: RUN chmod o+x /opt/venv/bin in the image (as root), so that every UID may reach "
            "/opt/venv/bin/jupyterhub-singleuser.") in result.message
    # refused before anything of the user's was made: no container, no workspace, no UID claim
    assert engine.containers.list(all=True, filters={"label": f"{labels.OWNER}=closed"}) == []
    assert engine.volumes.list(filters={"label": f"{labels.OWNER}=closed"}) == []
    [refused] = [e for e in hub.audit_events() if e["event"] == "image-refused"]
    assert refused["user"] == "closed" and refused["admission"]["violations"] == ["singleuser"]


def test_a_name_first_seen_at_a_users_spawn_is_approved_by_the_hub_not_the_user(engine, images, hub_factory):
    """Issue 29, item 7: the image was loaded after the hub started, so the hub first saw its name
    when a user spawned; the approval is the hub's (user null), the admission the user's."""
    name = NAMES["late"]
    hub = hub_factory(f'c.HardenedSpawner.image = "{name}"')
    deadline = time.monotonic() + 60
    while f"Image {name} is not on the engine" not in hub.log_tail(400):  # the hub start looked, found none
        assert time.monotonic() < deadline, hub.log_tail()
        time.sleep(0.5)
    engine.images.get(SINGLEUSER_IMAGE).tag(name)  # the admin loads it
    hub.create_user("early")
    result = hub.spawn("early")
    assert result.ready, result.message
    [approved] = [e for e in hub.audit_events() if e["event"] == "image-approved"]
    assert (approved["user"], approved["uid"], approved["client_ip"], approved["image"], approved["reason"]) == \
        (None, None, None, name, "approved by the hub, on first sight")
    [admitted] = [e for e in hub.audit_events() if e["event"] == "image-admitted"]
    assert (admitted["user"], admitted["image"]) == ("early", name)
    hub.stop_server("early")


def admin_command(hub, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hardened_spawner", *args, "--config",
                           str(hub.workdir / "jupyterhub_config.py")],
                          capture_output=True, text=True, timeout=120)


def wait_for_event(hub, predicate, timeout=60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [e for e in hub.audit_events() if predicate(e)]
        if found:
            return found[-1]
        time.sleep(0.5)
    raise AssertionError(f"no such audit event in {timeout}s:\n{hub.log_tail(40)}")


def test_a_retagged_image_is_refused_until_an_admin_approves_it(engine, images, hub_factory):
    name = NAMES["retag"]
    engine.images.get(SINGLEUSER_IMAGE).tag(name)
    hub = hub_factory(f'c.HardenedSpawner.image = "{name}"')
    # the hub approves the name for what it means at its start (no user caused it)
    first = wait_for_event(hub, lambda e: e["event"] == "image-approved" and e["image"] == name)
    assert (first["user"], first["reason"]) == (None, "approved by the hub, on first sight")
    hub.create_user("before")
    assert hub.spawn("before").ready  # runs on while the name moves

    engine.images.get(NAMES["rebuilt"]).tag(name)  # someone rebuilt and retagged it
    hub.create_user("after")
    refused = hub.spawn("after")
    assert not refused.ready
    assert (f"{name} is image {images['rebuilt']} here, not the approved "
            f"{first['image_digest']}") in refused.message
    assert f"hardened-spawner images approve {name}" in refused.message
    # issue 29, item 10: before the approval, check judges the name as a new spawn would
    checked = admin_command(hub, "check")
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert "Images of running servers: " not in checked.stdout  # not "all would be admitted today"
    assert "New spawns of the images running servers were started from would be refused today:" in checked.stdout
    assert (f"  {name} now means {images['rebuilt'][:19]}, not what its running servers run\n"
            f"      image-changed: {name} is image {images['rebuilt']} here, not the approved {first['image_digest']}"
            ) in checked.stdout
    assert (f"      running on {first['image_digest'][:19]} (the image {name} meant when they started; admitted): "
            f"{hub.prefix}-before--\n"
            f"      fix: an admin checks the new image and approves it: hardened-spawner images approve {name}\n"
            ) in checked.stdout

    approved = admin_command(hub, "images", "approve", name, "--by", "test-admin")
    assert approved.returncode == 0, approved.stderr
    assert approved.stdout.strip() == (f"Approved {name} = {images['rebuilt']} in place of "
                                       f"{first['image_digest']}, by test-admin.")
    event = wait_for_event(hub, lambda e: e["event"] == "image-approved" and e["user"] == "test-admin")
    assert event["reason"] == f"approved by test-admin in place of {first['image_digest']}"
    again = hub.spawn("after")
    assert again.ready, again.message
    listed = admin_command(hub, "images")
    assert listed.returncode == 0 and "approved by test-admin" in listed.stdout
    # the server still running the image the name meant before is one check reports
    checked = admin_command(hub, "check")
    assert checked.returncode == 1
    assert "Images of running servers that would not be admitted today:" in checked.stdout  # of every hub
    assert (f"  {name} ({first['image_digest'][:19]})\n      image-changed: {name} is image "
            f"{first['image_digest']} here, not the approved {images['rebuilt']}") in checked.stdout
    for user in ("before", "after"):
        hub.stop_server(user)


def scanner_hub(hub_factory, report: str):
    return hub_factory(textwrap.dedent(f"""
        c.HardenedSpawner.image_scanner = ["{STUBS / 'scanner'}", "{SCANS / report}", "{{image_id}}"]
    """))


def test_a_critical_finding_refuses_and_a_clean_report_admits(engine, images, hub_factory):
    critical = scanner_hub(hub_factory, "trivy-critical.json")
    critical.create_user("scanned")
    refused = critical.spawn("scanned")
    assert not refused.ready
    assert ("trivy found 2 vulnerabilities at CRITICAL or above" in refused.message
            and "CVE-2023-45853 (CRITICAL, zlib1g 1:1.2.13.dfsg-1, no fix yet)" in refused.message
            and "CVE-2024-45491 (CRITICAL, libexpat1 2.5.0-1, fixed in 2.5.0-1+deb12u1)" in refused.message)
    [event] = [e for e in critical.audit_events() if e["event"] == "image-refused"]
    assert event["admission"]["scan"]["counts"] == {"CRITICAL": 2, "MEDIUM": 2}

    clean = scanner_hub(hub_factory, "trivy-clean.json")
    clean.create_user("scanned")
    admitted = clean.spawn("scanned")
    assert admitted.ready, admitted.message
    clean.stop_server("scanned")
