"""environment: where every tool writes under a read-only root, and which GPUs it sees."""

import pytest

from hardened_spawner.core.environment import hardened_environment
from hardened_spawner.core.identity import make_identity

ALICE = make_identity("Alice.Smith@example.org", 300001, "/home/{username}")


def _expected(visible_devices):
    return {
        "HOME": "/home/alice-smith",
        "USER": "alice-smith",
        "LOGNAME": "alice-smith",
        "SHELL": "/bin/bash",
        "TMPDIR": "/tmp",
        "XDG_CACHE_HOME": "/home/alice-smith/.cache",
        "XDG_CONFIG_HOME": "/home/alice-smith/.config",
        "XDG_DATA_HOME": "/home/alice-smith/.local/share",
        "JUPYTER_CONFIG_DIR": "/home/alice-smith/.jupyter",
        "JUPYTER_DATA_DIR": "/home/alice-smith/.local/share/jupyter",
        "JUPYTER_RUNTIME_DIR": "/tmp/jupyter-runtime",
        "IPYTHONDIR": "/home/alice-smith/.ipython",
        "MPLCONFIGDIR": "/home/alice-smith/.config/matplotlib",
        "PYTHONUSERBASE": "/home/alice-smith/.local",
        "PIP_CACHE_DIR": "/home/alice-smith/.cache/pip",
        "TORCH_HOME": "/home/alice-smith/.cache/torch",
        "TORCHINDUCTOR_CACHE_DIR": "/home/alice-smith/.cache/torchinductor",
        "TRITON_CACHE_DIR": "/home/alice-smith/.cache/triton",
        "CUDA_CACHE_PATH": "/home/alice-smith/.cache/nv",
        "HF_HOME": "/home/alice-smith/.cache/huggingface",
        "NVIDIA_VISIBLE_DEVICES": visible_devices,
    }


@pytest.mark.parametrize(
    "gpu_uuids, visible_devices",
    [
        # no GPU: "void", so an image that sets "all" still sees none
        ((), "void"),
        (("GPU-1111",), "GPU-1111"),
        (("GPU-1111", "MIG-2222"), "GPU-1111,MIG-2222"),
    ],
)
def test_hardened_environment(gpu_uuids, visible_devices):
    assert hardened_environment(ALICE, ",".join(gpu_uuids) or "void") == _expected(visible_devices)


def test_every_writable_path_is_in_home_or_tmp():
    env = hardened_environment(ALICE, "void")
    for key, value in env.items():
        if value.startswith("/") and key != "SHELL":
            assert value == "/home/alice-smith" or value.startswith(("/home/alice-smith/", "/tmp")), key
