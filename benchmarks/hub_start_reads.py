"""How long a hub takes, from its start, to have read every image users may start (issue 29, item 9).

    .venv/bin/python benchmarks/hub_start_reads.py [--images 6] [--rounds 1] [--before DIR]

Admission reads each image's whole export once (about 15 s for the 1.45 GB project image) and the
hub does it at its start for `image` and every `allowed_images` entry. This starts real hubs whose
`image` and `allowed_images` are ``--images`` distinct images, each the project image with a label
of its own (a new image ID, so its facts are read anew, with the same 1.45 GB of layers), and times
from the hub process's start to each "Image NAME (...) is admitted" line of its log. Before each
hub, the engine's admission records of those images (facts, approvals) are removed, so every hub
reads them all.

``--before DIR``: also run, interleaved, hubs of another copy of the package (``DIR`` holds a
``hardened_spawner`` folder, e.g. ``git archive HEAD hardened_spawner | tar -x -C DIR``), put first
on the hub's ``PYTHONPATH``.
"""

from __future__ import annotations

if __package__ in (None, ""):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import docker

from benchmarks.common import IMAGE, BenchHub, cleanup_engine, log
from hardened_spawner import labels
from hardened_spawner.docker import image_records


def build_images(prefix: str, count: int, where: Path) -> list[str]:
    names = []
    for i in range(count):
        name = f"{prefix}-read:{i}"
        (where / f"Dockerfile.{i}").write_text(f"FROM {IMAGE}\nLABEL org.example.hub-start-read={prefix}-{i}\n")
        subprocess.run(["docker", "build", "-q", "-t", name, "-f", str(where / f"Dockerfile.{i}"), str(where)],
                       check=True, capture_output=True)
        names.append(name)
    return names


def forget(client: docker.DockerClient, names: list[str]) -> None:
    """Remove the engine's facts and approvals of these images, as if never seen."""
    ids = {client.api.inspect_image(name)["Id"] for name in names}
    for volume in client.volumes.list(filters={"label": labels.ROLE}):
        found = volume.attrs["Labels"]
        if found.get(image_records.IMAGE_ID) in ids or found.get(image_records.IMAGE_NAME) in names:
            volume.remove(force=True)


def one_hub(names: list[str], prefix: str, workdir: Path, pythonpath: str | None) -> list[float]:
    allowed = {f"choice{i}": name for i, name in enumerate(names[1:])}
    hub = BenchHub(workdir=workdir, prefix=prefix, uid_min=5_200_000, extra_config=(
        f'c.HardenedSpawner.image = "{names[0]}"\nc.HardenedSpawner.allowed_images = {allowed!r}\n'))
    saved = os.environ.get("PYTHONPATH")
    if pythonpath:
        os.environ["PYTHONPATH"] = pythonpath
    try:
        hub.start()
    finally:
        if pythonpath:
            if saved is None:
                del os.environ["PYTHONPATH"]
            else:
                os.environ["PYTHONPATH"] = saved
    try:
        deadline = time.monotonic() + 900
        while True:
            found = [hub.log_time_since_start(f"Image {name} (") for name in names]
            if all(t is not None for t in found):
                return [float(t) for t in found if t is not None]
            if time.monotonic() > deadline:
                raise RuntimeError(f"not every image was read in 900 s:\n{hub.log_tail()}")
            time.sleep(1)
    finally:
        hub.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--before", help="a folder holding the hardened_spawner package to compare with")
    parser.add_argument("--prefix", default=f"hsreads{os.getpid()}")
    args = parser.parse_args()
    client = docker.from_env()
    results: dict[str, list[list[float]]] = {"before": [], "after": []}
    kinds = ["before", "after"] if args.before else ["after"]
    with tempfile.TemporaryDirectory() as tmp:
        names = build_images(args.prefix, args.images, Path(tmp))
        try:
            for round_ in range(args.rounds):
                for kind in kinds:
                    forget(client, names)
                    log(f"round {round_ + 1}, {kind}")
                    times = one_hub(names, args.prefix, Path(tmp) / f"{kind}{round_}",
                                    args.before if kind == "before" else None)
                    results[kind].append(times)
                    log(f"{kind}: every image read {max(times):.1f} s after the hub started "
                        f"({', '.join(f'{t:.1f}' for t in times)})")
        finally:
            forget(client, names)
            for name in names:
                client.images.remove(name, force=True)
            cleanup_engine(client, args.prefix)
    print(f"{args.images} distinct images of {IMAGE}'s size; seconds from the hub's start until each was read")
    for kind in kinds:
        runs = results[kind]
        print(f"{kind:>6}: last image read after {statistics.median(max(r) for r in runs):.1f} s (median of "
              f"{len(runs)}); first after {statistics.median(min(r) for r in runs):.1f} s; each run: "
              + "; ".join(", ".join(f"{t:.0f}" for t in r) for r in runs))


if __name__ == "__main__":
    main()
