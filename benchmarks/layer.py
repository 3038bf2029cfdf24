"""One adapted linear layer at Qwen2-VL-2B / 7B shapes: routed experts vs plain LoRA vs a loop.

Variants, all around the same frozen nn.Linear W0 (m x n) and the same input (1, N, n):

    frozen    W0 x alone
    lora      plain rank-32 LoRA, W0 x + s (x A^T) B^T, written here (the reference: ratio 1)
    peft      PEFT's LoRA layer (r=32)
    routed    RoutedLoRALinear, E=8, k=2, r=32, spectral (frozen residual on), dense form
    folded    what routed would cost with W_res folded into W0 (W0 - W_res precomputed in
              float32): the same layer without the residual term (not done: see docs)
    before    the same layer in the form it had before the speed work (separate terms)
    loop      `looped_forward`: a Python loop over experts, each on its own tokens

Passes: `fwd` (no grad) and `fwd+bwd` (x requires grad, as for every layer after the first, so
dx is computed; then the adapter gradients). Targets: routed <= 1.25x
lora and loop >= 3x routed, forward+backward. `loop/routed adapter` divides the time each adds
on top of the frozen product (loop - frozen) / (routed - frozen): the part the two forms
actually compute differently.

    python benchmarks/layer.py                  # default grid, ~5 min on 2 CPU cores
    python benchmarks/layer.py --full           # every shape x 128, 512, 1024, 2048 tokens
    python benchmarks/layer.py --quick          # tiny shapes, seconds
    python benchmarks/layer.py --device cuda --dtype bfloat16 --full
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402

from medqwen_cli.adapters.layer import RoutedLoRALinear
from medqwen_cli.adapters.reference import looped_forward  # noqa: E402

# (label, in n, out m): q/o, gate/up, down of Qwen2-VL-2B (hidden 1536) and -7B (hidden 3584)
SHAPES = [
    ("2B q/o", 1536, 1536),
    ("2B gate/up", 1536, 8960),
    ("2B down", 8960, 1536),
    ("7B q/o", 3584, 3584),
    ("7B gate/up", 3584, 18944),
    ("7B down", 18944, 3584),
]
QUICK_SHAPES = [("tiny", 64, 96), ("tiny-down", 96, 64)]
FULL_TOKENS = [128, 512, 1024, 2048]
RANK, EXPERTS, TOP_K = 32, 8, 2


class PlainLoRA(nn.Module):
    """Textbook LoRA: W0 x + s (x A^T) B^T, adapter in float32 like the routed layer."""

    def __init__(self, base: nn.Linear, rank: int, scale: float = 2.0) -> None:
        super().__init__()
        self.base, self.scale = base, scale
        dev = base.weight.device
        self.lora_A = nn.Parameter(torch.randn(rank, base.in_features, device=dev) * 0.01)
        self.lora_B = nn.Parameter(torch.randn(base.out_features, rank, device=dev) * 0.01)

    def forward(self, x: Tensor) -> Tensor:
        y = self.base(x)  # (..., m)
        delta = (x.float() @ self.lora_A.t()) @ self.lora_B.t() * self.scale  # (..., m)
        return y + delta.to(y.dtype)


class _Holder(nn.Module):
    def __init__(self, proj: nn.Linear) -> None:
        super().__init__()
        self.proj = proj

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)


def peft_lora(base: nn.Linear) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=RANK, lora_alpha=2 * RANK, target_modules=["proj"], lora_dropout=0.0)
    return get_peft_model(_Holder(base), config)


def random_init(n: int, m: int, device: torch.device) -> dict[str, Tensor]:
    """Spectral-shaped init without the SVD (timing does not depend on the values)."""
    a0 = torch.randn(RANK, n, device=device) / math.sqrt(n)  # (r, n)
    b0 = torch.randn(m, RANK, device=device) / math.sqrt(RANK)  # (m, r)
    return {"lora_A": a0, "lora_B": b0, "init_A": a0, "init_B": b0, "scale": torch.tensor(2.0)}


def before_forward(layer: RoutedLoRALinear, x: Tensor) -> Tensor:
    """The routed layer's forward before the speed work (separate residual, repeat_interleave)."""
    y = layer.base_layer(x)
    with torch.autocast(device_type=x.device.type, enabled=False):
        xf = x.float()
        h = layer.dropout(xf) @ layer.lora_A.float().t()  # (..., r)
        gates = layer.route(xf)  # (..., E)
        h = h * gates.repeat_interleave(layer.expert_rank, dim=-1)  # (..., r)
        delta = (h @ layer.lora_B.float().t()) * layer.scale  # (..., m)
        delta = delta - layer.residual(xf)  # (..., m)
    return y + delta.to(y.dtype)


def build(n: int, m: int, device: torch.device, dtype: torch.dtype, previous: bool) -> dict:
    base = nn.Linear(n, m, bias=False, device=device, dtype=dtype).requires_grad_(False)
    routed = RoutedLoRALinear(base, random_init(n, m, device), experts=EXPERTS, top_k=TOP_K)
    init = random_init(n, m, device)
    folded = RoutedLoRALinear(
        base, {k: init[k] for k in ("lora_A", "lora_B", "scale")}, experts=EXPERTS, top_k=TOP_K
    )  # no init_A / init_B: the residual term is gone, as if folded into W0
    variants: dict[str, Callable[[Tensor], Tensor]] = {
        "frozen": base,
        "lora": PlainLoRA(base, RANK).to(device),
        "peft": peft_lora(base).to(device),
        "routed": routed,
        "folded": folded,
    }
    if previous:
        variants["before"] = lambda x: before_forward(routed, x)
    variants["loop"] = lambda x: looped_forward(routed, x)
    return variants


def timed_calls(
    variants: dict[str, Callable[[Tensor], Tensor]], x: Tensor, grad_y: Tensor
) -> tuple[dict[str, Callable[[], None]], dict[str, Callable[[], None]]]:
    """(forward-only, forward+backward) closures for every variant."""
    params = [
        p
        for v in variants.values()
        if isinstance(v, nn.Module)
        for p in v.parameters()
        if p.requires_grad
    ]

    def fwd(f: Callable[[Tensor], Tensor]) -> Callable[[], None]:
        def call() -> None:
            with torch.no_grad():
                f(x)

        return call

    def fwd_bwd(f: Callable[[Tensor], Tensor]) -> Callable[[], None]:
        xg = x.detach().requires_grad_(True)

        def call() -> None:
            f(xg).backward(grad_y)
            xg.grad = None
            for p in params:
                p.grad = None

        return call

    return {k: fwd(f) for k, f in variants.items()}, {k: fwd_bwd(f) for k, f in variants.items()}


def grid(args: argparse.Namespace) -> list[tuple[str, int, int, int]]:
    if args.quick:
        return [(label, n, m, 16) for label, n, m in QUICK_SHAPES]
    shapes = [s for s in SHAPES if not args.shapes or any(k in s[0] for k in args.shapes)]
    rows = []
    for label, n, m in shapes:
        if args.tokens:
            tokens = args.tokens
        elif args.full:
            tokens = FULL_TOKENS
        else:  # default: 2B at 128 and 512 tokens, 7B at 128 (7B MLP fwd+bwd ~1 s a call)
            tokens = [128, 512] if label.startswith("2B") else [128]
        rows += [(label, n, m, t) for t in tokens]
    return rows


def profile(variants: dict, x: Tensor, grad_y: Tensor, names: list[str]) -> str:
    from torch.profiler import ProfilerActivity, profile

    _, fb = timed_calls({k: variants[k] for k in names}, x, grad_y)
    out = []
    for name in names:
        fb[name]()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(3):
                fb[name]()
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12)
        out.append(f"profile of {name} fwd+bwd (3 calls):\n{table}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    common.add_common_args(parser, reps=5)
    parser.add_argument("--full", action="store_true", help="all shapes x 128..2048 tokens")
    parser.add_argument("--shapes", nargs="*", help="keep shapes whose label has one of these")
    parser.add_argument("--tokens", nargs="*", type=int, help="token counts (overrides grid)")
    parser.add_argument("--no-before", action="store_true", help="skip the pre-fix form")
    parser.add_argument("--profile", action="store_true", help="profile lora and routed too")
    args = parser.parse_args(argv)
    device, dtype = common.setup(args)
    reps = 2 if args.quick and args.reps == 5 else args.reps
    print(common.machine(device, dtype))
    print(f"E={EXPERTS}, k={TOP_K}, r={RANK}; median of {reps} interleaved repetitions")
    rows, fb_routed, fb_loop, profiles = [], [], [], []
    for label, n, m, tokens in grid(args):
        variants = build(n, m, device, dtype, previous=not args.no_before)
        x = torch.randn(1, tokens, n, device=device, dtype=dtype)
        grad_y = torch.randn(1, tokens, m, device=device, dtype=dtype)
        passes = timed_calls(variants, x, grad_y)
        for pass_name, calls in zip(("fwd", "fwd+bwd"), passes, strict=True):
            med = {k: common.median(v) for k, v in common.interleaved(calls, reps, device).items()}
            lora = med["lora"]
            adapter = common.ratio(med["loop"] - med["frozen"], med["routed"] - med["frozen"])
            rows.append(
                [f"{label} {n}->{m}", tokens, pass_name, f"{lora * 1e3:.1f}"]
                + [common.ratio(med[k], lora) for k in variants if k != "lora"]
                + [common.ratio(med["loop"], med["routed"]), adapter]
            )
            if pass_name == "fwd+bwd":
                fb_routed.append(med["routed"] / lora)
                fb_loop.append(med["loop"] / med["routed"])
            print(f"  done {label} {tokens} {pass_name}", file=sys.stderr, flush=True)
        if args.profile and not profiles:
            profiles.append(profile(variants, x, grad_y, ["lora", "routed"]))
    names = [k for k in variants if k != "lora"]
    headers = ["shape (in->out)", "tokens", "pass", "lora ms"]
    headers += [f"{k}/lora" for k in names] + ["loop/routed", "loop/routed adapter"]
    print(common.table(headers, rows))
    print(common.verdict("target routed/lora <= 1.25 (fwd+bwd)", fb_routed, lambda v: v <= 1.25))
    print(common.verdict("target loop/routed >= 3 (fwd+bwd)", fb_loop, lambda v: v >= 3, min))
    for text in profiles:
        print(text)


if __name__ == "__main__":
    main()
