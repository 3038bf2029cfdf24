"""init_experts.py's synthetic checkpoint and its three passes (stream, bare, whole), each run in
a child process of its own so that its peak RSS is its own (see init_experts.py's docstring)."""

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

import _common as common
import torch

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
    script = Path(__file__).resolve().with_name("init_experts.py")  # its --child runs one pass
    cmd = [sys.executable, str(script), "--child", name, "--ckpt", str(ckpt)]
    cmd += ["--device", args.device, "--threads", str(args.threads)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"pass {name} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])
