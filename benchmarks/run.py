"""Run every benchmark, side by side with plain DockerSpawner, print a table and write JSON.

    .venv/bin/python benchmarks/run.py [--quick] [--out benchmarks/results/latest.json]

Needs what the integration tests need (``scripts/setup.sh --gpu-stub``): a Docker
engine with the stub NVIDIA hook, the single-user image, configurable-http-proxy.
See benchmarks/README.md for what each number means.
"""

from __future__ import annotations

if __package__ in (None, ""):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import math
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

from benchmarks import burst, restart, spawn_latency, training
from benchmarks.common import Bench, Settings, log, machine, publish

PHASES = {
    "latency": spawn_latency.run,
    "burst": burst.run,
    "restart": restart.run,
    "training": training.run,
}

TARGETS = {
    "burst_ratio": 0.90,  # issue 22: safe must not mean slow, least of all under load
    "later_ratio": 1.10,
    "first_ratio": 1.30,
    "restart_ready_s": 2.0,
    "training_ratio": 0.97,
}


def parse_args(argv=None, default_phases=tuple(PHASES)) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a smoke run: every count shrunk (about 1.5 min)")
    p.add_argument("--out", type=Path, help="write the JSON results here (default: benchmarks/results/<date>.json)")
    p.add_argument("--only", nargs="+", choices=list(PHASES), default=list(default_phases),
                   help="run only these measurements")
    p.add_argument("--prefix", default=os.environ.get("HSTEST_PREFIX", "hsbench"),
                   help="name prefix of every engine object the run creates (default: hsbench)")
    p.add_argument("--uid-base", type=int, default=int(os.environ.get("HSTEST_UID_BASE", "800000")),
                   help="lowest UID the run's hubs hand out (default: 800000)")
    p.add_argument("--burst-users", type=int, help="users in each burst (default 20, --quick 3)")
    p.add_argument("--latency-rounds", type=int, help="spawns per latency series (default 10, --quick 1)")
    p.add_argument("--restart-containers", type=int, help="managed containers for the restart (default 200)")
    p.add_argument("--restart-reps", type=int, help="hub restarts per condition (default 3, --quick 1)")
    p.add_argument("--spawn-timeout", type=int,
                   help="both hubs' start_timeout and http_timeout, in seconds (default: long enough "
                        "for the whole burst, max(120, 6 x burst users))")
    p.add_argument("--keep-workdir", action="store_true", help="keep the hubs' logs and databases")
    p.add_argument("--profile", action="store_true",
                   help="sample each hub with py-spy during the bursts; the top frames go in the JSON "
                        "(collapsed stacks kept with --keep-workdir)")
    return p.parse_args(argv)


def main(argv=None, default_phases=tuple(PHASES)) -> int:
    args = parse_args(argv, default_phases)
    workdir = Path(tempfile.mkdtemp(prefix=f"{args.prefix}-"))
    settings = Settings.make(
        args.quick, args.prefix, args.uid_base, workdir,
        burst_users=args.burst_users,
        latency_rounds=args.latency_rounds,
        restart_containers=args.restart_containers,
        restart_reps=args.restart_reps,
        profile=args.profile or None,
        spawn_timeout=args.spawn_timeout,
    )
    bench = Bench(settings)
    results: dict = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "quick": args.quick,
        "machine": machine(args.prefix),
        "settings": {k: v for k, v in vars(settings).items() if k != "workdir"},
        "errors": {},
    }
    started = time.monotonic()
    log(f"cleaning up leftovers of earlier runs named {args.prefix}-*: {bench.cleanup()}")
    failed = False
    try:
        bench.start_hubs()
        for phase in args.only:
            log(f"--- {phase}")
            t = time.monotonic()
            try:
                results[phase] = PHASES[phase](bench)
            except Exception:
                failed = True
                results["errors"][phase] = traceback.format_exc()
                log(f"{phase} failed:\n{results['errors'][phase]}")
            results.setdefault("phase_seconds", {})[phase] = round(time.monotonic() - t, 1)
    except Exception:
        failed = True
        results["errors"]["setup"] = traceback.format_exc()
        log(results["errors"]["setup"])
    finally:
        bench.stop_hubs()
        log(f"removed: {bench.cleanup()}")
        if failed:
            for hub in (bench.plain, bench.hardened):
                if hub is not None:
                    log(f"last lines of {hub.log_path}:\n{hub.log_tail(30)}")
        if args.keep_workdir or failed:
            log(f"hub logs and databases kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    results["duration_seconds"] = round(time.monotonic() - started, 1)
    results["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    results["targets"] = targets(results)

    publish(results, render(results), args.out, "")
    return 2 if failed else 0


def standalone(phase: str) -> None:
    """Entry point of each measurement's own script: the driver, with just that phase."""
    sys.exit(main(default_phases=(phase,)))


# --------------------------------------------------------------------- targets


def targets(r: dict) -> list[dict]:
    out = []

    def add(name, value, limit, ok, detail=""):
        out.append({"target": name, "value": value, "limit": limit,
                    "pass": bool(ok) if value is not None else None, "detail": detail})

    lat = r.get("latency")
    if lat:
        v = lat["ratio_later"]
        add("later spawns: hardened / plain (median)", v, f"<= {TARGETS['later_ratio']}",
            v <= TARGETS["later_ratio"])
        v = lat["ratio_first"]
        add("first spawn: hardened / plain (median)", v, f"<= {TARGETS['first_ratio']}",
            v <= TARGETS["first_ratio"])
    b = r.get("burst")
    if b:
        plain = b["plain"]
        for week in ("first", "later"):
            h = b[f"hardened_{week}"]
            v = h["time_to_all_ready"] / plain["time_to_all_ready"] if (
                h["time_to_all_ready"] and plain["time_to_all_ready"]) else None
            ok = h["all_ready"] and v is not None and v <= TARGETS["burst_ratio"]
            add(f"burst of {b['users']} ({week} spawns): all ready, time to all ready / plain",
                v, f"all ready, <= {TARGETS['burst_ratio']:.2f}", ok,
                f"{len(h['failures'])} failed" if h["failures"] else "")
            hub, plain_hub = (h["cpu_seconds"] or {}).get("hub"), (plain["cpu_seconds"] or {}).get("hub")
            if hub is not None and plain_hub:
                add(f"burst of {b['users']} ({week} spawns): hub CPU per spawn / plain", hub / plain_hub,
                    "<= 1.00", hub <= plain_hub, f"{hub / b['users']:.3f} vs {plain_hub / b['users']:.3f} CPU-s")
        gpu_ok = all(b[f"hardened_{w}"]["gpus"]["ok"] for w in ("first", "later"))
        problems = [p for w in ("first", "later") for p in b[f"hardened_{w}"]["gpus"]["problems"]]
        add("burst: GPU problems (a device twice, label != DeviceRequests)", len(problems),
            "0", gpu_ok, "; ".join(problems))
    rs = r.get("restart")
    if rs:
        v = rs["hub_ready_hardened"]
        add(f"restart with {rs['containers']} containers: hub ready, s", v,
            f"< {TARGETS['restart_ready_s']}", v < TARGETS["restart_ready_s"],
            f"plain DockerSpawner hub: {rs['hub_ready_plain']:.2f} s")
        added = max(rs["hub_ready_added_by_spawner"], 0) + max(rs["first_spawn_added_by_containers"], 0)
        add(f"restart with {rs['containers']} containers: time added by HardenedSpawner, s", added,
            f"< {TARGETS['restart_ready_s']}", added < TARGETS["restart_ready_s"],
            "hub start beyond plain + first spawn's extra with the containers")
        failures = rs["with"]["failures"] + rs["without"]["failures"]
        if failures:
            out[-1]["detail"] += "; failures: " + "; ".join(f["message"] for f in failures)
            out[-1]["pass"] = False
    t = r.get("training")
    if t:
        v = t["ratio"]
        add("training: hardened / defaults with the same /dev/shm", v,
            f">= {TARGETS['training_ratio']}", not math.isnan(v) and v >= TARGETS["training_ratio"],
            f"per CPU-second: {_s(t['ratio_per_cpu_second'])}")
    return out


# --------------------------------------------------------------------- table


def _s(x) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.2f}"


def render(r: dict) -> str:
    m = r["machine"]
    lines = [
        f"hardened_spawner benchmarks, {r['date']}{' (--quick)' if r['quick'] else ''}",
        (
            f"machine: {m['nproc']} CPUs, {m['memory_gib']} GiB, kernel {m['kernel']}, Docker "
            f"engine {m['docker_engine']} (API {m['docker_api']}); code {m['code']}"
        ),
        (
            f"load average at start {m['loadavg_at_start']}, at end {r.get('loadavg_at_end')}; "
            f"other running containers at start: {m['other_containers_running']}; "
            f"took {r.get('duration_seconds')} s"
        ),
        "",
    ]
    lat = r.get("latency")
    if lat:
        lines.append(
            "1. Spawn latency, POST to ready event (s)     n   median     p95     min     max"
            "   | to container start, server start, to ready | stop"
        )
        for key, label in (
            ("plain_first", "plain DockerSpawner, new user"),
            ("plain_later", "plain DockerSpawner, same user again"),
            ("hardened_first", "HardenedSpawner, first spawn (new workspace)"),
            ("hardened_later", "HardenedSpawner, later spawn"),
        ):
            s = lat[key]
            a = s["anatomy_median"]
            lines.append(f"   {label:<44}{s['n']:>3} {_s(s['median']):>8} {_s(s['p95']):>7} "
                         f"{_s(s['min']):>7} {_s(s['max']):>7}   | {_s(a['to_container_start'])}, "
                         f"{_s(a['server_start'])}, {_s(a['to_ready'])} | {_s(s['stop']['median'])}")
        for f in lat["failures"]:
            lines.append(f"   FAILED {f['series']} {f['user']}: {f['message'][:150]}")
        lines.append("")
    b = r.get("burst")
    if b:
        lines.append(
            f"2. Burst: {b['users']} users press start at once (s)   ready  all ready  "
            "p50/user  p95/user   | to container start, server start, to ready (p50)"
        )
        for key, label in (("plain", "plain DockerSpawner, new users"),
                           ("hardened_first", "HardenedSpawner, new users"),
                           ("hardened_later", "HardenedSpawner, same users again")):
            x = b[key]
            n_ok = x["per_user"]["n"]
            a = x["anatomy_median"]
            lines.append(f"   {label:<38}{n_ok:>3}/{b['users']:<3}{_s(x['time_to_all_ready']):>9} "
                         f"{_s(x['per_user']['median']):>9} {_s(x['per_user']['p95']):>9}   | "
                         f"{_s(a['to_container_start'])}, {_s(a['server_start'])}, {_s(a['to_ready'])}")
            for f in x["failures"][:5]:
                lines.append(f"      FAILED {f['user']}: {f['message'][:150]}")
        lines.append("   CPU-s during each burst: hub process, engine (dockerd+containerd+shims), servers' "
                     "containers, whole machine; healthcheck runs")
        for key in ("plain", "hardened_first", "hardened_later"):
            c = b[key].get("cpu_seconds") or {}
            lines.append(f"   {key:<38}{_s(c.get('hub')):>7} {_s(c.get('engine_all')):>7} "
                         f"{_s(c.get('servers')):>7} {_s(c.get('machine')):>7}   {c.get('healthcheck_runs')}")
        lines.append("   the hub during each burst: event-loop stall (slowest API answer, ms), peak RSS (MiB)"
                     "; CPU-s per spawn")
        for key in ("plain", "hardened_first", "hardened_later"):
            x = b[key]
            lag, rss, hub_cpu = x.get("loop_lag") or {}, x.get("hub_rss_mib") or {}, (x.get("cpu_seconds") or {}).get("hub")
            per_spawn = hub_cpu / b["users"] if hub_cpu is not None else None
            lines.append(f"   {key:<38}{_s(lag.get('max_ms')):>7} {_s(rss.get('peak')):>7} {_s(per_spawn):>7}")
            for frame in (x.get("profile") or {}).get("self", [])[:8]:
                lines.append(f"      {frame['percent']:>5}%  {frame['frame'][:110]}")
        for week in ("first", "later"):
            g = b[f"hardened_{week}"]["gpus"]
            lines.append(f"   GPUs ({week}): {b['gpu_users']} asked for 1 each; assigned "
                         f"{g['assigned']}; handed out twice: {g['handed_out_twice'] or 'none'}")
        lines.append("")
    rs = r.get("restart")
    if rs:
        w, wo = rs["with"], rs["without"]
        lines.append(
            f"3. Hub restart (median of {w['hardened_hub_ready']['n']}, s)"
            f"{'':<24}without {rs['containers']:>4} containers"
        )
        for key, label in (("plain_hub_ready", "plain DockerSpawner hub: start to API answering"),
                           ("hardened_hub_ready", "HardenedSpawner hub: start to API answering"),
                           ("hardened_first_spawn", "hardened: first spawn after restart (GPU table)"),
                           ("hardened_audit_done", "hardened: start-up check of containers logged")):
            lines.append(f"   {label:<54}{_s(wo[key]['median']):>8} {_s(w[key]['median']):>10}")
        q_wo, q_w = rs["engine_queries_without"], rs["engine_queries_with"]
        for name in q_wo:
            lines.append(f"   engine query: {name:<40}{q_wo[name] * 1000:>6.1f}ms {q_w[name] * 1000:>8.1f}ms")
        lines.append(f"   GPU given after restart while {', '.join(rs['held_by_running_fakes'])} are held "
                     f"by running fakes: {sorted({d for g in w['gpus_assigned'] for d in g})}")
        lines.append("")
    t = r.get("training")
    if t:
        lines += ["4. Training (PyTorch CPU, DataLoader num_workers=2, batch 32 x 3x224x224)",
                  "                                            samples/s   per CPU-s   runs (samples/s)"]
        for key, label in (("hardened", "hardened server (docker exec)"),
                           ("defaults_same_shm",
                            f"Docker defaults + --shm-size {t['hardened_flags']['ShmSize'] // 2**20}M")):
            runs = [round(x.get("samples_per_second", 0), 1) for x in t["runs"][key]]
            lines.append(f"   {label:<40}{_s(t[key + '_samples_per_second']):>10} "
                         f"{_s(t[key + '_samples_per_cpu_second']):>11}   {runs}")
        d = t["docker_default_shm"]
        lines.append("   Docker defaults (64M /dev/shm)          "
                     + (f"{_s(d['samples_per_second']):>10} (did not crash)" if d.get("ok")
                        else f"CRASHED: {' '.join(d.get('error', '').split())[:150]}"))
        lines.append(f"   hardened: CFS-throttled periods during the runs: {t['hardened_cfs_throttled_periods']}")
        h = t.get("healthcheck") or {}
        if h.get("configured"):
            lines.append(
                f"   hardened server's healthcheck: {_s((h['probe_cpu_s_in_container'] or 0) * 1000)} "
                f"CPU-ms in the container, {_s(h['probe_wall_s'] * 1000)} ms wall per probe, every "
                f"{h['interval_s']:.0f} s; 20 servers: {_s(h['cores_used_by_20_servers'])} cores"
            )
        lines.append("")
    if r.get("errors"):
        for phase, err in r["errors"].items():
            lines.append(f"ERROR in {phase}: {err.strip().splitlines()[-1][:200]}")
        lines.append("")
    lines.append("Targets (ratios from this run)                                           value    limit        result")
    for tg in r["targets"]:
        verdict = {True: "PASS", False: "FAIL", None: "-"}[tg["pass"]]
        lines.append(f"   {tg['target']:<70}{_s(tg['value']):>7}  {tg['limit']:<12} {verdict}"
                     + (f"  ({tg['detail']})" if tg["detail"] else ""))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
