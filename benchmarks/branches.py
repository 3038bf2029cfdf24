"""Step time per protected branch (`continue --protect`): what each task adds to training.

The model is train_step.py's Qwen2-VL-shaped language model (real widths, few layers, random
weights, text-only batches). Variant `b branches` is an sslora (or --method) adapter whose own
experts and b - 1 earlier branches are frozen and whose newest branch trains (b = 0: the plain
adapter trains, no branch). Each branch is built as `continue --protect` builds it
(continual/protect.py), against a random orthonormal basis of --basis-share of each layer's input
(the study's bases hold 4-20 %). Every branch adds one adapter's codes to the layer's two GEMMs
and one router; only the newest branch has gradients and optimizer state. As a protected run
does, the frozen sets' linear parts are folded into the base weight (`fold_into_base`: all of a
lora set, an sslora set's residual) and the rest of them share one input GEMM
(`RoutedLoRALinear.fold_frozen`); each count from 1 on is also timed with neither, as the code
before folding ran, in the same interleaved run.

    python benchmarks/branches.py                 # 2B widths, 1 layer, batch 2 x 128, 0-5
    python benchmarks/branches.py --quick         # tiny widths: a smoke run, seconds
"""

from __future__ import annotations

import argparse
import copy
import statistics
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
    parser.add_argument("--max-branches", type=int, default=5)
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
        for _, layer in adapter_layers(model):
            layer.fold_into_base()
        step, _ = stepper(model.to(device), batch, routed=cfg.num_experts > 1)
        variants[f"{count} branches"] = step
        trained[f"{count} branches"] = trained[count]
        if count >= 1:  # what folding the frozen sets saves
            model, _ = with_branches(base, cfg, count, args.basis_share, args.seed)
            step, _ = stepper(model.to(device), batch, routed=cfg.num_experts > 1)
            variants[f"{count} branches, unfolded"] = unfolded(step)
            trained[f"{count} branches, unfolded"] = trained[count]
    times = common.interleaved(variants, args.reps, device)
    print(common.machine(device, dtype))
    print(
        f"{args.size} widths ({SIZES[args.size]['hidden_size']}), {args.layers} layer(s), "
        f"batch {args.batch} x {args.seq}, {args.method}, bases {args.basis_share:.0%} of each "
        f"input, median of {args.reps}"
    )
    ref = common.median(times["0 branches"])
    rows = []
    for name, t in times.items():
        count = int(name.split()[0])
        med = common.median(t)
        q1, q3 = statistics.quantiles(t, n=4)[0], statistics.quantiles(t, n=4)[2]
        per_task = f"{(med / ref - 1) / count:+.1%}" if count else ""
        rows.append([name, f"{med:.4f}", f"{q1:.4f}-{q3:.4f}", common.ratio(med, ref),
                     per_task, f"{trained[name]:,}"])  # fmt: skip
    headers = ["variant", "s/step", "quartiles", "x no branch", "per branch", "trained params"]
    print(common.table(headers, rows))


def unfolded(step):
    """`step` with every frozen set's input GEMM on its own (the code before folding)."""
    from medqwen_cli.adapters.layer import RoutedLoRALinear

    def run() -> None:
        RoutedLoRALinear.fold_frozen = False
        try:
            step()
        finally:
            RoutedLoRALinear.fold_frozen = True

    return run


if __name__ == "__main__":
    main()
