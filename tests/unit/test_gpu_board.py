"""The GPU board's contents and the reclaim rule, as pure functions."""

from datetime import datetime, timedelta, timezone

import pytest

from hardened_spawner.core.gpus import GpuAllocator, GpuDevice, GpuPolicy, Holding
from hardened_spawner.gpu_board import (
    ANOTHER_USER,
    IDLE,
    MAX_HOLD,
    ReclaimRule,
    Viewer,
    board,
    culler_missing,
    due,
)

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)
MIN = timedelta(minutes=1)
A, B, C = (GpuDevice(f"GPU-{x}", str(i), "NVIDIA L4") for i, x in enumerate("abc"))
M = GpuDevice("GPU-m", "3", "NVIDIA A100")
M0 = GpuDevice("MIG-m0", "3:0", "NVIDIA A100 MIG 1g.10gb", "GPU-m")


def table(*holdings, inventory=(A, B, C), **policy):
    allocator = GpuAllocator(inventory, GpuPolicy(**{"max_per_user": 2, **policy}))
    allocator.rebuild(holdings)
    return allocator


@pytest.mark.parametrize(("rule", "since", "last", "expected"), [
    (ReclaimRule(), NOW - 99 * MIN, None, None),  # both off: never
    (ReclaimRule(idle_timeout=600), NOW - 30 * MIN, NOW - 5 * MIN, (NOW + 5 * MIN, IDLE)),
    # no activity seen yet: idle since the GPUs were assigned
    (ReclaimRule(idle_timeout=600), NOW - 30 * MIN, None, (NOW - 20 * MIN, IDLE)),
    # activity from before the assignment (a restart) does not count
    (ReclaimRule(idle_timeout=600), NOW - 2 * MIN, NOW - 60 * MIN, (NOW + 8 * MIN, IDLE)),
    # busy all the time: the maximum hold comes first
    (ReclaimRule(idle_timeout=600, max_hold=3600), NOW - 55 * MIN, NOW, (NOW + 5 * MIN, MAX_HOLD)),
    (ReclaimRule(max_hold=3600), NOW - 10 * MIN, None, (NOW + 50 * MIN, MAX_HOLD)),
])
def test_the_deadline_is_the_earlier_of_idle_and_max_hold(rule, since, last, expected):
    assert rule.deadline(since, last) == expected


def test_due_lists_only_the_holders_past_their_deadline_oldest_first():
    holdings = [
        Holding("alice", ("GPU-a",), NOW - 30 * MIN, "alice"),  # idle 30 minutes
        Holding("bob/train", ("GPU-b",), NOW - 90 * MIN, "bob"),  # active, but held too long
        Holding("carol", ("GPU-c",), NOW - 30 * MIN, "carol"),  # active a minute ago
    ]
    activity = {"alice": NOW - 30 * MIN, "bob/train": NOW, "carol": NOW - MIN}
    rule = ReclaimRule(idle_timeout=900, max_hold=3600)
    assert due(holdings, activity, rule, NOW) == [
        {"user": "bob", "server": "train", "reason": MAX_HOLD},
        {"user": "alice", "server": "", "reason": IDLE},
    ]
    assert due(holdings, activity, ReclaimRule(), NOW) == []


def test_a_user_sees_every_device_their_quota_and_when_theirs_go_back():
    allocator = table(Holding("alice", ("GPU-a",), NOW - 10 * MIN, "alice"),
                      Holding("bob/train", ("GPU-b",), NOW - 20 * MIN, "bob"))
    shown = board(allocator, {"alice": NOW - 2 * MIN}, ReclaimRule(idle_timeout=900), Viewer("alice"),
                  names_public=True, now=NOW)
    assert shown["summary"] == {"total": 3, "busy": 2, "free": 1}
    assert [(d["index"], d["state"], d["since"]) for d in shown["devices"]] == [
        ("0", "busy", (NOW - 10 * MIN).isoformat()), ("1", "busy", (NOW - 20 * MIN).isoformat()), ("2", "free", None)]
    mine, bobs = shown["devices"][0]["holders"][0], shown["devices"][1]["holders"][0]
    assert mine["user"] == "alice" and mine["mine"] and mine["reclaim_at"] == (NOW + 13 * MIN).isoformat()
    # another user's holding: the name (public here), never their server or deadline
    assert bobs == {"user": "bob", "mine": False, "since": (NOW - 20 * MIN).isoformat()}
    assert shown["you"] == {"user": "alice", "limit": 2, "holding": [{
        "server": "", "devices": ["GPU-a"], "since": (NOW - 10 * MIN).isoformat(),
        "last_activity": (NOW - 2 * MIN).isoformat(), "reclaim_at": (NOW + 13 * MIN).isoformat(),
        "reclaim_reason": IDLE, "underused_since": None, "warning": None}]}
    assert shown["due"] == []  # who is due is the culler's and the admins' business


def test_private_names_show_another_user_except_to_the_holder_and_admins():
    allocator = table(Holding("bob", ("GPU-b",), NOW - 20 * MIN, "bob"))
    rule = ReclaimRule(idle_timeout=600)
    for_carol = board(allocator, {}, rule, Viewer("carol"), names_public=False, now=NOW)
    assert for_carol["devices"][1]["holders"] == [
        {"user": ANOTHER_USER, "mine": False, "since": (NOW - 20 * MIN).isoformat()}]
    for_bob = board(allocator, {}, rule, Viewer("bob"), names_public=False, now=NOW)
    assert for_bob["devices"][1]["holders"][0]["user"] == "bob"
    for_admin = board(allocator, {}, rule, Viewer("root", sees_everyone=True), names_public=False, now=NOW)
    held = for_admin["devices"][1]["holders"][0]
    assert (held["user"], held["server"], held["reclaim_reason"]) == ("bob", "", IDLE)
    assert for_admin["due"] == [{"user": "bob", "server": "", "reason": IDLE}]


def test_a_gpu_whose_mig_slice_is_held_is_blocked_not_free_and_groups_set_the_limit():
    allocator = table(Holding("dave", ("MIG-m0",), NOW, "dave"), inventory=(A, M, M0), group_max={"ml": 4})
    shown = board(allocator, {}, ReclaimRule(), Viewer("erin", groups=("ml",)), names_public=True, now=NOW)
    assert [(d["uuid"], d["state"]) for d in shown["devices"]] == [
        ("GPU-a", "free"), ("GPU-m", "blocked"), ("MIG-m0", "busy")]
    assert shown["summary"] == {"total": 3, "busy": 2, "free": 1}
    assert shown["you"]["limit"] == 4 and shown["you"]["holding"] == []


def test_timeouts_without_the_culler_service_are_said_at_hub_start():
    assert "no gpu-culler service runs" in culler_missing(ReclaimRule(idle_timeout=900), ["idle-culler"])
    assert "gpu_pages.enable(c)" in culler_missing(ReclaimRule(max_hold=60), [])
    assert culler_missing(ReclaimRule(idle_timeout=900), ["gpu-culler"]) == ""
    assert culler_missing(ReclaimRule(), []) == ""  # nothing to reclaim: nothing missing


# --- usage this month ------------------------------------------------------------------

from hardened_spawner.gpu_board import usage_view  # noqa: E402
from hardened_spawner.usage import Row  # noqa: E402

MONTH = datetime(2026, 12, 1, tzinfo=timezone.utc)
ROWS = [Row("bob", 3 * 3600.0, 5 * 3600.0), Row("alice", 1800.0, 7200.0, estimated=True), Row("carol", 0.0, 900.0)]


def test_a_user_sees_their_own_usage_this_month_and_no_one_elses():
    shown = usage_view(ROWS, Viewer("alice"), since=MONTH, until=NOW)
    assert shown == {"since": MONTH.isoformat(), "until": NOW.isoformat(), "available": True, "problem": "",
                     "you": {"gpu_hours": 0.5, "server_hours": 2.0, "gpu_used_hours": None, "gpu_seconds": 1800, "server_seconds": 7200,
                             "estimated": True}, "users": []}
    # someone with no time this month: zeros
    assert usage_view(ROWS, Viewer("dave"), since=MONTH, until=NOW)["you"] == {
        "gpu_hours": 0.0, "server_hours": 0.0, "gpu_used_hours": None, "gpu_seconds": 0, "server_seconds": 0,
        "estimated": False}


def test_an_admin_sees_every_users_usage_most_gpu_time_first():
    shown = usage_view(ROWS, Viewer("boss", sees_everyone=True), since=MONTH, until=NOW)
    assert [(u["user"], u["gpu_hours"], u["server_hours"], u["estimated"]) for u in shown["users"]] == [
        ("bob", 3.0, 5.0, False), ("alice", 0.5, 2.0, True), ("carol", 0.0, 0.25, False)]
    assert shown["users"][2] == {"user": "carol", "gpu_hours": 0.0, "server_hours": 0.25, "gpu_used_hours": None,
                                 "gpu_seconds": 0,
                                 "server_seconds": 900, "estimated": False}


def test_without_a_trail_the_board_says_why():
    shown = usage_view(None, Viewer("alice"), since=MONTH, until=NOW, problem="no trail")
    assert (shown["available"], shown["problem"], shown["users"]) == (False, "no trail", [])


def test_the_board_carries_the_usage():
    used = usage_view(ROWS, Viewer("alice"), since=MONTH, until=NOW)
    assert board(table(), {}, ReclaimRule(), Viewer("alice"), names_public=True, now=NOW, usage=used)["usage"] == used
    assert board(table(), {}, ReclaimRule(), Viewer("alice"), names_public=True, now=NOW)["usage"] is None


def render_page(data: dict, sees_everyone: bool) -> str:
    import jinja2

    from hardened_spawner.page_templates import TEMPLATES

    loader = jinja2.ChoiceLoader([
        jinja2.DictLoader({"page.html": "{% block main %}{% endblock %}{% block script %}{% endblock %}"}),
        jinja2.FileSystemLoader(TEMPLATES)])
    page = jinja2.Environment(loader=loader, autoescape=True).get_template("gpus.html")
    return page.render(board=data, reclaim_text="", sees_everyone=sees_everyone, base_url="/hub/")


@pytest.mark.parametrize(("viewer", "expected", "unexpected"), [
    (Viewer("alice"), ["your servers\n    held GPUs for 0.50 GPU-hours and ran for\n    2.00 hours."],
     ["gpu-usage-table"]),
    (Viewer("boss", sees_everyone=True),
     ['<td>bob</td><td>3.00</td>', "<td>alice</td><td>0.50 *</td>", "* includes time whose end"], []),
])
def test_the_page_shows_the_usage(viewer, expected, unexpected):
    data = board(table(), {}, ReclaimRule(), viewer, names_public=True, now=NOW,
                 usage=usage_view(ROWS, viewer, since=MONTH, until=NOW))
    text = render_page(data, viewer.sees_everyone)
    for piece in expected:
        assert piece in text
    for piece in unexpected:
        assert piece not in text
    unavailable = {**data, "usage": usage_view(None, viewer, since=MONTH, until=NOW, problem="No trail here.")}
    assert '<p id="gpu-usage-none">No trail here.</p>' in render_page(unavailable, viewer.sees_everyone)


def test_enable_puts_the_templates_before_jupyterhubs_own_so_the_home_page_is_ours():
    from traitlets.config import Config

    from hardened_spawner import TEMPLATES, gpu_pages

    fresh = Config()
    gpu_pages.enable(fresh)
    assert fresh.JupyterHub.template_paths.get_value(["/jupyterhub/templates"]) == [TEMPLATES, "/jupyterhub/templates"]
    chosen = Config()
    chosen.JupyterHub.template_paths = [TEMPLATES]  # as the shipped jupyterhub_config.py does
    gpu_pages.enable(chosen)
    assert chosen.JupyterHub.template_paths == [TEMPLATES]
