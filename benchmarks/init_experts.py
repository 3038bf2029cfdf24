"""init-experts over a synthetic checkpoint with Qwen2-VL-2B's (or 7B's) language-model tensors.

The checkpoint (bf16, random values, sharded safetensors + index, config.json) has the exact
tensor names and shapes of the Hub checkpoint's language model (`model.layers.N.*`,
`model.embed_tokens`, `model.norm`, and `lm_head` for 7B), for the first `--layers` of its 28
layers. Each pass runs in a fresh child process, so its peak RSS (VmHWM) is its own:

    stream   `init_experts(recipe, out)`: headers, then each target read alone, decomposed,
             dropped (the default svd route), bundle written
    bare     the decomposition alone on each target, tensors read first and not timed: the
             route `init_layer` uses (`spectral_triplets`, auto) and the float32 full SVD it
             replaced (`tall_svd`), alternating per tensor
    whole    every tensor of the checkpoint loaded first (as from_pretrained would), then the
             same per-layer init

Targets: stream time within 1.2x of the bare decompositions; peak memory
about one layer's tensors, not the model. With fewer than 28 layers, times are extrapolated
linearly (x 28 / layers) and labelled so; memory is reported as measured.

    python benchmarks/init_experts.py                   # 2B shapes, 2 of 28 layers, ~3 min
    python benchmarks/init_experts.py --layers 28       # the whole 2B LM (3.1 GB on disk)
    python benchmarks/init_experts.py --model 7b --layers 1
    python benchmarks/init_experts.py --routes          # + every exact route on one layer
    python benchmarks/init_experts.py --quick           # tiny model, in-process, seconds
    python benchmarks/init_experts.py --device cuda     # decompositions on the GPU
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402
from init_experts_passes import (  # noqa: E402
    KINDS,
    MODELS,
    PASSES,
    child,
    run_child,
    tensor_shapes,
    write_checkpoint,
)

FULL_LAYERS = 28


# --------------------------------------------------------------------------- exact routes


def explore_routes(model: str, device: torch.device, reps: int) -> str:
    """Every exact route to the 32 spread triplets of one layer's targets, vs float64 SVD."""
    from medqwen_cli.adapters.spectral import (
        gram_triplets,
        segment_indices,
        spectral_triplets,
        tall_svd,
    )

    def torch_gram_eigh(w: torch.Tensor, idx: torch.Tensor) -> Any:
        wt = (w.T if w.shape[0] < w.shape[1] else w).double()  # (M, h)
        lam, vecs = torch.linalg.eigh(wt.T @ wt)  # full eigenbasis, float64, ascending
        pos = wt.shape[1] - 1 - idx.to(vecs.device)
        v = vecs[:, pos]  # (h, k)
        return wt @ v / lam[pos].sqrt(), lam[pos].sqrt(), v.T

    routes = {
        "svd float32 (before)": lambda w, idx: tall_svd(w),
        "svd float64": lambda w, idx: tall_svd(w, torch.float64),
        "gram float64 + full eigh": torch_gram_eigh,
        "gram float64 + tridiagonal subset (auto)": lambda w, idx: gram_triplets(w, idx),
    }
    c = MODELS[model]
    h, i, kv = c["hidden"], c["inter"], c["kv"] * c["hidden"] // c["heads"]
    rows = []
    for label, (m, n) in {"q/o": (h, h), "k/v": (kv, h), "gate/up": (i, h), "down": (h, i)}.items():
        w = (torch.randn(m, n) * 0.02).bfloat16().float().to(device)
        idx = segment_indices(min(m, n), 8, 4, "spread").reshape(-1)
        u, s, vh = tall_svd(w.cpu(), torch.float64)
        ref = u[:, idx] * s[idx] @ vh[idx]
        got_u, got_s, got_vh = spectral_triplets(w, idx)
        err = float(
            (got_u.double().cpu() * got_s.double().cpu() @ got_vh.double().cpu() - ref).norm()
        )
        u32, s32, vh32 = tall_svd(w.cpu())
        err32 = float((u32[:, idx].double() * s32[idx].double() @ vh32[idx].double() - ref).norm())
        calls = {k: (lambda f=f, w=w, idx=idx: f(w, idx)) for k, f in routes.items()}
        med = {k: common.median(v) for k, v in common.interleaved(calls, reps, device, 0).items()}
        base = med["svd float32 (before)"]
        rows.append(
            [f"{label} {m}x{n}", f"{base:.2f}"]
            + [common.ratio(med[k], base) for k in routes if k != "svd float32 (before)"]
            + [f"{err / ref.norm():.1e}", f"{err32 / ref.norm():.1e}"]
        )
    headers = ["weight (out x in)", "svd32 s"] + [f"{k}/svd32" for k in list(routes)[1:]]
    headers += ["auto rel. err", "svd32 rel. err"]
    return common.table(headers, rows)


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    common.add_common_args(parser, reps=1)
    parser.add_argument("--model", choices=["2b", "7b"], default="2b")
    parser.add_argument("--layers", type=int, default=2, help="layers of 28 written (default 2)")
    parser.add_argument("--keep", type=Path, help="write/reuse the checkpoint in this directory")
    parser.add_argument("--routes", action="store_true", help="also compare exact routes")
    parser.add_argument("--child", choices=list(PASSES), help=argparse.SUPPRESS)
    parser.add_argument("--ckpt", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        common.limit_threads(args.threads, args.device)
        child(args.child, args.ckpt, args.device)
        return
    if args.quick:
        args.model, args.layers = "tiny", 2
    device, dtype = common.setup(args)
    print(common.machine(device, dtype))
    full = FULL_LAYERS if not args.quick else args.layers
    scale = full / args.layers
    label = "" if scale == 1 else f" (x{scale:g}, extrapolated from {args.layers} layers)"
    print(f"Qwen2-VL-{args.model.upper()} language model, {args.layers} of {full} layers written")
    ckpt = args.keep or Path(tempfile.mkdtemp(prefix="medqwen-bench-ckpt-"))
    try:
        if not (ckpt / "model.safetensors.index.json").is_file():
            ckpt.mkdir(parents=True, exist_ok=True)
            free = shutil.disk_usage(ckpt).free
            need = 2 * sum(
                torch.Size(s).numel() for s in tensor_shapes(args.model, args.layers).values()
            )
            if need > 0.8 * free:
                raise SystemExit(f"{need / 2**30:.1f} GiB needed, {free / 2**30:.1f} free")
            written = write_checkpoint(ckpt, args.model, args.layers)
            print(f"checkpoint: {written / 2**30:.2f} GiB bf16 in {ckpt}", file=sys.stderr)
        runs: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for rep in range(args.reps):
            order = list(PASSES)[rep % 3 :] + list(PASSES)[: rep % 3]
            for name in order:
                runs[name].append(run_child(name, ckpt, args))
                print(f"  done {name} rep {rep + 1}", file=sys.stderr, flush=True)
    finally:
        if args.keep is None:
            shutil.rmtree(ckpt, ignore_errors=True)
    report(runs, args, scale, label)
    if args.routes:
        print(explore_routes(args.model, device, max(args.reps, 3 if not args.quick else 1)))


def _seconds(value: float) -> str:
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}" if value >= 10 else f"{value:.3g}"


def _numel(model: str, layers: int, layer_only: bool = False) -> int:
    shapes = tensor_shapes(model, layers)
    return sum(torch.Size(v).numel() for k, v in shapes.items() if not layer_only or ".0." in k)


def _factor_bytes(model: str) -> int:
    """float32 bytes of one decoder layer's outputs: init A/B, start A/B, router."""
    c = MODELS[model]
    h, i, kv = c["hidden"], c["inter"], c["kv"] * c["hidden"] // c["heads"]
    shapes = [(h, h), (kv, h), (kv, h), (h, h), (i, h), (i, h), (h, i)]  # (m, n)
    return sum(4 * (2 * 32 * (m + n) + 8 * n) for m, n in shapes)


def report(
    runs: dict[str, list[dict[str, Any]]], args: argparse.Namespace, scale: float, label: str
) -> None:
    def med(name: str, get: Any) -> float:
        return common.median([get(r) for r in runs[name]])

    def secs(name: str, kind: str | None, sub: str | None = None) -> float:
        """Median seconds of one layer kind (None: all), extrapolated to every layer."""
        per = [r["per_kind"][sub] if sub else r["per_kind"] for r in runs[name]]
        values = [sum(p.values()) if kind is None else p.get(kind, 0.0) for p in per]
        return common.median(values) * scale

    rows = []
    for kind in [*KINDS, None]:
        t = {
            "stream": secs("stream", kind),
            "route": secs("bare", kind, "route"),
            "svd32": secs("bare", kind, "svd32"),
            "whole": secs("whole", kind),
        }
        rows.append(
            [kind or "all targets", *(_seconds(v) for v in t.values())]
            + [common.ratio(t["stream"], t["route"]), common.ratio(t["route"], t["svd32"])]
        )
    totals = t  # the last row: all targets
    # end to end: the per-layer part scaled; the stream's fixed part (headers, meta model, bundle
    # write) as measured; the whole pass's loading scaled by checkpoint size
    fixed = med("stream", lambda r: r["seconds"] - sum(r["per_kind"].values()))
    stream_total = totals["stream"] + fixed
    size_scale = _numel(args.model, round(args.layers * scale)) / _numel(args.model, args.layers)
    load_s = med("whole", lambda r: r["load_s"]) * size_scale
    whole_total = totals["whole"] + load_s
    rows.append(["end to end", f"{stream_total:.1f}", "", "", f"{whole_total:.1f}",
                 common.ratio(stream_total, totals["route"]), ""])  # fmt: skip
    import_s = med("stream", lambda r: r["import_s"])
    print(f"wall seconds{label}, median of {args.reps} run(s) per pass")
    print(f"end to end: stream + {fixed:.1f} s fixed (headers, meta model, bundle write); whole +")
    print(
        f"{load_s:.1f} s loading; neither counts the one-time transformers import ({import_s:.1f} s)"
    )
    headers = ["layer kind", "stream s", "bare route s", "bare svd32 s", "whole s",
               "stream/bare route", "route/svd32"]  # fmt: skip
    print(common.table(headers, rows))

    full = round(args.layers * scale)
    grow = {  # MB each pass would add with the missing layers
        "stream": 0.0,  # each layer's factors are spooled to disk as soon as they are computed
        "bare": 0.0,
        "whole": 4 * (_numel(args.model, full) - _numel(args.model, args.layers)) / 2**20,
    }
    mem_rows = []
    for name in ("stream", "bare", "whole"):
        above = med(name, lambda r: r["peak_mb"] - r["baseline_mb"])
        anon = med(name, lambda r: r["anon_mb"])
        row = [name, f"{med(name, lambda r: r['baseline_mb']):.0f}", f"{above:.0f}", f"{anon:.0f}"]
        mem_rows.append(row + ([f"{anon + grow[name]:.0f}"] if scale != 1 else []))
    headers = ["pass", "RSS after imports MB", "peak RSS above it MB", "peak anonymous above it MB"]
    headers += [f"anonymous, extrapolated to {full} layers MB"] if scale != 1 else []
    print("peak memory per pass, measured in the pass's own process (RSS: VmHWM, which includes")
    print("the page cache of memory-mapped checkpoint pages read; anonymous: RssAnon, sampled)")
    print(common.table(headers, mem_rows))
    layer_mb = 2 * _numel(args.model, 1, layer_only=True) / 2**20
    largest_mb = 4 * MODELS[args.model]["inter"] * MODELS[args.model]["hidden"] / 2**20
    print(f"one decoder layer: {layer_mb:.0f} MB bf16, {2 * layer_mb:.0f} MB float32; largest "
          f"target {largest_mb:.0f} MB float32; outputs of one layer "
          f"{_factor_bytes(args.model) / 2**20:.1f} MB")  # fmt: skip
    ratio = stream_total / totals["route"] if totals["route"] else float("nan")
    print(
        common.verdict("target stream/bare route <= 1.2 (end to end)", [ratio], lambda v: v <= 1.2)
    )


if __name__ == "__main__":
    main()
