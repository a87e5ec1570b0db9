"""The environment that makes a read-only root filesystem livable.

With ``/`` read-only, every tool that writes next to its installation or to
an unset ``$HOME`` fails (Jupyter, IPython, matplotlib, pip, PyTorch's
inductor and Triton caches, the CUDA compute cache). Each is told where to
write: long-lived things (settings, caches worth keeping, ``pip --user``) go
into the persistent workspace, which is ``$HOME``; per-session sockets and
connection files go to the ``/tmp`` tmpfs.
"""

from __future__ import annotations

from .identity import Identity


def hardened_environment(identity: Identity, visible_devices: str | None) -> dict[str, str]:
    """Environment variables for the user's server; the spawner adds the hub's own.

    ``visible_devices`` is what ``NVIDIA_VISIBLE_DEVICES`` must say (`GpuGrant.visible_devices`):
    the devices the hub assigned, ``"void"`` for none, or None where the cluster's device
    plugin sets it for the devices it picked.
    """
    home = identity.home
    cache = f"{home}/.cache"
    return {
        # who the process is: getpass.getuser() and shells read these first
        "HOME": home,
        "USER": identity.name,
        "LOGNAME": identity.name,
        "SHELL": "/bin/bash",
        "TMPDIR": "/tmp",
        # the XDG base directories, which most tools follow
        "XDG_CACHE_HOME": cache,
        "XDG_CONFIG_HOME": f"{home}/.config",
        "XDG_DATA_HOME": f"{home}/.local/share",
        # Jupyter and IPython
        "JUPYTER_CONFIG_DIR": f"{home}/.jupyter",
        "JUPYTER_DATA_DIR": f"{home}/.local/share/jupyter",
        "JUPYTER_RUNTIME_DIR": "/tmp/jupyter-runtime",
        "IPYTHONDIR": f"{home}/.ipython",
        "MPLCONFIGDIR": f"{home}/.config/matplotlib",
        # Python packaging: `pip install --user` lands in the workspace
        "PYTHONUSERBASE": f"{home}/.local",
        "PIP_CACHE_DIR": f"{cache}/pip",
        # PyTorch, Triton, CUDA, Hugging Face
        "TORCH_HOME": f"{cache}/torch",
        "TORCHINDUCTOR_CACHE_DIR": f"{cache}/torchinductor",
        "TRITON_CACHE_DIR": f"{cache}/triton",
        "CUDA_CACHE_PATH": f"{cache}/nv",
        "HF_HOME": f"{cache}/huggingface",
        # GPUs: the explicit assignment, or "void" so that an image which sets
        # `all` on a host whose default runtime is nvidia still sees none
        **({} if visible_devices is None else {"NVIDIA_VISIBLE_DEVICES": visible_devices}),
    }
