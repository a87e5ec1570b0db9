"""Image admission: what it costs a spawn, side by side with no admission, in one run.

    .venv/bin/python benchmarks/admission.py [--rounds 200] [--first-rounds 3] [--out PATH]

Why: before a container is created the spawner judges its image (`docker.admission.admit`).
The first admission of an image ID reads the image's whole export (`docker save`) for its
facts, seconds for the 1.45 GB project image; the hub does that at its start (or the admin
command when it approves), and every later spawn should pay only an in-memory lookup. The
issue's target: cached admission adds under 5 ms to a spawn. Against the real engine:

1. first admission: `image_records.read_facts` with the engine's facts record removed first;
2. stored facts read back (what a restarted hub does): `image_records.facts_for` with the record;
3. the spawn step without admission (the `inspect_image` every spawn makes) and with the cached
   admission (`inspect_image` + `admission.admit`, warm `ImageCache`), in alternating rounds.

It leaves on the engine what a hub would: the image's facts record, and (pinning) a first-sight
approval of the name if it had none. See benchmarks/README.md, "Image admission".
"""

from __future__ import annotations

if __package__ in (None, ""):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import asyncio
import os
import time
from pathlib import Path

import docker
import docker.errors

from benchmarks.common import IMAGE, CpuMeter, log, machine, publish, summary
from hardened_spawner.admission.rules import AdmissionRules
from hardened_spawner.docker import admission, image_records
from hardened_spawner.docker.hub_context import HubContext

TARGET_ADDED_MS = 5.0
STORED_ROUNDS = 20


class Counting:
    """The engine client, counting the bytes of the image export it streams."""

    def __init__(self, client):
        self.client, self.streamed = client, 0

    def __getattr__(self, name):
        return getattr(self.client, name)

    def get_image(self, *args, **kwargs):
        for chunk in self.client.get_image(*args, **kwargs):
            self.streamed += len(chunk)
            yield chunk


def first_admissions(client, inspect: dict, rounds: int) -> list[dict]:
    runs = []
    for i in range(rounds):
        try:
            client.remove_volume(image_records.facts_volume(inspect["Id"]))
        except docker.errors.NotFound:
            pass
        counting, meter = Counting(client), CpuMeter(os.getpid()).start()
        wall, cpu = time.perf_counter(), time.process_time()
        facts = image_records.read_facts(counting, inspect)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        runs.append({"seconds": wall, "cpu_seconds": cpu, "engine_cpu_seconds": meter.stop()["engine_daemons"],
                     "bytes_streamed": counting.streamed, "layers": facts.layers})
        log(f"first admission {i + 1}/{rounds}: {wall:.2f} s, {cpu:.2f} CPU-s, {counting.streamed / 1e9:.2f} GB")
    return runs


def stored_facts(client, inspect: dict) -> list[float]:
    times = []
    for _ in range(STORED_ROUNDS):
        started = time.perf_counter()
        image_records.facts_for(client, inspect)
        times.append((time.perf_counter() - started) * 1000)
    return times


async def per_spawn(name: str, rounds: int) -> dict:
    """Rounds alternate which step goes first (ABBA), so load on the machine hits both alike."""
    context = HubContext(connect=lambda: docker.APIClient(version="auto"), threads=4)
    settings = admission.AdmissionSettings(rules=AdmissionRules())
    try:
        before = await context.run(image_records.current_approval, context.client, name)
        inspect = await context.docker("inspect_image", name)
        warm = await admission.admit(context, context.images, settings, name, inspect, ())  # as at hub start
        without, with_admission, added, cpu = [], [], [], 0.0
        for i in range(rounds):
            for admit in ((False, True) if i % 2 == 0 else (True, False)):
                t0 = time.perf_counter()
                inspect = await context.docker("inspect_image", name)
                t1, c1 = time.perf_counter(), time.process_time()
                if not admit:
                    without.append((t1 - t0) * 1000)
                    continue
                verdict = await admission.admit(context, context.images, settings, name, inspect, ())
                t2, cpu = time.perf_counter(), cpu + time.process_time() - c1
                with_admission.append((t2 - t0) * 1000)
                added.append((t2 - t1) * 1000)
    finally:
        context.shutdown()
    return {
        "without": summary(without), "with": summary(with_admission), "added": summary(added),
        "added_cpu_ms_mean": cpu * 1000 / rounds,
        "admitted": verdict.admitted, "violations": [v.check for v in verdict.violations],
        "approval_before": before.to_json() if before else None,
        "first_sight_approval_made": warm.first_approval.to_json() if warm.first_approval else None,
    }


def render(r: dict) -> str:
    m, img, first = r["machine"], r["image"], r["first_admission"]
    rows = [
        ("first admission (layers read), wall", first["seconds"], "s"),
        ("first admission, CPU of this process", first["cpu_seconds"], "s"),
        ("first admission, CPU of dockerd+containerd", first["engine_cpu_seconds"], "s"),
        ("stored facts read back (hub restart)", r["stored_facts_ms"], "ms"),
        ("spawn step without admission (inspect)", r["spawn"]["without"], "ms"),
        ("spawn step with cached admission (inspect+admit)", r["spawn"]["with"], "ms"),
        ("admission's added cost (cached admit)", r["spawn"]["added"], "ms"),
    ]
    lines = [
        f"image admission benchmark, {r['date']}",
        f"machine: {m['nproc']} CPUs, {m['memory_gib']} GiB, Docker engine {m['docker_engine']} "
        f"(API {m['docker_api']}); code {m['code']}",
        f"load average at start {m['loadavg_at_start']}, at end {r['loadavg_at_end']}; took {r['duration_seconds']} s",
        f"image {img['name']} {img['id'][:19]}: {img['size_bytes'] / 1e9:.2f} GB, {first['layers']} layers, "
        f"{first['bytes_streamed'] / 1e9:.2f} GB streamed",
        "",
        f"{'':52}{'n':>5}{'median':>10}{'p95':>10}{'min':>10}{'max':>10}  unit",
    ]
    for label, s, unit in rows:
        digits = 3 if unit == "ms" else 2
        lines.append(f"   {label:49}{s['n']:>5}" + "".join(
            f"{s[k]:>10.{digits}f}" for k in ("median", "p95", "min", "max")) + f"  {unit}")
    spawn, t = r["spawn"], r["target"]
    lines += [
        f"   cached admit: {spawn['added_cpu_ms_mean'] * 1000:.0f} CPU-us each (mean); "
        f"median(with) - median(without) = {spawn['with']['median'] - spawn['without']['median']:.3f} ms; "
        f"verdict: {'admitted' if spawn['admitted'] else 'refused ' + ', '.join(spawn['violations'])}",
        "",
        f"Target{'':46}{'value':>10}  limit     result",
        f"   cached admission added to a spawn (p95, ms){'':7}{t['value']:>10.3f}  < {TARGET_ADDED_MS:<7} "
        f"{'PASS' if t['pass'] else 'FAIL'}",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=200, help="spawn-step rounds, each with and without (default 200)")
    p.add_argument("--first-rounds", type=int, default=3, help="first admissions, layers read (default 3)")
    p.add_argument("--image", default=IMAGE, help=f"the image admitted (default {IMAGE})")
    p.add_argument("--out", type=Path, help="JSON results (default benchmarks/results/admission-<date>.json)")
    args = p.parse_args(argv)

    started = time.monotonic()
    client = docker.APIClient(version="auto")
    inspect = client.inspect_image(args.image)
    results: dict = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": machine("hsbench"),
                     "image": {"name": args.image, "id": inspect["Id"], "size_bytes": inspect["Size"]}}
    log(f"--- first admission of {args.image} ({inspect['Size'] / 1e9:.2f} GB), facts record removed first")
    runs = first_admissions(client, inspect, args.first_rounds)
    results["first_admission"] = {key: summary([run[key] for run in runs]) for key in runs[0]}
    results["first_admission"].update(layers=runs[0]["layers"], bytes_streamed=runs[0]["bytes_streamed"])
    log("--- stored facts read back")
    results["stored_facts_ms"] = summary(stored_facts(client, inspect))
    log(f"--- spawn step, {args.rounds} rounds with and without the cached admission")
    results["spawn"] = asyncio.run(per_spawn(args.image, args.rounds))
    p95 = results["spawn"]["added"]["p95"]
    results["target"] = {"name": "cached admission added to a spawn, p95 ms", "value": p95,
                         "limit": TARGET_ADDED_MS, "pass": p95 < TARGET_ADDED_MS}
    results["duration_seconds"] = round(time.monotonic() - started, 1)
    results["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]

    publish(results, render(results), args.out, "admission-")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
