"""Shared helpers of the benchmark scripts: machine line, interleaved timing, markdown tables.

Timings on shared machines drift by 2-3x between runs, so every script measures all of its
variants in one process, interleaved: repetition i runs every variant once (the order rotates
with i), and each variant's median over repetitions is reported as a ratio to a reference
variant measured in the same repetitions.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def add_common_args(parser: argparse.ArgumentParser, reps: int) -> None:
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument(
        "--dtype",
        default=None,
        choices=sorted(DTYPES),
        help="base weights' dtype (default: float32 on CPU, the only one allowed there; bfloat16 on CUDA)",
    )
    parser.add_argument("--reps", type=int, default=reps, help=f"repetitions (default {reps})")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for torch and BLAS (default 1 on CPU: on a shared machine every "
        "multi-threaded op waits for descheduled threads; 0 keeps the libraries' defaults)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny shapes, seconds: a smoke run")
    parser.add_argument("--seed", type=int, default=0)


def limit_threads(threads: int | None, device: str) -> int:
    """Threads for torch and for scipy's BLAS; None means 1 on CPU. Returns the count used."""
    if threads is None:
        threads = 1 if torch.device(device).type == "cpu" else 0
    if threads > 0:
        torch.set_num_threads(threads)
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:  # pragma: no cover - comes with scikit-learn
            pass
        else:
            threadpool_limits(threads)
    return threads


def setup(args: argparse.Namespace) -> tuple[torch.device, torch.dtype]:
    """Apply --threads and --seed; resolve --device and --dtype (float32 on CPU)."""
    args.threads = limit_threads(args.threads, args.device)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available on this machine")
    name = args.dtype or ("bfloat16" if device.type == "cuda" else "float32")
    if device.type == "cpu" and name != "float32":
        raise SystemExit(
            f"--dtype {name} on CPU: half precision is emulated and very slow on these CPUs, so "
            "its timings would measure the emulation; use float32 on CPU, or --device cuda"
        )
    return device, DTYPES[name]


def machine(device: torch.device, dtype: torch.dtype) -> str:
    """One line naming what the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            cpu = next(
                line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")
            )
    except (OSError, StopIteration):
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    parts = [
        f"CPU {cpu}",
        f"{cores} cores",
        f"torch {torch.__version__}",
        f"{torch.get_num_threads()} threads",
        f"device {device}",
        f"dtype {str(dtype).removeprefix('torch.')}",
    ]
    if device.type == "cuda":
        parts.insert(0, f"GPU {torch.cuda.get_device_name(device)}")
    if hasattr(os, "getloadavg"):
        parts.append("load avg {:.1f}/{:.1f}/{:.1f}".format(*os.getloadavg()))
    return "machine: " + ", ".join(parts)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(
    variants: dict[str, Callable[[], Any]],
    reps: int,
    device: torch.device,
    warmup: int = 1,
) -> dict[str, list[float]]:
    """Seconds per call of every variant, `reps` each, interleaved (rotating order)."""
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            variants[name]()
    sync(device)
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(reps):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            sync(device)
            start = time.perf_counter()
            variants[name]()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b > 0 else "n/a"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub markdown table (what docs/benchmarks.md holds and the smoke tests parse)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def verdict(
    label: str, values: Sequence[float], ok: Callable[[float], bool], worst: Callable = max
) -> str:
    """'label: met in a/b rows (worst x)' for a target checked row by row."""
    met = sum(bool(ok(v)) for v in values)
    text = f"{label}: met in {met}/{len(values)} rows"
    return text + (f" (worst {worst(values):.2f})" if values else "")
