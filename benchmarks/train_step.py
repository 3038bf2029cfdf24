"""A whole training step of a Qwen2-VL-shaped model: medqwen sslora vs PEFT LoRA (r=32).

The model is a Qwen2VLForConditionalGeneration built from config with the real widths of
Qwen2-VL-2B (or -7B), few decoder layers and random weights; the vocabulary is scaled by
layers / 28 so the LM head keeps the share of the step it has in the full 28-layer model.
Batches are text-only: the vision tower is frozen and unadapted in every variant, so it would
add the same time to each.

Variants (the same base weights, the same batch, the same AdamW, foreach=False as in
medqwen's loop), each on its own copy of the base:

    peft           PEFT LoRA r=32, alpha 64, on q/k/v/o/gate/up/down of the language model
    medqwen-lora   medqwen's layer with method lora (E=1, r=32)
    sslora         medqwen sslora, E=8, k=2, r=32 (+ balance loss, lambda 1e-3)

One step = forward, token cross-entropy (+ balance loss), backward, optimizer step, zero grad.
Target: sslora <= 1.3x peft. Peak memory is measured per variant in a
fresh child process that builds the base, injects, and runs two steps: its peak (CPU: VmHWM;
CUDA: max allocated) and that peak minus the base model alone (adapters, optimizer state,
activations and, on CPU, allocator slack).

    python benchmarks/train_step.py              # 2B widths, 2 layers, batch 2 x 256, ~4 min
    python benchmarks/train_step.py --size 7b --layers 1 --seq 128
    python benchmarks/train_step.py --quick      # tiny widths, no memory children, seconds
    python benchmarks/train_step.py --device cuda --dtype bfloat16 --layers 4 --seq 1024
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402

from medqwen_cli.adapters import balance_loss, inject_adapters, linear_shapes, select_targets  # noqa: E402
from medqwen_cli.recipe import AdapterConfig  # noqa: E402

FULL_VOCAB, FULL_LAYERS = 151936, 28
SIZES = {  # Qwen2-VL text configs
    "2b": dict(hidden_size=1536, intermediate_size=8960, num_attention_heads=12,
               num_key_value_heads=2, tie_word_embeddings=True),
    "7b": dict(hidden_size=3584, intermediate_size=18944, num_attention_heads=28,
               num_key_value_heads=4, tie_word_embeddings=False),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_attention_heads=4,
                 num_key_value_heads=2, tie_word_embeddings=True),
}  # fmt: skip
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
VARIANTS = ["peft", "medqwen-lora", "sslora"]
BALANCE = 1e-3


def build_base(size: str, layers: int, vocab: int, dtype: torch.dtype, seed: int) -> nn.Module:
    import transformers as tf

    text = dict(SIZES[size])
    tie = text.pop("tie_word_embeddings")
    head_dim = text["hidden_size"] // text["num_attention_heads"]
    section = [head_dim // 8, head_dim * 3 // 16, head_dim * 3 // 16]  # 128 -> [16, 24, 24]
    text.update(
        num_hidden_layers=layers, vocab_size=vocab, rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": section},
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )  # fmt: skip
    if size == "tiny":
        vision = dict(depth=1, embed_dim=32, num_heads=2, hidden_size=64, mlp_ratio=2)
    else:  # the real vision widths, one block (unused by text-only batches)
        vision = dict(depth=1, embed_dim=1280, num_heads=16, hidden_size=text["hidden_size"])
    config = tf.Qwen2VLConfig(
        text_config=text, vision_config=vision, tie_word_embeddings=tie,
        image_token_id=vocab - 3, video_token_id=vocab - 2, vision_start_token_id=vocab - 4,
        vision_end_token_id=vocab - 1, bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )  # fmt: skip
    torch.manual_seed(seed)
    return tf.Qwen2VLForConditionalGeneration(config).to(dtype)


def adapt(base: nn.Module, variant: str, device: torch.device, copy_base: bool = True) -> nn.Module:
    """`base` (a copy of it by default) with the variant's adapters, on `device`."""
    model = copy.deepcopy(base) if copy_base else base
    if variant == "peft":
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(r=32, lora_alpha=64, target_modules=TARGETS, lora_dropout=0.0)
        model = get_peft_model(model, config)
    else:
        method = "lora" if variant == "medqwen-lora" else "sslora"
        cfg = AdapterConfig(method=method, experts=8, top_k=2, rank=32)
        inject_adapters(model, cfg, random_init(model, cfg))
    return model.to(device).train()


def random_init(model: nn.Module, cfg: AdapterConfig) -> dict[str, torch.Tensor]:
    """Init tensors shaped like init-experts' (no SVD: step time does not depend on values)."""
    out: dict[str, torch.Tensor] = {}
    gen = torch.Generator().manual_seed(0)
    for name, (m, n) in select_targets(linear_shapes(model), cfg).selected.items():
        out[f"{name}.scale"] = torch.tensor(2.0)
        if cfg.method == "sslora":
            out[f"{name}.init_A"] = torch.randn(cfg.rank, n, generator=gen) / n**0.5
            out[f"{name}.init_B"] = torch.randn(m, cfg.rank, generator=gen) / cfg.rank**0.5
    return out


def make_batch(batch: int, seq: int, vocab: int, device: torch.device) -> dict[str, torch.Tensor]:
    ids = torch.randint(3, vocab - 8, (batch, seq), generator=torch.Generator().manual_seed(1))
    ids = ids.to(device)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}


def stepper(model: nn.Module, batch: dict[str, torch.Tensor], routed: bool) -> Any:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, foreach=False)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    labels = batch["labels"]

    def step() -> None:
        logits = model(**inputs).logits  # (b, t, V)
        loss = nn.functional.cross_entropy(
            logits[:, :-1].float().reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1)
        )
        if routed:
            loss = loss + BALANCE * balance_loss(model)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step, sum(p.numel() for p in params)


def _status_kb(field: str) -> int:
    with open("/proc/self/status", encoding="utf-8") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_child(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> None:
    """Print the memory of one variant, measured in this fresh process.

    model_mb: after building the base; peak_mb: the process's peak through adapter injection,
    optimizer and two training steps (CPU: VmRSS / VmHWM; CUDA: allocated / max allocated).
    """
    cuda = device.type == "cuda"
    base = build_base(args.size, args.layers, args.vocab, dtype, args.seed).to(device)
    model_mb = (torch.cuda.memory_allocated(device) if cuda else _status_kb("VmRSS") * 1024) / 2**20
    model = adapt(base, args.memory_child, device, copy_base=False)
    batch = make_batch(args.batch, args.seq, args.vocab, device)
    step, _ = stepper(model, batch, routed=args.memory_child == "sslora")
    step()
    step()
    peak = torch.cuda.max_memory_allocated(device) if cuda else _status_kb("VmHWM") * 1024
    print(json.dumps({"model_mb": model_mb, "peak_mb": peak / 2**20}))


def measure_memory(argv: list[str], variant: str) -> dict[str, float]:
    cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--memory-child", variant]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    common.add_common_args(parser, reps=5)
    parser.add_argument("--size", choices=["2b", "7b"], default="2b", help="widths (default 2b)")
    parser.add_argument("--layers", type=int, default=2, help="decoder layers (default 2)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=256, help="tokens per sequence")
    parser.add_argument("--vocab", type=int, default=None, help="default: 151936 * layers / 28")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak memory children")
    parser.add_argument("--memory-child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.layers, args.batch, args.seq, args.vocab = "tiny", 2, 2, 16, 1024
    args.vocab = args.vocab or round(FULL_VOCAB * args.layers / FULL_LAYERS)
    device, dtype = common.setup(args)
    warnings.filterwarnings("ignore", category=FutureWarning)  # deprecations inside peft
    if args.memory_child:
        memory_child(args, device, dtype)
        return
    reps = 2 if args.quick and args.reps == 5 else args.reps
    print(common.machine(device, dtype))
    print(
        f"Qwen2-VL {args.size} widths, {args.layers} layers, vocab {args.vocab}, "
        f"batch {args.batch} x {args.seq} tokens; median of {reps} interleaved repetitions"
    )
    base = build_base(args.size, args.layers, args.vocab, dtype, args.seed)
    batch = make_batch(args.batch, args.seq, args.vocab, device)
    steps, trainable, adapted = {}, {}, {}
    for variant in VARIANTS:
        model = adapt(base, variant, device)
        adapted[variant] = sum(
            1
            for n, m in model.named_modules()
            if n.endswith(tuple(TARGETS)) and hasattr(m, "base_layer")
        )
        steps[variant], trainable[variant] = stepper(model, batch, routed=variant == "sslora")
    del base
    med = {k: common.median(v) for k, v in common.interleaved(steps, reps, device).items()}
    skip = args.no_memory or args.quick  # --quick: no child processes
    memory = {} if skip else {v: measure_memory(argv, v) for v in VARIANTS}
    rows = []
    for variant in VARIANTS:
        mem = memory.get(variant, {})
        extra = mem and mem["peak_mb"] - mem["model_mb"]
        peft_extra = memory and memory["peft"]["peak_mb"] - memory["peft"]["model_mb"]
        rows.append([
            variant, adapted[variant], f"{trainable[variant] / 1e6:.2f}",
            f"{med[variant] * 1e3:.0f}", common.ratio(med[variant], med["peft"]),
            f"{mem['peak_mb']:.0f}" if mem else "n/a",
            f"{extra:.0f}" if mem else "n/a",
            common.ratio(extra, peft_extra) if mem else "n/a",
        ])  # fmt: skip
    headers = ["variant", "adapted layers", "trainable M", "step ms", "step/peft",
               "peak MB", "peak - base model MB", "(peak - base)/peft"]  # fmt: skip
    print(common.table(headers, rows))
    ratio = med["sslora"] / med["peft"]
    print(common.verdict("target sslora/peft <= 1.3 (step time)", [ratio], lambda v: v <= 1.3))


if __name__ == "__main__":
    main()
