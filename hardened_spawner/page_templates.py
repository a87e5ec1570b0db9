"""Where the hub page templates of this package lie.

``c.JupyterHub.template_paths = [hardened_spawner.TEMPLATES]`` adds them (README, "SSH");
the GPU board's handlers render from here too. A module of its own, so that the hub's
pages can find their templates without importing the package's entry point.
"""

from pathlib import Path

#: The hub page templates: the home page's SSH block and the GPU board.
TEMPLATES = str(Path(__file__).parent / "templates")
