"""What a short token cache in the single-user server costs the hub (issue 29, SSH item 1).

    .venv/bin/python benchmarks/token_cache.py [--ages 300,5,1] [--seconds 20] [--clients 8]

The single-user server asks the hub who a token belongs to (``GET /hub/api/user``) and keeps
the answer for ``HubAuth.cache_max_age`` seconds (JupyterHub's default: 300), so a revoked or
expired token keeps working that long. The project's image sets 5 s
(``/etc/jupyter/jupyter_server_config.json``). For each cache age, one hub, one user and one
server (the age given to the server as ``--HubAuth.cache_max_age``, which overrides the image's
file), then, with the user's API token through the hub's proxy:

1. a burst: ``--clients`` threads send ``GET /user/<name>/api/status`` as fast as they are
   answered, for ``--seconds``;
2. a tab: one request a second for ``--seconds`` (what an open JupyterLab's polling looks like).

For each: the requests answered, the hub's ``GET /hub/api/user`` lookups in the hub's log over
the same window (so, per request) and the hub's own time on them (the log's request times), and
the hub process's CPU seconds over the window.
"""

from __future__ import annotations

if __package__ in (None, ""):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import os
import re
import tempfile
import threading
import time
from pathlib import Path

import docker
import requests

from benchmarks.common import BenchHub, _process_cpu, cleanup_engine, log

LOOKUP = re.compile(r"\] 200 GET /hub/api/user \(\S*\) ([0-9.]+)ms")


def lookups(hub: BenchHub, start: int) -> tuple[int, float]:
    """The ``GET /hub/api/user`` lookups the hub logged after byte ``start`` of its log, and
    the milliseconds it took over them."""
    with open(hub.log_path, "rb") as f:
        f.seek(start)
        found = [float(m.group(1)) for m in LOOKUP.finditer(f.read().decode(errors="replace"))]
    return len(found), sum(found)


def window(hub: BenchHub, url: str, token: str, clients: int, seconds: float, interval: float = 0.0) -> dict:
    start = hub.log_path.stat().st_size
    cpu = _process_cpu(hub.proc.pid)
    answered, failed = [0], [0]
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client() -> None:
        session = requests.Session()
        session.headers["Authorization"] = f"token {token}"
        while time.monotonic() < deadline:
            ok = session.get(url, timeout=30).ok
            with lock:
                (answered if ok else failed)[0] += 1
            if interval:
                time.sleep(interval)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    time.sleep(1.0)  # the hub's log lines of the last lookups
    count, ms = lookups(hub, start)
    return {"requests": answered[0], "failed": failed[0], "lookups": count, "hub_ms": round(ms, 1),
            "hub_cpu_s": round(_process_cpu(hub.proc.pid) - cpu, 2),
            "lookups_per_request": round(count / max(answered[0], 1), 4)}


def measure(age: int, prefix: str, uid_base: int, workdir: Path, seconds: float, clients: int) -> dict:
    hub = BenchHub(workdir=workdir / f"age{age}", prefix=prefix, uid_min=uid_base, extra_config=(
        f'c.HardenedSpawner.args = ["--HubAuth.cache_max_age={age}"]\n'))
    hub.start()
    try:
        user = "tokencache"
        hub.create_user(user)
        spawned = hub.spawn(user)
        if not spawned.ready:
            raise RuntimeError(spawned.message)
        token = hub.api("POST", f"/users/{user}/tokens", json={"scopes": [f"access:servers!user={user}"]}).json()["token"]
        url = f"{hub.url}/user/{user}/api/status"
        requests.get(url, headers={"Authorization": f"token {token}"}, timeout=30).raise_for_status()
        burst = window(hub, url, token, clients, seconds)
        tab = window(hub, url, token, 1, seconds, interval=1.0)
        hub.stop_server(user)
        return {"age": age, "burst": burst, "tab": tab}
    finally:
        hub.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ages", default="300,5,1")
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--prefix", default=f"hstokencache{os.getpid()}")
    parser.add_argument("--uid-base", type=int, default=5_000_000)
    args = parser.parse_args()
    client = docker.from_env()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            for age in (int(a) for a in args.ages.split(",")):
                log(f"cache_max_age={age}")
                rows.append(measure(age, args.prefix, args.uid_base, Path(tmp), args.seconds, args.clients))
                log(str(rows[-1]))
        finally:
            cleanup_engine(client, args.prefix)
    print(f"{'cache_max_age':>13}  {'burst: requests':>15}  {'lookups':>7}  {'per request':>11}  {'hub ms':>7}  "
          f"{'hub CPU s':>9}  {'tab: requests':>13}  {'lookups':>7}")
    for row in rows:
        b, t = row["burst"], row["tab"]
        print(f"{row['age']:>13}  {b['requests']:>15}  {b['lookups']:>7}  {b['lookups_per_request']:>11}  "
              f"{b['hub_ms']:>7}  {b['hub_cpu_s']:>9}  {t['requests']:>13}  {t['lookups']:>7}")


if __name__ == "__main__":
    main()
