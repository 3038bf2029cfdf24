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

Targets (DESIGN.md section 8): stream time within 1.2x of the bare decompositions; peak memory
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
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402

FULL_LAYERS = 28
MODELS = {  # Qwen2-VL language models: hidden, intermediate, heads, kv heads, vocab, tied head
    "2b": dict(hidden=1536, inter=8960, heads=12, kv=2, vocab=151936, tied=True),
    "7b": dict(hidden=3584, inter=18944, heads=28, kv=4, vocab=152064, tied=False),
    "tiny": dict(hidden=128, inter=256, heads=4, kv=2, vocab=1024, tied=True),
}
KINDS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def tensor_shapes(model: str, layers: int) -> dict[str, tuple[int, ...]]:
    """Hub names and shapes of the language model's tensors (first `layers` layers)."""
    c = MODELS[model]
    h, i, kv = c["hidden"], c["inter"], c["kv"] * c["hidden"] // c["heads"]
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (c["vocab"], h)}
    for n in range(layers):
        p = f"model.layers.{n}"
        shapes.update({
            f"{p}.input_layernorm.weight": (h,),
            f"{p}.self_attn.q_proj.weight": (h, h), f"{p}.self_attn.q_proj.bias": (h,),
            f"{p}.self_attn.k_proj.weight": (kv, h), f"{p}.self_attn.k_proj.bias": (kv,),
            f"{p}.self_attn.v_proj.weight": (kv, h), f"{p}.self_attn.v_proj.bias": (kv,),
            f"{p}.self_attn.o_proj.weight": (h, h),
            f"{p}.post_attention_layernorm.weight": (h,),
            f"{p}.mlp.gate_proj.weight": (i, h), f"{p}.mlp.up_proj.weight": (i, h),
            f"{p}.mlp.down_proj.weight": (h, i),
        })  # fmt: skip
    shapes["model.norm.weight"] = (h,)
    if not c["tied"]:
        shapes["lm_head.weight"] = (c["vocab"], h)
    return shapes


def write_checkpoint(root: Path, model: str, layers: int, shard_bytes: int = 2**30) -> int:
    """config.json + bf16 safetensors shards + index; returns the bytes of tensor data."""
    import transformers as tf
    from safetensors.torch import save_file

    c = MODELS[model]
    text = dict(
        hidden_size=c["hidden"], intermediate_size=c["inter"], num_hidden_layers=layers,
        num_attention_heads=c["heads"], num_key_value_heads=c["kv"], vocab_size=c["vocab"],
        rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
        bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    vision = dict(depth=1, embed_dim=64, num_heads=2, hidden_size=c["hidden"])  # not in the file
    config = tf.Qwen2VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=c["tied"])
    config.save_pretrained(root)
    gen = torch.Generator().manual_seed(0)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = total = 0
    for name, shape in tensor_shapes(model, layers).items():
        t = (torch.randn(shape, generator=gen) * 0.02).to(torch.bfloat16)
        if size and size + 2 * t.numel() > shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += 2 * t.numel()
        total += 2 * t.numel()
    weight_map = {}
    for k, shard in enumerate(shards):
        file = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(root / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, file))
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (root / "model.safetensors.index.json").write_text(json.dumps(index, indent=1))
    return total


# --------------------------------------------------------------------------- child passes


def _kb(field: str) -> int:
    with open("/proc/self/status", encoding="utf-8") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith(field + ":"))


def _kind(name: str) -> str:
    return next((k for k in KINDS if f".{k}" in name), "other")


def _recipe(ckpt: Path, device: str) -> Any:
    from medqwen_cli.recipe import AdapterConfig, ModelConfig, Recipe

    model = ModelConfig(base=str(ckpt), dtype="float32", device=device)
    return Recipe(model=model, adapter=AdapterConfig())


def pass_stream(ckpt: Path, device: str) -> dict[str, Any]:
    import medqwen_cli.init_experts as ie

    per_kind: dict[str, float] = defaultdict(float)
    marks: list[float] = []
    inner = ie.init_tensors_for

    def timed_init(weight: torch.Tensor, *a: Any, **k: Any) -> dict[str, torch.Tensor]:
        if not marks:
            marks.append(time.perf_counter())  # per-layer clock starts at the first target
        return inner(weight, *a, **k)

    def progress(_done: int, _total: int, name: str) -> None:
        now = time.perf_counter()
        per_kind[_kind(name)] += now - marks[-1]
        marks.append(now)

    ie.init_tensors_for = timed_init
    out = Path(tempfile.mkdtemp(prefix="medqwen-bench-bundle-"))
    try:
        start = time.perf_counter()
        summary = ie.init_experts(_recipe(ckpt, device), out / "b", progress=progress)
        seconds = time.perf_counter() - start
    finally:
        ie.init_tensors_for = inner
        shutil.rmtree(out, ignore_errors=True)
    return {"seconds": seconds, "per_kind": per_kind, "layers": summary.adapted_layers}


def _targets(ckpt: Path) -> list[tuple[Path, str]]:
    index = json.loads((ckpt / "model.safetensors.index.json").read_text())
    return [
        (ckpt / file, key)
        for key, file in index["weight_map"].items()
        if _kind(key) != "other" and key.endswith(".weight")
    ]


def pass_bare(ckpt: Path, device: str) -> dict[str, Any]:
    from safetensors import safe_open

    from medqwen_cli.adapters.spectral import segment_indices, spectral_triplets, tall_svd

    routes = {
        "route": lambda w, idx: spectral_triplets(w, idx),
        "svd32": lambda w, idx: tall_svd(w),
    }
    per_kind: dict[str, dict[str, float]] = {k: defaultdict(float) for k in routes}
    for i, (path, key) in enumerate(_targets(ckpt)):
        with safe_open(str(path), framework="pt") as fh:
            w = fh.get_tensor(key).to(device)
        idx = segment_indices(min(w.shape), 8, 4, "spread")
        names = list(routes) if i % 2 == 0 else list(routes)[::-1]
        for name in names:
            common.sync(w.device)
            start = time.perf_counter()
            routes[name](w, idx)
            common.sync(w.device)
            per_kind[name][_kind(key)] += time.perf_counter() - start
        del w
    return {"per_kind": per_kind}


def pass_whole(ckpt: Path, device: str) -> dict[str, Any]:
    """Every tensor materialised first, in float32 (what a CPU base load holds), then init."""
    from safetensors.torch import load_file

    from medqwen_cli.adapters import init_tensors_for
    from medqwen_cli.recipe import AdapterConfig

    cfg = AdapterConfig()
    start = time.perf_counter()
    state: dict[str, torch.Tensor] = {}
    for file in sorted(ckpt.glob("*.safetensors")):
        state.update({k: v.float() for k, v in load_file(str(file), device=device).items()})
    load_s = time.perf_counter() - start
    per_kind: dict[str, float] = defaultdict(float)
    for key, w in state.items():
        if _kind(key) != "other" and key.endswith(".weight"):
            t0 = time.perf_counter()
            init_tensors_for(w, cfg, key.removesuffix(".weight"))
            per_kind[_kind(key)] += time.perf_counter() - t0
    return {"seconds": time.perf_counter() - start, "per_kind": per_kind, "load_s": load_s}


PASSES = {"stream": pass_stream, "bare": pass_bare, "whole": pass_whole}


class AnonPeak:
    """Peak anonymous RSS (RssAnon), sampled every 10 ms by a thread.

    VmHWM also counts the checkpoint's memory-mapped file pages that reads touched (page cache,
    reclaimable); the anonymous part is the memory the pass itself holds.
    """

    def __init__(self) -> None:
        import threading

        self.peak = _kb("RssAnon")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, _kb("RssAnon"))

    def __enter__(self) -> AnonPeak:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _kb("RssAnon"))


def child(name: str, ckpt: Path, device: str) -> None:
    start = time.perf_counter()
    import transformers

    import medqwen_cli.init_experts  # noqa: F401

    transformers.Qwen2VLForConditionalGeneration  # noqa: B018 - the lazy import, once per process
    import_s = time.perf_counter() - start
    baseline, anon = _kb("VmRSS"), _kb("RssAnon")  # the passes' own memory is above these
    with AnonPeak() as sampler:
        result = PASSES[name](ckpt, device)
    result.update(
        baseline_mb=baseline / 1024, peak_mb=_kb("VmHWM") / 1024, import_s=import_s,
        anon_mb=(sampler.peak - anon) / 1024,
    )  # fmt: skip
    print(json.dumps(result))


def run_child(name: str, ckpt: Path, args: argparse.Namespace) -> dict[str, Any]:
    if args.quick:  # in-process, for a smoke run: peak RSS is the whole process's
        result = PASSES[name](ckpt, args.device)
        rss = _kb("VmRSS") / 1024
        peaks = {"baseline_mb": rss, "peak_mb": _kb("VmHWM") / 1024, "anon_mb": 0.0}
        return {**result, **peaks, "import_s": 0.0}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--ckpt", str(ckpt)]
    cmd += ["--device", args.device, "--threads", str(args.threads)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"pass {name} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


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
