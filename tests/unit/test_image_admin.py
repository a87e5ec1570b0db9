"""`hardened-spawner check`'s judgement of the running servers' images (issue 29, item 10): a tag
rebuilt after its servers started is judged as a new spawn of it would be, not only as the
servers run it."""

from __future__ import annotations

import docker.errors
from fake_engine import VolumeTable
from image_exports import SINGLEUSER_IMAGE, export, f

from hardened_spawner.admission.rules import AdmissionRules, Approval
from hardened_spawner.docker import image_admin, image_records
from hardened_spawner.docker.admission import AdmissionSettings

OLD, NEW = "sha256:" + "0a" * 32, "sha256:" + "0b" * 32
SETTINGS = AdmissionSettings(AdmissionRules())
APPROVED_OLD = Approval("img:1", OLD, "", "alice", "2026-12-01T09:00:00+00:00")


class Engine(VolumeTable):
    """The engine calls `running_images` makes: servers, images (with their exports) and
    admission's records (volume labels, `fake_engine.VolumeTable`)."""

    def __init__(self, tags: dict[str, str], servers: dict[str, tuple[str, str]]):
        self.tags = tags  # name -> the ID it means now
        self.servers = servers  # container name -> (the name it started from, the ID it runs)
        self.exports = {OLD: export(SINGLEUSER_IMAGE), NEW: export([SINGLEUSER_IMAGE[0] + [f("etc/rebuilt")]])}
        self.volume_state: dict[str, dict] = {}

    def containers(self, filters=None):
        # the engine lists a server by its image's ID once the name means another image
        return [{"Id": name * 4, "Names": [f"/{name}"], "ImageID": image_id,
                 "Image": started if self.tags.get(started) == image_id else image_id}
                for name, (started, image_id) in self.servers.items()]

    def inspect_container(self, container_id):
        [(started, _)] = [s for n, s in self.servers.items() if n * 4 == container_id]
        return {"Config": {"Image": started}}

    def inspect_image(self, name):
        image_id = self.tags.get(name, name)
        if image_id not in self.exports:
            raise docker.errors.ImageNotFound(name)
        return {"Id": image_id, "Config": {"Cmd": ["jupyterhub-singleuser"]}}

    def get_image(self, image_id, chunk_size=None):
        return iter([self.exports[image_id]])



def engine_with(tags, servers, *approvals) -> Engine:
    engine = Engine(tags, servers)
    for approval in approvals:
        image_records.record_approval(engine, approval)
    return engine


RUNNING_OLD = {"jupyter-bob": ("img:1", OLD), "jupyter-ann": ("img:1", OLD)}


def test_a_tag_rebuilt_and_not_yet_approved_refuses_new_spawns_and_check_says_so():
    engine = engine_with({"img:1": NEW}, RUNNING_OLD, APPROVED_OLD)
    reports = image_admin.running_images(engine, SETTINGS)
    assert [(r.name, r.case.facts.image_id, r.current, r.servers, [v.check for v in r.violations])
            for r in reports] == [
        ("img:1", NEW, True, (), ["image-changed"]),  # what a new spawn of the name gets: refused
        ("img:1", OLD, False, ("jupyter-ann", "jupyter-bob"), []),  # the servers' own image: admitted
    ]
    assert any(r.violations for r in reports)  # `check` exits 1
    assert image_admin.running_as_text(reports).splitlines() == [
        "New spawns of the images running servers were started from would be refused today: 1 of 1",
        f"  img:1 now means {NEW[:19]}, not what its running servers run",
        f"      image-changed: img:1 is image {NEW} here, not the approved {OLD} (approved by alice at "
        "2026-12-01T09:00:00+00:00)",
        f"      running on {OLD[:19]} (the image img:1 meant when they started; admitted): jupyter-ann, jupyter-bob",
        "      fix: an admin checks the new image and approves it: hardened-spawner images approve img:1",
    ]


def test_after_the_approval_the_servers_on_the_old_image_are_named_with_what_to_do():
    approved_new = Approval("img:1", NEW, OLD, "carol", "2026-12-02T09:00:00+00:00")
    engine = engine_with({"img:1": NEW}, {**RUNNING_OLD, "jupyter-cat": ("img:1", NEW)}, APPROVED_OLD, approved_new)
    reports = image_admin.running_images(engine, SETTINGS)
    assert [(r.case.facts.image_id, r.current, r.servers, bool(r.violations)) for r in reports] == [
        (NEW, True, ("jupyter-cat",), False), (OLD, False, ("jupyter-ann", "jupyter-bob"), True)]
    assert image_admin.running_as_text(reports).splitlines() == [
        "Images of running servers that would not be admitted today: 1 of 2",
        f"  img:1 ({OLD[:19]})",
        f"      image-changed: img:1 is image {OLD} here, not the approved {NEW} (approved by carol at "
        "2026-12-02T09:00:00+00:00)",
        "      servers on it: jupyter-ann, jupyter-bob; the name means another image now: stop and start them "
        "from the hub to move them to it",
    ]


def test_a_name_that_still_means_the_servers_image_is_reported_once_and_a_removed_one_is_missing():
    engine = engine_with({"img:1": OLD}, RUNNING_OLD, APPROVED_OLD)
    reports = image_admin.running_images(engine, SETTINGS)
    assert [(r.current, r.servers, r.violations) for r in reports] == [(True, ("jupyter-ann", "jupyter-bob"), ())]
    assert image_admin.running_as_text(reports) == "Images of running servers: 1, all would be admitted today.\n"

    gone = engine_with({}, RUNNING_OLD, APPROVED_OLD)
    gone.tags = {}  # the tag removed: the servers run on by ID
    reports = image_admin.running_images(gone, SETTINGS)
    assert [(r.case is None, [v.check for v in r.violations]) for r in reports] == [(True, ["image-missing"]), (False, [])]
    assert "  img:1 now means no image, not what its running servers run" in image_admin.running_as_text(reports)
