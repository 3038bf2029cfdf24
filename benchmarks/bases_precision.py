"""Can protect's bases be stored in 16 bits? The guarantee's error with each way of storing.

A basis M (n x k, orthonormal) is stored, read back (as a later `--protect` run reads it),
re-orthonormalised, and a branch is built in the complement of what was read and trained with
AdamW (weight decay on, re-projected after every step, as `continue --protect` trains it).
Measured: how far the layer's output moves on the old inputs, relative to the output's size,
after training. The layer guarantee test holds the outputs to 2e-5 absolute, 1e-5 relative.

- "read back": the old inputs lie in the span M had before rounding (medqwen before 16-bit
  storage rounded only when writing: the span a later run guards is not the one measured);
- "settled" (what `--protect` does now, continual/bases.py): the adding run rounds M to 16 bits
  and settles it (re-orthonormalised) before measuring anything, so the old inputs' basis is
  the settled span itself; what rounding costs is then a slightly different span, measured as
  the energy a task's basis holds: a task whose inputs have a decaying spectrum, its basis at
  energy 0.99 exact and settled (`held` columns).

    python benchmarks/bases_precision.py              # n = 1536 (2B width), k = 10 % / 25 %
    python benchmarks/bases_precision.py --quick
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from medqwen_cli.adapters import AdapterConfig, inject_adapters
from medqwen_cli.continual.protect import add_protected_branches
from medqwen_cli.continual.subspace import energy_in, new_directions, settle


def moved(
    n: int, k: int, dtype: torch.dtype, method: str, seed: int, steps: int, settled: bool = False
) -> float:
    """max |y_after - y_before| / max |y_before| on 256 old inputs: in span(M) before rounding,
    or (`settled`) in the settled span."""
    torch.manual_seed(seed)
    model = nn.Sequential()
    model.add_module("q_proj", nn.Linear(n, n))
    cfg = AdapterConfig(
        method=method, experts=4, top_k=2, rank=16, targets=[r"q_proj$"], exclude=[]
    )
    inject_adapters(model, cfg)
    g = torch.Generator().manual_seed(seed + 1)
    basis = torch.linalg.qr(torch.randn(n, k, generator=g, dtype=torch.float64))[0]
    stored = torch.linalg.qr(basis.to(dtype).double())[0]  # written, read back, orthonormalised
    if settled:
        basis = stored = settle(None, basis.to(dtype))  # the span the adding run measured
    old = torch.randn(256, k, generator=g).double() @ basis.t()
    old = old.float()
    layer = model.q_proj
    before = layer(old).detach()
    (branch,) = add_protected_branches(model, {"q_proj": stored}, {}, cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=0.02, weight_decay=0.1)
    new, target = torch.randn(256, n, generator=g), torch.randn(256, n, generator=g)
    for _ in range(steps):
        (layer(new) - target).pow(2).mean().backward()
        opt.step()
        branch.reproject()
        opt.zero_grad()
    after = layer(old).detach()
    return float((after - before).abs().max() / before.abs().max())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--n", type=int, default=1536)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.steps, args.seeds = 64, 5, 1
    torch.set_num_threads(1)
    print(f"n {args.n}, rank 16, {args.steps} AdamW steps, seeds 0-{args.seeds - 1}; "
          "max relative output change on the old inputs (max over seeds)")  # fmt: skip
    print("| method | basis k/n | float32 | float16, read back | bfloat16, read back "
          "| float16, settled |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for method in ("lora", "sslora"):
        for share in (0.1, 0.25):
            k = max(1, int(share * args.n))
            cells = [
                max(moved(args.n, k, d, method, s, args.steps, settled) for s in range(args.seeds))
                for d, settled in ((torch.float32, False), (torch.float16, False),
                                   (torch.bfloat16, False), (torch.float16, True))
            ]  # fmt: skip
            print(f"| {method} | {share:.0%} | " + " | ".join(f"{c:.1e}" for c in cells) + " |")
    print("\nEnergy a task's basis at 0.99 holds (inputs with singular values 1/(1+i/10)^2, "
          "4n samples):")  # fmt: skip
    print("| seed | basis k/n | exact | float16, settled | bfloat16, settled |")
    print("|---|---|---|---|---|")
    for seed in range(args.seeds):
        share, *held = energies(args.n, seed)
        print(f"| {seed} | {share:.1%} | " + " | ".join(f"{h:.6f}" for h in held) + " |")


def energies(n: int, seed: int) -> tuple[float, ...]:
    """(k/n, energy held by the exact basis, by the float16-settled one, bfloat16-settled)."""
    g = torch.Generator().manual_seed(seed)
    scales = 1.0 / (1.0 + torch.arange(n, dtype=torch.float64) / 10) ** 2
    x = torch.randn(4 * n, n, generator=g, dtype=torch.float64) * scales
    rotation = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))[0]
    x = x @ rotation.t()
    gram = x.t() @ x
    exact = new_directions(None, gram, 0.99)
    out = [exact.shape[1] / n, energy_in(exact, gram)]
    out += [
        energy_in(settle(None, exact.to(d).contiguous()), gram)
        for d in (torch.float16, torch.bfloat16)
    ]
    return tuple(out)


if __name__ == "__main__":
    main()
