"""Step time per protected branch (`continue --protect`): what each task adds to training.

The model is train_step.py's Qwen2-VL-shaped language model (real widths, few layers, random
weights, text-only batches). Variant `b branches` is an sslora (or --method) adapter whose own
experts and b - 1 earlier branches are frozen and whose newest branch trains (b = 0: the plain
adapter trains, no branch). Each branch is built as `continue --protect` builds it
(continual/protect.py), against a random orthonormal basis of --basis-share of each layer's input
(the study's bases hold 4-20 %). Every branch adds one adapter's codes to the layer's two GEMMs
and one router; only the newest branch has gradients and optimizer state.

    python benchmarks/branches.py                 # 2B widths, 1 layer, batch 2 x 128
    python benchmarks/branches.py --quick         # tiny widths: a smoke run, seconds
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402
from train_step import SIZES, build_base, make_batch, stepper  # noqa: E402

from medqwen_cli.adapters import adapter_layers, inject_adapters  # noqa: E402
from medqwen_cli.continual.protect import add_protected_branches  # noqa: E402
from medqwen_cli.recipe import AdapterConfig  # noqa: E402


def with_branches(base, cfg: AdapterConfig, count: int, share: float, seed: int):
    model = copy.deepcopy(base)
    inject_adapters(model, cfg)
    g = torch.Generator().manual_seed(seed)
    for _ in range(count):
        bases = {}
        for name, layer in adapter_layers(model):
            n = layer.in_features
            q, _ = torch.linalg.qr(torch.randn(n, max(1, int(share * n)), generator=g))
            bases[name] = q.double()
        add_protected_branches(model, bases, {}, cfg)
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return model, trained


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    common.add_common_args(parser, reps=5)
    parser.add_argument("--size", choices=["2b", "7b"], default="2b")
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument(
        "--method", default="sslora", choices=["sslora", "lora", "moelora", "pissa"]
    )
    parser.add_argument("--max-branches", type=int, default=3)
    parser.add_argument("--basis-share", type=float, default=0.1)
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.reps, args.seq = "tiny", 2, 32
    device, dtype = common.setup(args)
    vocab = max(1024, 151936 * args.layers // 28)
    base = build_base(args.size, args.layers, vocab, dtype, args.seed).to(device)
    cfg = AdapterConfig(
        method=args.method, experts=8, top_k=2, rank=32 if args.size != "tiny" else 16
    )
    batch = make_batch(args.batch, args.seq, vocab, device)
    variants, trained = {}, {}
    for count in range(args.max_branches + 1):
        model, trained[count] = with_branches(base, cfg, count, args.basis_share, args.seed)
        step, _ = stepper(model.to(device), batch, routed=cfg.num_experts > 1)
        variants[f"{count} branches"] = step
    times = common.interleaved(variants, args.reps, device)
    print(common.machine(device, dtype))
    print(
        f"{args.size} widths ({SIZES[args.size]['hidden_size']}), {args.layers} layer(s), "
        f"batch {args.batch} x {args.seq}, {args.method}, bases {args.basis_share:.0%} of each "
        f"input, median of {args.reps}"
    )
    ref = common.median(times["0 branches"])
    rows = [
        [name, f"{common.median(t):.4f}", common.ratio(common.median(t), ref), f"{trained[i]:,}"]
        for i, (name, t) in enumerate(times.items())
    ]
    print(common.table(["variant", "s/step", "x no branch", "trained params"], rows))


if __name__ == "__main__":
    main()
