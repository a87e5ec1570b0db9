"""The usage ledger over a generated year of audit trail: 500 users, in under 2 s.

    .venv/bin/python benchmarks/usage.py [--users 500] [--days 365] [--devices 32] [--rounds 3] [--out PATH]

Why: `hardened-spawner usage` and the GPU board's first look read the whole audit trail and
build the ledger from it (`hardened_spawner.usage`). The issue's target: a year of events for
500 users in under 2 s. No engine and no hub: the trail is generated, as the hub writes it.

The trail: every user works on a weekday with probability ``--active`` (default 0.8), one
session a day, starting between 08:00 and 16:00 and lasting 30 minutes to 8 hours; a session
asks for a GPU with probability 0.7 and gets one of ``--devices`` when one is free (the
allocator's rule: never two holders), else runs CPU-only. Each session writes what the hub
writes: spawn-requested, image-admitted, gpus-assigned, server-started, gpus-released,
server-stopped, full records with the security summary (about 1.3 kB a line), and while a
session holds its GPU a gpu-usage record every ``--record-every`` seconds and at the release
(the sampler's ``gpu_usage_record_interval``, default 4 hours; 0: none, a hub without NVML). Once a month
the hub is "SIGKILLed": the sessions running then lose their gpus-released, as a real crash
leaves them. Users are in 20 groups.

Measured, each ``--rounds`` times (median reported), in this process:

1. read: the trail file parsed and swept into a ledger (`usage_sources.read_ledger`, as the
   command reads it);
2. the open intervals closed (`Ledger.intervals`; no server runs at the trail's end);
3. totals by user over the whole year;
4. end to end: 1 + 2 + 3, what `hardened-spawner usage` does besides asking the engine and
   the hub's database (the target);
5. apart: five more totals (by group and by device, and all three for the last month).

Wall and CPU time (of this process) are both reported: on a shared machine the wall time
includes waiting for a CPU.
"""

from __future__ import annotations

if __package__ in (None, ""):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import heapq
import json
import os
import random
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from benchmarks.common import log, publish
from hardened_spawner import usage, usage_sources

TARGET_S = 2.0
YEAR_START = datetime(2026, 1, 1, tzinfo=timezone.utc)
GROUPS = 20

SECURITY = {
    "mem_limit": 2147483648, "cpu_limit": 1.0, "pids_limit": 1024, "shm_size": 1073741824,
    "tmpfs": {"/tmp": 1073741824}, "cap_add": [], "seccomp_profile": "engine-default", "apparmor_profile": "",
    "healthcheck": {"test": ["CMD", "python3", "-I", "-S", "-c", "import os,socket;u=os.environ"
                             "['JUPYTERHUB_SERVICE_URL'].split('/',3);p=u[2].rpartition(':')[2] or '8888';"
                             "s=socket.create_connection(('127.0.0.1',int(p)),5)"],
                    "interval": 300000000000, "timeout": 10000000000, "retries": 3, "start_period": 60000000000},
    "read_only_root": True, "no_new_privileges": True, "cap_drop": ["ALL"], "privileged": False,
}
ADMISSION = {"image_id": "sha256:63e6b663e0c6d251e9462f8fe6d17a1b7d40998d5456da4c52d3cfb0d220b3c6",
             "approved_id": None, "by_digest": False, "special_files": 0, "special_paths": [],
             "singleuser": "/opt/venv/bin/jupyterhub-singleuser", "scan": None, "violations": []}


def _stamp(when: float) -> str:
    return datetime.fromtimestamp(when, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _line(when: float, event: str, user: str, uid: int, devices: list[str]) -> str:
    started = event not in ("spawn-requested", "image-admitted")
    return json.dumps({
        "__timestamp__": _stamp(when), "__schema__": "https://schema.jupyter.org/hardened-spawner/audit",
        "__schema_version__": "1", "__metadata_version__": 1,
        "event": event, "user": user, "server_name": "", "uid": uid, "gid": uid, "client_ip": "10.0.3.17",
        "image": "hardened-spawner-singleuser:latest",
        "image_digest": ADMISSION["image_id"] if event != "spawn-requested" else None,
        "policy_fingerprint": "436244260621d22a" if started else None,
        "security": SECURITY if started else {}, "devices": devices,
        "container_id": "a3d43946e241c43e373dce45b9a7aa4e29c61631cac38c4b2e3cb5324fffd6bb" if started else None,
        "container_name": f"jupyter-{user}", "reason": None,
        "admission": ADMISSION if event == "image-admitted" else None,
    })


def _usage_line(when: float, user: str, device: str, window: float, used: float) -> str:
    """A gpu-usage record, as the hub's sampler writes it (`core.utilisation.UseRecord`)."""
    fields = {"user": user, "server_name": "", "uid": None, "gid": None, "client_ip": None, "image": None,
              "image_digest": None, "policy_fingerprint": None, "security": None, "devices": [device],
              "container_id": None, "container_name": None, "reason": None, "admission": None}
    return json.dumps({
        "__timestamp__": _stamp(when), "__schema__": "https://schema.jupyter.org/hardened-spawner/audit",
        "__schema_version__": "1", "__metadata_version__": 1, "event": "gpu-usage", **fields,
        "utilisation": {"window_seconds": round(window, 3), "per_device": [
            {"uuid": device, "used_seconds": round(used, 3), "measured_seconds": round(window, 3),
             "mean_percent": round(100 * used / window, 1) if window else None, "memory_max_bytes": 21474836480}]},
    })


def generate(path: Path, users: int, days: int, devices: int, active: float, record_every: float,
             seed: int = 1) -> dict:
    """Write the trail; what it holds."""
    rng = random.Random(seed)
    pool = [f"GPU-{i:08x}-0000-0000-0000-000000000000" for i in range(devices)]
    sessions = []
    for day in range(days):
        date = YEAR_START + timedelta(days=day)
        if date.weekday() >= 5:
            continue
        base = date.timestamp()
        for u in range(users):
            if rng.random() < active:
                start = base + rng.uniform(8 * 3600, 16 * 3600)
                sessions.append((start, start + rng.uniform(1800, 8 * 3600), u, rng.random() < 0.7))
    sessions.sort()
    crashes = [(YEAR_START + timedelta(days=30 * m + 14, hours=11)).timestamp() for m in range(days // 30)]
    free, busy = list(pool), []  # busy: heap of (end, device)
    records = []
    for start, end, u, wants_gpu in sessions:
        while busy and busy[0][0] <= start:
            free.append(heapq.heappop(busy)[1])
        held = [free.pop()] if wants_gpu and free else []
        if held:
            heapq.heappush(busy, (end, held[0]))
        crashed = any(start < c < end for c in crashes)
        user = f"user{u:03d}"
        records += [(start, 0, "spawn-requested", user, []), (start + 0.02, 1, "image-admitted", user, [])]
        if held:
            records.append((start + 0.03, 2, "gpus-assigned", user, held))
        records.append((start + 3.5, 3, "server-started", user, held))
        if held and record_every:
            stop = next(c for c in crashes if start < c < end) if crashed else end
            busy_share = rng.uniform(0.0, 0.95)
            window = start + 0.03
            while window < stop:
                closes = min(window + record_every, stop)
                records.append((closes, 3.5, "gpu-usage", user, (held[0], closes - window, busy_share)))
                window = closes
        if held and not crashed:
            records.append((end, 4, "gpus-released", user, held))
        records.append((end + 0.001, 5, "server-stopped", user, []))
    records.sort(key=lambda r: (r[0], r[1]))
    with open(path, "w") as out:
        for when, _, event, user, held in records:
            if event == "gpu-usage":
                device, window, share = held
                out.write(_usage_line(when, user, device, window, window * share) + "\n")
            else:
                out.write(_line(when, event, user, 4200000 + int(user[4:]), held) + "\n")
    return {"sessions": len(sessions), "records": len(records), "bytes": path.stat().st_size,
            "gpu_usage_records": sum(r[2] == "gpu-usage" for r in records),
            "crashes": len(crashes), "end": records[-1][0] if records else YEAR_START.timestamp()}


def measure(path: Path, users: int, end: float) -> dict:
    """One round of what `hardened-spawner usage` does with the trail, timed (wall and CPU)."""
    groups = {f"user{u:03d}": [f"group{u % GROUPS:02d}"] for u in range(users)}
    year = YEAR_START.timestamp()
    marks = [(time.perf_counter(), time.process_time())]

    def mark():
        marks.append((time.perf_counter(), time.process_time()))

    book = usage_sources.read_ledger(str(path), keep_from=year)  # read, parse and sweep
    mark()
    intervals = book.intervals([], end)  # close what is open
    mark()
    by_user = usage.totals(intervals, since=year, until=end, by="user", used=book.used)
    mark()
    for since in (year, end - 30 * 86400):
        for by in usage.BY:
            usage.totals(intervals, since=since, until=end, by=by, groups=groups, used=book.used)
    mark()
    steps = {}
    for name, (a, b) in zip(("read_s", "intervals_s", "totals_s", "other_totals_s"), zip(marks, marks[1:])):
        steps[name] = b[0] - a[0]
        steps[name.replace("_s", "_cpu_s")] = b[1] - a[1]
    steps["end_to_end_s"] = marks[3][0] - marks[0][0]
    steps["end_to_end_cpu_s"] = marks[3][1] - marks[0][1]
    return {**steps, "closed_intervals": len(book.closed), "intervals": len(intervals),
            "gpu_hours_year": sum(r.gpu_seconds for r in by_user) / 3600,
            "gpu_used_hours_year": sum(r.used_seconds or 0.0 for r in by_user) / 3600,
            "server_hours_year": sum(r.server_seconds or 0 for r in by_user) / 3600}


def render(results: dict) -> str:
    trail, runs = results["trail"], results["runs"]

    def med(key: str) -> float:
        return statistics.median(r[key] for r in runs)

    last = runs[-1]
    rows = [
        ("read the trail: parse and sweep (read_ledger)", "read_s"),
        ("close the open intervals", "intervals_s"),
        ("totals by user, the whole year", "totals_s"),
        ("end to end (what `usage` does with the trail)", "end_to_end_s"),
        ("5 more totals: group, device; last month", "other_totals_s"),
    ]
    lines = [
        f"Usage ledger over a generated trail: {results['users']} users, {results['days']} days, "
        f"{trail['sessions']} sessions, {trail['records']} records ({trail['gpu_usage_records']} gpu-usage; "
        f"{trail['bytes'] / 1e6:.0f} MB), "
        f"{trail['crashes']} hub crashes; {last['intervals']} intervals.",
        f"GPU-hours held in the trail: {last['gpu_hours_year']:.0f} (used: {last['gpu_used_hours_year']:.0f}); "
        f"server-hours: {last['server_hours_year']:.0f}.",
        "",
        f"{'step':<48}{'wall s':>8}{'CPU s':>8}   (medians of {len(runs)} rounds)",
        *(f"{label:<48}{med(key):>8.3f}{med(key.replace('_s', '_cpu_s')):>8.3f}" for label, key in rows),
        "",
        f"target: end to end under {TARGET_S:.1f} s: {'met' if med('end_to_end_s') < TARGET_S else 'NOT met'} "
        f"(best round {min(r['end_to_end_s'] for r in runs):.3f} s wall)",
        f"machine: {os.cpu_count()} CPUs, load average {results['loadavg'][0]:.2f} at the start "
        f"(other work on the machine slows the wall and the CPU times alike)",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, default=500)
    p.add_argument("--days", type=int, default=365)
    p.add_argument("--devices", type=int, default=32, help="GPUs in the pool (default 32)")
    p.add_argument("--active", type=float, default=0.8, help="chance a user works on a weekday (default 0.8)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--record-every", type=float, default=14400,
                   help="seconds between two gpu-usage records of a holding (the sampler's "
                        "gpu_usage_record_interval, default 14400; 0: a hub without NVML writes none)")
    p.add_argument("--out", type=Path, help="JSON results (default benchmarks/results/usage-<date>.json)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="usage-bench-") as folder:
        path = Path(folder) / "audit.jsonl"
        log(f"generating {args.days} days of trail for {args.users} users")
        trail = generate(path, args.users, args.days, args.devices, args.active, args.record_every)
        log(f"{trail['records']} records, {trail['bytes'] / 1e6:.0f} MB")
        runs = []
        for i in range(args.rounds):
            runs.append(measure(path, args.users, trail["end"]))
            log(f"round {i + 1}/{args.rounds}: {runs[-1]['end_to_end_s']:.3f} s end to end")
    results = {"benchmark": "usage", "users": args.users, "days": args.days, "devices": args.devices,
               "record_every": args.record_every,
               "active": args.active, "trail": trail, "runs": runs, "target_s": TARGET_S,
               "loadavg": os.getloadavg(), "python": sys.version.split()[0]}
    publish(results, render(results), args.out, "usage-")


if __name__ == "__main__":
    main()
