"""Image admission's pure parts: the layer walker over exports made in memory, the facts, the
scanner reports (fixtures in Trivy's and Grype's published JSON shape) and each rule."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from image_exports import NET_RAW_EP, SINGLEUSER_IMAGE, Item, d, export, f, layer_tar, link, opaque, whiteout

from hardened_spawner.admission.facts import ImageFacts, Located, image_facts
from hardened_spawner.admission.layers import ExportError, SpecialFile, decode_capabilities, scan_image
from hardened_spawner.admission.reports import ReportError, parse_report
from hardened_spawner.admission.rules import (
    AdmissionRules,
    Approval,
    Case,
    ScanRecord,
    describe_refusal,
    judge,
    summary,
)
from hardened_spawner.docker.admission import AdmissionSettings, run_scanner, scanner_command, stale

SCANS = Path(__file__).parents[1] / "fixtures" / "scans"
STUB_SCANNER = str(Path(__file__).parents[1] / "stubs" / "scanner")
ID = "sha256:" + "ab" * 32
BASE = SINGLEUSER_IMAGE[0]


def scan(layers, **kwargs):
    return scan_image(io.BytesIO(export(layers, **kwargs)), ["jupyterhub-singleuser", "start.sh", "gosu"])


def special_paths(layers, **kwargs):
    return [s.path for s in scan(layers, **kwargs).special]


# --- the layers -----------------------------------------------------------------


def test_setuid_setgid_and_capability_files_are_found_with_their_owner_and_mode():
    found = scan([BASE + [
        f("usr/bin/su", 0o4755), f("usr/bin/chage", 0o2755, gid=42), f("usr/bin/ping", 0o755, xattrs={"security.capability": NET_RAW_EP}),
        f("usr/bin/ls", 0o755), d("var/mail", 0o2775),  # a setgid directory hands nobody anything
    ]]).special
    assert found == (
        SpecialFile("/usr/bin/chage", 0o2755, 0, 42),
        SpecialFile("/usr/bin/ping", 0o755, 0, 0, "cap_net_raw+ep"),
        SpecialFile("/usr/bin/su", 0o4755, 0, 0),
    )
    assert [s.describe() for s in found] == [
        "/usr/bin/chage (setgid, owner 0:42, mode 2755)",
        "/usr/bin/ping (file capability cap_net_raw+ep, owner 0:0, mode 0755)",
        "/usr/bin/su (setuid, owner 0:0, mode 4755)",
    ]


@pytest.mark.parametrize("later, expected", [
    ([whiteout("usr/bin/su")], []),  # removed (RUN rm): a whiteout
    ([f("usr/bin/su", 0o755)], []),  # chmod a-s: the file is written again without the bit
    ([opaque("usr/bin")], []),  # the directory emptied of what lies below
    ([whiteout("usr/bin")], []),  # the whole directory removed
    ([link("usr/bin", "/opt/bin")], []),  # the directory replaced by a link
    ([f("usr/bin/other", 0o755)], ["/usr/bin/su"]),  # another file: su stays
    ([d("usr/bin")], ["/usr/bin/su"]),  # the directory written again (its mode): su stays
    ([f("usr/bin/su", 0o4711)], ["/usr/bin/su"]),  # replaced by another setuid file
    ([whiteout("usr/bin/su"), f("usr/bin/su", 0o4755)], ["/usr/bin/su"]),  # removed, then added back
])
def test_a_later_layer_decides_what_the_image_holds(later, expected):
    assert special_paths([BASE + [d("usr/bin"), f("usr/bin/su", 0o4755)], later]) == expected


def test_a_file_removed_below_and_added_again_above_is_seen_once():
    layers = [[d("usr"), d("usr/bin"), f("usr/bin/su", 0o4755)], [whiteout("usr/bin/su")], [f("usr/bin/su", 0o4755)]]
    assert special_paths(layers) == ["/usr/bin/su"]


def test_a_hard_link_to_a_setuid_file_is_setuid_too():
    layers = [[d("usr"), d("usr/bin"), f("usr/bin/mount", 0o4755), Item("usr/bin/mnt", "hardlink", 0o4755, target="usr/bin/mount")]]
    assert special_paths(layers) == ["/usr/bin/mnt", "/usr/bin/mount"]


@pytest.mark.parametrize("layout", [{}, {"oci": True}, {"oci": True, "gzip_layers": True}, {"shuffle": False}])
def test_both_export_layouts_are_read_in_the_manifests_order(layout):
    layers = [BASE + [d("usr/bin"), f("usr/bin/su", 0o4755)], [whiteout("usr/bin/su")]]
    assert special_paths(layers, **layout) == []
    assert scan(layers, **layout).layers == 2


def test_links_are_followed_as_the_kernel_follows_them():
    found = scan([[d("usr"), d("usr/bin"), link("bin", "usr/bin"), f("usr/bin/start.sh", 0o755),
                   link("usr/local", "../opt"), d("opt"), d("opt/bin"),
                   f("opt/bin/jupyterhub-singleuser", 0o700)]])
    assert found.resolve("/bin/start.sh") == "/usr/bin/start.sh"
    assert found.find("/bin/start.sh").mode == 0o755
    assert found.find("/usr/local/bin/jupyterhub-singleuser").path == "/opt/bin/jupyterhub-singleuser"
    assert found.resolve("/a/b") == "/a/b"


def test_an_export_without_its_manifest_or_a_layer_is_refused():
    with pytest.raises(ExportError, match="no manifest.json"):
        scan_image(io.BytesIO(layer_tar([f("manifest.txt")])), [])
    with pytest.raises(ExportError, match="not a readable tar"):
        scan_image(io.BytesIO(b"not a tar at all" * 64), [])


def test_capability_data_reads_as_getcap_prints_it():
    assert decode_capabilities(NET_RAW_EP) == "cap_net_raw+ep"
    assert decode_capabilities(bytes.fromhex("00000002" "00040400" "00000000" "00000000" "00000000")) == \
        "cap_net_bind_service,cap_sys_chroot+p"


# --- the facts ------------------------------------------------------------------


INSPECT = {"Id": ID, "Config": {"Env": ["PATH=/usr/local/bin:/usr/bin"], "Cmd": ["jupyterhub-singleuser"],
                                "User": "1000:100"}}


def facts_of(layers, inspect=INSPECT, names=("jupyterhub-singleuser",)):
    return image_facts(inspect, scan_image(io.BytesIO(export(layers)), names), names)


def test_facts_say_where_the_server_program_is_and_round_trip_through_json():
    facts = facts_of([BASE])
    assert facts.commands == {"jupyterhub-singleuser": Located("jupyterhub-singleuser", "/usr/local/bin/jupyterhub-singleuser", 0o755)}
    assert (facts.user, facts.path, facts.home, facts.volumes, facts.special_count) == \
        ("1000:100", "/usr/local/bin:/usr/bin", "", (), 0)
    assert ImageFacts.from_json(facts.to_json()) == facts


def test_a_command_that_is_a_link_is_found_where_the_link_leads():
    names = ("jupyterhub-singleuser", "python3")
    inspect = {**INSPECT, "Config": {**INSPECT["Config"], "Cmd": ["python3", "-m", "x"]}}
    facts = facts_of([BASE + [d("usr/bin"), link("usr/bin/python3", "python3.11"), f("usr/bin/python3.11", 0o755)]],
                     inspect, names)
    assert facts.commands["python3"] == Located("python3", "/usr/bin/python3.11", 0o755)
    assert judge(Case("img:1", facts, ("python3", "-m", "x"))) == []


def test_a_program_off_the_path_is_not_found():
    facts = facts_of([[d("opt"), f("opt/jupyterhub-singleuser", 0o755)]])
    assert not facts.commands["jupyterhub-singleuser"].found


# --- the reports ----------------------------------------------------------------


def report(name):
    return parse_report((SCANS / name).read_text().replace("IMAGE_ID", ID))


def test_a_trivy_report_is_read_with_every_finding():
    found = report("trivy-critical.json")
    assert (found.scanner, found.image_id) == ("trivy", ID)
    assert found.counts() == {"CRITICAL": 2, "MEDIUM": 2}
    assert [f.describe() for f in found.at_or_above("CRITICAL")] == [
        "CVE-2023-45853 (CRITICAL, zlib1g 1:1.2.13.dfsg-1, no fix yet)",
        "CVE-2024-45491 (CRITICAL, libexpat1 2.5.0-1, fixed in 2.5.0-1+deb12u1)",
    ]
    assert [f.id for f in found.at_or_above("CRITICAL", frozenset({"CVE-2023-45853"}))] == ["CVE-2024-45491"]
    assert report("trivy-clean.json").findings == ()


def test_a_grype_report_is_read_in_trivys_words():
    found = report("grype-critical.json")
    assert (found.scanner, found.image_id) == ("grype 0.86.1", ID)
    assert found.counts() == {"CRITICAL": 1, "NEGLIGIBLE": 1}
    assert [f.id for f in found.at_or_above("LOW")] == ["CVE-2024-45491"]


@pytest.mark.parametrize("text, message", [
    ("not json", "printed no JSON"),
    ("[]", "not a report object"),
    ('{"foo": 1}', "neither a Trivy report"),
    ('{"matches": [{"artifact": {}}]}', "lacks a field"),
])
def test_what_is_not_a_report_is_said(text, message):
    with pytest.raises(ReportError, match=message):
        parse_report(text)


def test_the_scanner_runs_with_the_image_named_and_its_failure_is_kept():
    assert scanner_command(("trivy", "image", "{image_id}", "--x={image}"), "a:b", ID) == ["trivy", "image", ID, "--x=a:b"]
    ran = run_scanner((STUB_SCANNER, str(SCANS / "trivy-clean.json"), "{image_id}"), "a:b", ID, 30)
    assert (ran.report.image_id, ran.error) == (ID, "")
    failed = run_scanner((STUB_SCANNER, "fail", "{image_id}"), "a:b", ID, 30)
    assert failed.report is None
    assert failed.error.endswith("exited 1: FATAL: unable to initialize the vulnerability DB")
    missing = run_scanner(("/nonexistent/trivy", "{image_id}"), "a:b", ID, 30)
    assert "No such file or directory" in missing.error


# --- the rules ------------------------------------------------------------------


DEFAULT_RULES = AdmissionRules()


def case(layers=None, *, inspect=INSPECT, name="img:1", rules=DEFAULT_RULES, **kwargs):
    facts = facts_of(layers or [BASE], inspect, ("jupyterhub-singleuser", *kwargs.pop("names", ())))
    return Case(name, facts, kwargs.pop("command", ()), rules=rules, **kwargs)


def checks(c):
    return [v.check for v in judge(c)]


def test_the_projects_kind_of_image_is_admitted():
    assert judge(case()) == []


def test_setuid_files_refuse_with_the_first_paths_and_the_count():
    many = [f(f"usr/bin/s{i}", 0o4755) for i in range(7)]
    [violation] = judge(case([BASE + [d("usr/bin")] + many]))
    assert violation.check == "special-files"
    assert violation.problem == (
        "the image has 7 setuid, setgid or file-capability file(s), which hand whoever runs them more "
        "than the user has: /usr/bin/s0 (setuid, owner 0:0, mode 4755); /usr/bin/s1 (setuid, owner 0:0, "
        "mode 4755); /usr/bin/s2 (setuid, owner 0:0, mode 4755); /usr/bin/s3 (setuid, owner 0:0, mode 4755); "
        "/usr/bin/s4 (setuid, owner 0:0, mode 4755); and 2 more")
    assert violation.setting == "HardenedSpawner.image_allowed_special_files"


def test_an_admin_may_allow_named_special_files():
    layers = [BASE + [d("usr/bin"), f("usr/bin/ping", 0o755, xattrs={"security.capability": NET_RAW_EP})]]
    assert checks(case(layers)) == ["special-files"]
    assert checks(case(layers, rules=AdmissionRules(allowed_special_files=frozenset({"/usr/bin/ping"})))) == []


def test_an_image_without_the_server_program_or_one_only_its_owner_may_run_is_refused():
    [missing] = judge(case([[d("usr")]]))
    assert missing.problem == "jupyterhub-singleuser (on the image's PATH /usr/local/bin:/usr/bin) is not in the image"
    [private] = judge(case([[d("usr"), d("usr/local"), d("usr/local/bin"), f("usr/local/bin/jupyterhub-singleuser", 0o750)]]))
    assert "mode 0750) may not be run by others" in private.problem


def test_the_entrypoint_must_run_as_anyone_and_must_not_switch_users():
    inspect = {**INSPECT, "Config": {**INSPECT["Config"], "Entrypoint": ["gosu", "jovyan"]}}
    layers = [BASE + [d("usr/bin"), f("usr/local/bin/gosu", 0o755)]]
    assert checks(case(layers, inspect=inspect, names=("gosu",))) == ["switches-user"]
    inspect = {**INSPECT, "Config": {**INSPECT["Config"], "Entrypoint": ["start.sh"]}}
    assert checks(case([BASE], inspect=inspect, names=("start.sh",))) == ["command"]
    assert checks(case([BASE + [f("usr/local/bin/start.sh", 0o755)]], inspect=inspect, names=("start.sh",))) == []


VENV_INSPECT = {"Id": ID, "Config": {"Env": ["PATH=/opt/venv/bin:/usr/local/bin:/usr/bin"],
                                     "Cmd": ["jupyterhub-singleuser"], "User": "1000:100"}}
#: the project's layout: the server program in a virtual environment's bin
VENV = [d("opt"), d("opt/venv"), d("opt/venv/bin"), f("opt/venv/bin/jupyterhub-singleuser", 0o755),
        d("usr"), d("usr/bin"), f("usr/bin/python3", 0o755)]


def test_a_directory_others_may_not_search_on_the_way_to_the_server_program_refuses_and_is_named():
    """Issue 29, item 5: `RUN chmod 700 /opt/venv/bin` leaves the program 0755, but no other UID
    can reach it; the server died with "exec jupyterhub-singleuser failed: Permission denied"."""
    layers = [VENV, [d("opt/venv/bin", 0o700)]]
    c = case(layers, inspect=VENV_INSPECT)
    assert c.facts.commands["jupyterhub-singleuser"] == Located(
        "jupyterhub-singleuser", "/opt/venv/bin/jupyterhub-singleuser", 0o755, (("/opt/venv/bin", 0o700),))
    [closed] = judge(c)
    assert (closed.check, closed.key) == ("singleuser", "jupyterhub-singleuser")
    assert closed.problem == (
        "jupyterhub-singleuser (on the image's PATH /opt/venv/bin:/usr/local/bin:/usr/bin) "
        "(/opt/venv/bin/jupyterhub-singleuser) lies behind /opt/venv/bin (mode 0700), a directory others "
        "may not search, so the server's UID, which owns none of the image's files, cannot reach it")
    assert closed.fix == ("RUN chmod o+x /opt/venv/bin in the image (as root), so that every UID may reach "
                          "/opt/venv/bin/jupyterhub-singleuser")
    assert "/opt/venv/bin (mode 0700)" in describe_refusal("img:1", ID, [closed])
    # a later layer that opens it again (chmod o+x) admits the image
    assert judge(case(layers + [[d("opt/venv/bin", 0o701)]], inspect=VENV_INSPECT)) == []
    # a layer's own "./" (0700 in a debootstrap tar) is not the container's root, which is 0755
    assert judge(case([[d("./", 0o700)] + VENV], inspect=VENV_INSPECT)) == []
    # group bits do not help: the server's private GID owns no directory of the image
    assert checks(case([VENV, [d("opt/venv", 0o750)]], inspect=VENV_INSPECT)) == ["singleuser"]


def test_every_directory_closed_on_the_way_is_named_and_a_closed_file_too():
    layers = [VENV, [d("opt", 0o711), d("opt/venv", 0o700), d("opt/venv/bin", 0o750),
                     f("opt/venv/bin/jupyterhub-singleuser", 0o700)]]
    [closed] = judge(case(layers, inspect=VENV_INSPECT))
    assert "lies behind /opt/venv (mode 0700), /opt/venv/bin (mode 0750), directories others may not search" \
        in closed.problem
    assert closed.problem.endswith("; the file itself (mode 0700) may not be run by others either")
    assert closed.fix.startswith("RUN chmod o+x /opt/venv /opt/venv/bin && chmod o+rx /opt/venv/bin/jupyterhub-singleuser ")


def test_the_directories_holding_the_links_on_the_way_count_too():
    """The kernel searches every directory it looks a name up in: those holding links, and
    those the links lead through."""
    through_link = [VENV + [link("srv", "/opt/venv/bin"), d("hidden", 0o700), link("hidden/bin", "/opt/venv/bin")]]
    scan_ = scan_image(io.BytesIO(export(through_link)), ["jupyterhub-singleuser"])
    assert scan_.walk("/srv/jupyterhub-singleuser") == ("/opt/venv/bin/jupyterhub-singleuser", ("/", "/opt", "/opt/venv", "/opt/venv/bin"))
    assert scan_.closed_to_others("/srv/jupyterhub-singleuser") == ()
    assert scan_.closed_to_others("/hidden/bin/jupyterhub-singleuser") == (("/hidden", 0o700),)
    # a link into a closed directory
    private = [VENV + [d("private", 0o750), d("private/bin"), f("private/bin/start.sh", 0o755),
                       link("usr/bin/start.sh", "/private/bin/start.sh")]]
    inspect = {**VENV_INSPECT, "Config": {**VENV_INSPECT["Config"], "Entrypoint": ["start.sh"]}}
    [entrypoint] = judge(case(private, inspect=inspect, names=("start.sh",)))
    assert (entrypoint.check, entrypoint.key) == ("command", "start.sh")
    assert "the image's ENTRYPOINT start.sh (/private/bin/start.sh) lies behind /private (mode 0750)" in entrypoint.problem
    assert entrypoint.fix.startswith("RUN chmod o+x /private in the image")


def test_directory_facts_round_trip_and_older_facts_are_read_again():
    facts = case([VENV, [d("opt/venv/bin", 0o700)]], inspect=VENV_INSPECT).facts
    assert ImageFacts.from_json(json.loads(json.dumps(facts.to_json()))) == facts
    assert facts.to_json()["closed"] == {"jupyterhub-singleuser": [["/opt/venv/bin", 0o700]]}
    older = {**facts.to_json(), "version": 2}
    del older["closed"]
    assert not ImageFacts.from_json(older).covers(("jupyterhub-singleuser",))  # read without the directories
    # a hub of the version before reads what this one keeps without failing (and reads the layers
    # again: the version differs)
    for found in facts.to_json()["commands"].values():
        assert Located(**found).found


def test_an_image_volume_is_refused():
    inspect = {**INSPECT, "Config": {**INSPECT["Config"], "Volumes": {"/data": {}}}}
    [volume] = judge(case(inspect=inspect))
    assert (volume.check, volume.key) == ("image-volume", "/data")


APPROVED = Approval("img:1", "sha256:" + "cd" * 32, "", "alice", "2026-12-01T09:00:00+00:00")


def test_a_tag_that_moved_is_refused_until_approved():
    [changed] = judge(case(approval=APPROVED))
    assert changed.problem == (f"img:1 is image {ID} here, not the approved {APPROVED.image_id} "
                               "(approved by alice at 2026-12-01T09:00:00+00:00)")
    assert changed.fix == "an admin checks the new image and approves it: hardened-spawner images approve img:1"
    assert judge(case(approval=Approval("img:1", ID, APPROVED.image_id, "bob", "2026-12-02T09:00:00+00:00"))) == []
    assert judge(case(approval=APPROVED, rules=AdmissionRules(pinning=False))) == []
    assert judge(case(approval=APPROVED, name="img@sha256:" + "ab" * 32)) == []  # a digest pins itself


SCANNING = AdmissionRules(scanning=True)


def test_a_critical_finding_refuses_with_its_id_and_an_ignored_one_does_not():
    record = ScanRecord(ID, "2026-12-05T10:00:00+00:00", report("trivy-critical.json"))
    [found] = judge(case(scan=record, rules=SCANNING))
    assert found.problem.startswith("trivy found 2 vulnerabilities at CRITICAL or above (scanned 2026-12-05T10:00:00+00:00): "
                                    "CVE-2023-45853 (CRITICAL")
    ignoring = AdmissionRules(scanning=True, ignored_findings=frozenset({"CVE-2023-45853", "CVE-2024-45491"}))
    assert judge(case(scan=record, rules=ignoring)) == []
    clean = ScanRecord(ID, "2026-12-05T10:00:00+00:00", report("trivy-clean.json"))
    assert judge(case(scan=clean, rules=SCANNING)) == []


def test_no_report_or_a_report_on_another_image_refuses():
    assert checks(case(scan=None, rules=SCANNING)) == ["scan-missing"]
    failed = ScanRecord(ID, "2026-12-05T10:00:00+00:00", error="trivy exited 1: no DB")
    assert "no report for this image: trivy exited 1: no DB" in judge(case(scan=failed, rules=SCANNING))[0].problem
    other = ScanRecord(ID, "2026-12-05T10:00:00+00:00", parse_report((SCANS / "trivy-clean.json").read_text()
                                                                    .replace("IMAGE_ID", "sha256:" + "00" * 32)))
    assert checks(case(scan=other, rules=SCANNING)) == ["scan-other-image"]


def test_the_refusal_names_the_image_each_fact_and_its_fix():
    c = case([BASE + [d("usr/bin"), f("usr/bin/su", 0o4755)]], approval=APPROVED)
    text = describe_refusal("img:1", ID, judge(c))
    assert text.splitlines() == [
        "The image img:1 (sha256:abababababab) was not admitted, so your server was not started. "
        "Your hub admin needs to fix the image:",
        f"- img:1 is image {ID} here, not the approved {APPROVED.image_id} (approved by alice at "
        "2026-12-01T09:00:00+00:00). Fix: an admin checks the new image and approves it: hardened-spawner "
        "images approve img:1.",
        "- the image has 1 setuid, setgid or file-capability file(s), which hand whoever runs them more than "
        "the user has: /usr/bin/su (setuid, owner 0:0, mode 4755). Fix: remove them in the image (RUN find / "
        "-xdev -perm /6000 -type f -exec chmod a-s {} +; setcap -r FILE), or list the paths an admin accepts "
        "in HardenedSpawner.image_allowed_special_files.",
    ]
    assert summary(c, judge(c)) == {
        "image_id": ID, "approved_id": APPROVED.image_id, "by_digest": False, "special_files": 1,
        "special_paths": ["/usr/bin/su"], "singleuser": "/usr/local/bin/jupyterhub-singleuser", "scan": None,
        "violations": ["image-changed", "special-files"],
    }


def test_a_scan_is_made_again_when_old_failed_a_minute_ago_or_made_by_another_scanner():
    from datetime import datetime, timedelta, timezone

    command = ("trivy", "{image_id}")
    settings = AdmissionSettings(SCANNING, scanner=command, scan_max_age=3600)

    def ago(seconds, **kwargs):
        when = (datetime.now(timezone.utc) - timedelta(seconds=seconds)).isoformat()
        return ScanRecord(ID, when, scanner=kwargs.pop("scanner", command), **kwargs)

    clean = report("trivy-clean.json")
    assert stale(None, settings)
    assert not stale(ago(3500, report=clean), settings)
    assert stale(ago(3700, report=clean), settings)
    assert stale(ago(10, report=clean, scanner=("grype", "{image_id}")), settings)
    assert not stale(ago(30, error="no DB"), settings)  # a failure stands for a minute
    assert stale(ago(90, error="no DB"), settings)
