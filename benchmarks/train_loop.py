"""A small PyTorch CPU training loop, run inside a container by `training.py`.

Synthetic ImageNet-sized samples (3x224x224 float32) are made by the
DataLoader's two worker processes, which hand each batch (about 19 MB at
batch size 32) to the training process through /dev/shm. Two workers with
the default prefetch keep about four batches there at once: more than Docker's
default 64 MB /dev/shm holds.

Prints one JSON line: samples per second over ``seconds`` after a warm-up, the
same per CPU-second the container used meanwhile (from its cgroup: robust when
other work shares the machine), the CFS periods it was throttled in, or the
error that stopped it. Usage: ``python train_loop.py [seconds] [batch_size]``.
"""

import json
import os
import sys
import time
import traceback


def cgroup_cpu() -> dict:
    """The container's CPU time (ns) and CFS throttling so far; cgroup v1 or v2."""
    def read(path):
        with open(path) as f:
            return f.read()

    v1 = "/sys/fs/cgroup/cpuacct/cpuacct.usage"
    if os.path.exists(v1):
        stat = dict(line.split() for line in read("/sys/fs/cgroup/cpu/cpu.stat").splitlines())
        return {"cpu_ns": int(read(v1)), "throttled": int(stat.get("nr_throttled", 0))}
    stat = dict(line.split() for line in read("/sys/fs/cgroup/cpu.stat").splitlines())
    return {"cpu_ns": int(stat["usage_usec"]) * 1000, "throttled": int(stat.get("nr_throttled", 0))}


def main(seconds: float, batch_size: int) -> dict:
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, Dataset

    class Synthetic(Dataset):
        def __len__(self):
            return 10**9

        def __getitem__(self, i):
            g = torch.Generator().manual_seed(i)
            return torch.rand(3, 224, 224, generator=g), i % 10

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 7, stride=4),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(4),
        nn.Flatten(),
        nn.Linear(32 * 16, 10),
    )
    optimiser = torch.optim.SGD(model.parameters(), lr=0.01)
    loss_fn = nn.CrossEntropyLoss()
    loader = DataLoader(Synthetic(), batch_size=batch_size, num_workers=2)

    samples, start, warm = 0, None, 3
    for step, (x, y) in enumerate(loader):
        optimiser.zero_grad()
        loss_fn(model(x), y).backward()
        optimiser.step()
        if step + 1 == warm:
            start, cpu_start = time.monotonic(), cgroup_cpu()
        elif start is not None:
            samples += len(x)
            if time.monotonic() - start >= seconds:
                break
    elapsed = time.monotonic() - start
    cpu_end = cgroup_cpu()
    cpu_seconds = (cpu_end["cpu_ns"] - cpu_start["cpu_ns"]) / 1e9
    return {
        "ok": True,
        "samples_per_second": samples / elapsed,
        "samples": samples,
        "seconds": elapsed,
        "samples_per_cpu_second": samples / cpu_seconds if cpu_seconds > 0 else None,
        "cpu_seconds": cpu_seconds,
        "cfs_throttled_periods": cpu_end["throttled"] - cpu_start["throttled"],
        "torch_threads": torch.get_num_threads(),
    }


if __name__ == "__main__":
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 8.0
    batch = int(sys.argv[2]) if len(sys.argv) > 2 else 32
    try:
        result = main(seconds, batch)
    except BaseException as e:
        # a worker's error arrives wrapped, its own message on the last line
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        message = lines[-1] if len(lines) > 1 else f"{type(e).__name__}: {e}"
        result = {"ok": False, "error": message[:500],
                  "trace": traceback.format_exc()[-800:]}
    print(json.dumps(result), flush=True)
