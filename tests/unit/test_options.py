"""options: the spawn page's GPU form, what it sends back, and re-validating user options."""

from datetime import datetime, timezone
from types import SimpleNamespace

import pytest

from hardened_spawner.core.gpus import GpuAllocator, GpuPolicy, parse_static_inventory
from hardened_spawner.core.options import OptionsError, gpu_options_form, gpu_request, parse_gpu_options

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)

# --- parse_gpu_options ---------------------------------------------------


@pytest.mark.parametrize(
    "formdata, expected",
    [
        ({}, {}),
        ({"gpus": ["2"]}, {"gpus": "2"}),
        ({"gpus": [" 1 "]}, {"gpus": "1"}),
        ({"gpus": [""]}, {}),
        ({"gpus": ["  "]}, {}),
        ({"gpus": ["0"]}, {"gpus": "0"}),
        ({"gpu_devices": ["GPU-a"]}, {"gpu_devices": ["GPU-a"]}),
        ({"gpu_devices": [" GPU-a , MIG-b,, "]}, {"gpu_devices": ["GPU-a", "MIG-b"]}),
        ({"gpu_devices": [""]}, {}),
        ({"image": [" registry.example.org/ml:2 "]}, {"image": "registry.example.org/ml:2"}),
        ({"image": [""]}, {}),
        (
            {"gpus": ["1"], "gpu_devices": ["GPU-a,GPU-b"], "image": ["ml"], "other": ["x"]},
            {"gpus": "1", "gpu_devices": ["GPU-a", "GPU-b"], "image": "ml"},
        ),
        # only the first value of each field counts
        ({"gpus": ["1", "3"]}, {"gpus": "1"}),
    ],
)
def test_parse_gpu_options(formdata, expected):
    assert parse_gpu_options(formdata) == expected


@pytest.mark.parametrize("devices", [",", " , ", ",,"])
def test_parse_gpu_options_separators_only_is_no_choice(devices):
    assert parse_gpu_options({"gpus": ["2"], "gpu_devices": [devices]}) == {"gpus": "2"}


# --- gpu_request ---------------------------------------------------------


@pytest.mark.parametrize(
    "user_options, expected",
    [
        ({}, (None, None)),
        ({"gpus": None}, (None, None)),
        ({"gpus": "0"}, (0, None)),
        ({"gpus": "2"}, (2, None)),
        ({"gpus": " 3 "}, (3, None)),
        ({"gpus": 1}, (1, None)),
        ({"gpu_devices": []}, (None, [])),
        ({"gpu_devices": ["GPU-a", "MIG-b"]}, (None, ["GPU-a", "MIG-b"])),
        ({"gpus": "1", "gpu_devices": ["GPU-a"], "image": "ml"}, (1, ["GPU-a"])),
    ],
)
def test_gpu_request(user_options, expected):
    assert gpu_request(user_options) == expected


@pytest.mark.parametrize(
    "user_options, message",
    [
        ({"gpus": "abc"}, "The number of GPUs must be a whole number, not 'abc'."),
        ({"gpus": ""}, "The number of GPUs must be a whole number, not ''."),
        ({"gpus": "1.5"}, "The number of GPUs must be a whole number, not '1.5'."),
        ({"gpus": [1]}, "The number of GPUs must be a whole number, not [1]."),
        ({"gpus": {"n": 1}}, "The number of GPUs must be a whole number, not {'n': 1}."),
        ({"gpus": -1}, "The number of GPUs cannot be negative (-1)."),
        ({"gpus": "-2"}, "The number of GPUs cannot be negative (-2)."),
        ({"gpu_devices": "GPU-a"}, "gpu_devices must be a list of GPU UUIDs."),
        ({"gpu_devices": "GPU-a,GPU-b"}, "gpu_devices must be a list of GPU UUIDs."),
        ({"gpu_devices": {"GPU-a": 1}}, "gpu_devices must be a list of GPU UUIDs."),
        ({"gpu_devices": ["GPU-a", 1]}, "gpu_devices must be a list of GPU UUIDs."),
        ({"gpu_devices": [None]}, "gpu_devices must be a list of GPU UUIDs."),
    ],
)
def test_gpu_request_refuses(user_options, message):
    with pytest.raises(OptionsError) as err:
        gpu_request(user_options)
    assert str(err.value) == message


def test_options_error_is_a_value_error():
    assert issubclass(OptionsError, ValueError)


def test_gpu_request_refuses_a_fraction():
    with pytest.raises(OptionsError) as err:
        gpu_request({"gpus": 2.5})
    assert str(err.value) == "The number of GPUs must be a whole number, not 2.5."


# --- gpu_options_form ----------------------------------------------------


def _spawner(inventory, *, admin=False, groups=(), default=1, held=(), board=False, idle=0, max_hold=0,
             **policy):
    allocator = GpuAllocator(parse_static_inventory(inventory), GpuPolicy(**policy))
    for user, count in held:
        allocator.assign(user, [], count, now=NOW)
    user = SimpleNamespace(
        name="alice", admin=admin, groups=[SimpleNamespace(name=g) for g in groups]
    )
    return SimpleNamespace(
        gpus=SimpleNamespace(allocator=allocator), user=user, gpu_default_per_user=default,
        gpu_board=board, gpu_idle_timeout=idle, gpu_max_hold=max_hold, gpu_underused_timeout=0,
        gpu_underused_percent=5, hub=SimpleNamespace(base_url="/hub/"),
    )


SELECT_0_TO_2 = (
    '<label for="hs-gpus">GPUs</label>'
    '<select id="hs-gpus" name="gpus" class="form-control">'
    '<option value="0">0 (CPU only)</option>'
    '<option value="1" selected>1</option>'
    '<option value="2">2</option>'
    "</select>"
)


async def test_form_empty_without_gpus():
    assert await gpu_options_form(_spawner([])) == ""


async def test_form_empty_when_the_pool_is_empty():
    assert await gpu_options_form(_spawner(["GPU-a"], pool=())) == ""


async def test_form_for_a_user():
    spawner = _spawner(["GPU-a", "GPU-b", "GPU-c"], max_per_user=2, held=[("bob", 1)])
    assert await gpu_options_form(spawner) == (
        SELECT_0_TO_2 + "<p>2 of 3 GPUs are free right now.</p>"
    )


async def test_form_links_the_board_and_says_when_gpus_are_reclaimed():
    spawner = _spawner(["GPU-a", "GPU-b"], board=True, idle=900, max_hold=4 * 3600)
    assert await gpu_options_form(spawner) == (
        '<label for="hs-gpus">GPUs</label>'
        '<select id="hs-gpus" name="gpus" class="form-control">'
        '<option value="0">0 (CPU only)</option><option value="1" selected>1</option></select>'
        '<p>2 of 2 GPUs are free right now. <a id="hs-gpu-board" href="/hub/gpus">See the GPU board</a> '
        "for who holds which.</p>"
        '<p id="hs-gpu-reclaim">A server holding GPUs is stopped after 15 minutes without activity or '
        "after 4 hours in any case, so its GPUs go back to everyone; its files stay.</p>"
    )


@pytest.mark.parametrize(("seconds", "text"), [
    (1, "1 second"), (45, "45 seconds"), (60, "1 minute"), (5400, "90 minutes"), (7200, "2 hours"), (61, "61 seconds"),
])
def test_durations_in_words(seconds, text):
    from hardened_spawner.core.options import duration

    assert duration(seconds) == text


async def test_form_uses_the_group_limit():
    spawner = _spawner(["GPU-a", "GPU-b", "GPU-c"], groups=["ml", "staff"], max_per_user=1,
                       group_max={"ml": 3, "other": 9})
    form = await gpu_options_form(spawner)
    assert form == (
        '<label for="hs-gpus">GPUs</label>'
        '<select id="hs-gpus" name="gpus" class="form-control">'
        '<option value="0">0 (CPU only)</option>'
        '<option value="1" selected>1</option>'
        '<option value="2">2</option>'
        '<option value="3">3</option>'
        "</select>"
        "<p>3 of 3 GPUs are free right now.</p>"
    )


async def test_form_default_lowered_to_the_limit():
    # a group capped at 0: only "CPU only", and it is the selected one
    spawner = _spawner(["GPU-a"], groups=["guests"], default=1, max_per_user=1, group_max={"guests": 0})
    assert await gpu_options_form(spawner) == (
        '<label for="hs-gpus">GPUs</label>'
        '<select id="hs-gpus" name="gpus" class="form-control">'
        '<option value="0" selected>0 (CPU only)</option>'
        "</select>"
        "<p>1 of 1 GPUs are free right now.</p>"
    )


async def test_form_for_an_admin_lists_devices_escaped():
    spawner = _spawner(["GPU-a", "GPU-b", 'GPU-"c"<'], admin=True, max_per_user=2)
    assert await gpu_options_form(spawner) == (
        SELECT_0_TO_2
        + "<p>3 of 3 GPUs are free right now.</p>"
        '<label for="hs-gpu-devices">Specific GPU UUIDs (admins, optional)</label>'
        '<input id="hs-gpu-devices" name="gpu_devices" class="form-control" '
        'placeholder="GPU-a, GPU-b, GPU-&quot;c&quot;&lt;">'
    )


async def test_form_round_trip():
    spawner = _spawner(["GPU-a", "GPU-b"], admin=True, max_per_user=2)
    form = await gpu_options_form(spawner)
    assert 'name="gpus"' in form and 'name="gpu_devices"' in form
    options = parse_gpu_options({"gpus": ["2"], "gpu_devices": ["GPU-b"]})
    assert gpu_request(options) == (2, ["GPU-b"])


def test_unknown_options_are_named():
    from hardened_spawner.core.options import unknown_options

    assert unknown_options({}) == []
    assert unknown_options({"gpus": "1", "gpu_devices": ["GPU-1"], "image": "x"}) == []
    assert unknown_options({"gpu": 1, "gpus": 1, "profile": "big"}) == ["gpu", "profile"]


def test_the_spawner_consumes_its_user_options_quietly(caplog):
    import logging

    from hardened_spawner.docker.spawner import HardenedSpawner

    spawner = HardenedSpawner(user=SimpleNamespace(name="alice", id=1, admin=False, groups=[]))
    spawner.log = logging.getLogger("test-options")
    with caplog.at_level(logging.WARNING, logger="test-options"):
        spawner.apply_user_options(spawner, {"gpus": "1"})
        assert caplog.records == []
        spawner.apply_user_options(spawner, {"gpus": "1", "profile": "big"})
    assert [r.getMessage() for r in caplog.records] == [
        f"Ignoring unknown user options for {spawner._log_name}: profile"]
