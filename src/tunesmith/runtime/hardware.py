"""Where and how fast a model runs here: device, compute dtype (measured, not guessed) and threads.

A CPU flag is not a speed measurement: on one CPU with ``avx512_bf16`` bf16 products ran 2-5x
faster than fp32, on another with the same flag they ran slower. So ``pick_dtype("auto", "cpu")``
times fp32 and bf16 matrix products of the model's own shapes (well under a second), caches the
result per CPU model, torch version and thread count, and takes bf16 only when it is at least
``BF16_MARGIN`` faster.

Threads default to the physical cores this process may use (affinity and cgroup quota) that no
other process is running on right now: two torch processes spin-waiting for the same cores slow
each other several times over.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import ModelSourceError, UsageError
from ..files import atomic_write_json
from ..logs import get_logger

log = get_logger(__name__)

BF16_MARGIN = 1.15  # bf16 must be this much faster than fp32 to be chosen
DEFAULT_SHAPE = (256, 896, 4864)  # tokens x hidden x intermediate (Qwen2.5-0.5B's MLP product)


def pick_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelSourceError("device", ["train.device=cuda but no CUDA device is available"])
    return device


@dataclass
class DtypeChoice:
    """The compute dtype and why: measured matmul rates (GFLOP/s) where there was a choice."""

    dtype: str
    reason: str
    gflops: dict[str, float] | None = None
    threads: int | None = None
    cpu: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def model_shape(path: str | Path | None) -> tuple[int, int, int]:
    """(tokens, hidden, intermediate) of the model's MLP product, from its config.json."""
    try:
        cfg = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))  # type: ignore[arg-type]
        cfg = cfg.get("text_config", cfg)
        return (DEFAULT_SHAPE[0], int(cfg["hidden_size"]), int(cfg["intermediate_size"]))
    except (OSError, TypeError, KeyError, ValueError):
        return DEFAULT_SHAPE


def measure_matmul(dtype: str, shape: tuple[int, int, int], seconds: float = 0.15) -> float:
    """GFLOP/s of ``(m x k) @ (k x n)`` products in ``dtype`` on the CPU, forward and backward-shaped."""
    import torch

    m, k, n = shape
    dt = getattr(torch, dtype)
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(m, k, generator=gen).to(dt)
    b = torch.randn(k, n, generator=gen).to(dt)
    c = torch.randn(m, n, generator=gen).to(dt)
    torch.mm(a, b)  # warm-up (kernel selection, caches)
    done, start = 0, time.perf_counter()
    while True:
        torch.mm(a, b)  # forward
        torch.mm(c, b.t())  # the input gradient's shape
        done += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and done >= 2:
            return 2 * done * 2 * m * k * n / elapsed / 1e9


def _cache_file() -> Path:
    from ..modeling import cache_dir

    return cache_dir() / "dtype_speed.json"


def measured_rates(shape: tuple[int, int, int], threads: int) -> dict[str, float]:
    """fp32 and bf16 GFLOP/s here, from the cache or measured now (and cached)."""
    import torch

    key = f"{cpu_model()}|torch {torch.__version__}|{threads} threads|{'x'.join(map(str, shape))}"
    path = _cache_file()
    try:
        cache = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        cache = {}
    if not isinstance(cache, dict):
        cache = {}
    if key in cache:
        return cache[key]
    rates = {dt: round(measure_matmul(dt, shape), 1) for dt in ("float32", "bfloat16")}
    cache[key] = rates
    try:
        atomic_write_json(path, cache)
    except OSError as e:  # a read-only cache costs a re-measurement next time, nothing more
        log.debug("dtype measurement not cached: %s", e)
    return rates


def choose_dtype(dtype: str, device: str, model_path: str | Path | None = None) -> DtypeChoice:
    """The compute dtype for ``dtype`` ('auto' or explicit) on ``device``, with the reason."""
    import torch

    if dtype != "auto":
        return DtypeChoice(dtype, "set in the config")
    if device == "cuda":
        bf16 = torch.cuda.is_bf16_supported()
        return DtypeChoice("bfloat16" if bf16 else "float32", "CUDA " + ("bf16" if bf16 else "without bf16"))
    threads = torch.get_num_threads()
    rates = measured_rates(model_shape(model_path), threads)
    fast = rates["bfloat16"] >= BF16_MARGIN * rates["float32"]
    ratio = rates["bfloat16"] / rates["float32"] if rates["float32"] else 0.0
    reason = (
        f"measured: bf16 products at {rates['bfloat16']:.0f} GFLOP/s, fp32 at {rates['float32']:.0f} "
        f"({ratio:.2f}x; bf16 is used from {BF16_MARGIN:.2f}x)"
    )
    return DtypeChoice("bfloat16" if fast else "float32", reason, rates, threads, cpu_model())


def pick_dtype(dtype: str, device: str, model_path: str | Path | None = None) -> str:
    """'auto' → the faster of bf16 and fp32 as measured here; an explicit dtype as given."""
    return choose_dtype(dtype, device, model_path).dtype


def _cgroup_cpus() -> float | None:
    """The CPU quota of this process's cgroup (v2 ``cpu.max`` or v1 ``cfs_quota``), if any."""
    for quota_file, period_file in (
        ("/sys/fs/cgroup/cpu.max", None),
        ("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "/sys/fs/cgroup/cpu/cpu.cfs_period_us"),
    ):
        try:
            text = Path(quota_file).read_text().split()
            if period_file is None:
                if text[0] != "max":
                    return int(text[0]) / int(text[1])
            elif int(text[0]) > 0:
                return int(text[0]) / int(Path(period_file).read_text())
        except (OSError, ValueError, IndexError):
            continue
    return None


def usable_cores() -> int:
    """Physical cores this process may run on: its affinity, one per core (not per SMT sibling),
    capped by the cgroup's CPU quota."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = list(range(os.cpu_count() or 1))
    cores = set()
    for cpu in cpus:
        try:
            siblings = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list").read_text()
            cores.add(siblings.strip())
        except OSError:
            cores.add(str(cpu))
    n = len(cores) or 1
    quota = _cgroup_cpus()
    if quota is not None:
        n = min(n, max(1, int(quota)))
    return n


def busy_cores() -> int:
    """Processes running right now besides this one (``/proc/loadavg``'s runnable count)."""
    try:
        running = int(Path("/proc/loadavg").read_text().split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):
        return 0
    return max(0, running - 1)


def free_threads() -> int:
    """The default thread count: usable physical cores not busy with other processes (>= 1)."""
    return max(1, usable_cores() - busy_cores())


def use_threads(threads: int | None) -> int:
    """Set torch's CPU threads and return the number used.

    None: ``OMP_NUM_THREADS`` when it is set, else ``free_threads()`` (shared among the processes
    of a DDP launch on this machine).
    """
    import torch

    n = threads
    env = os.environ.get("OMP_NUM_THREADS", "")
    if n is None and env.isdigit() and int(env) >= 1:
        n = int(env)
    if n is None:
        per_process = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)  # DDP: the cores are shared
        n = max(1, free_threads() // max(1, per_process))
    if n < 1:
        raise UsageError(f"threads must be >= 1, not {n}")
    torch.set_num_threads(n)
    return n
