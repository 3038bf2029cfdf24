"""Can protect's bases be stored in 16 or 8 bits? The guarantee's error with each way of storing.

A basis M (n x k, orthonormal) is stored, read back (as a later `--protect` run reads it),
re-orthonormalised, and a branch is built in the complement of what was read and trained with
AdamW (weight decay on, re-projected after every step, as `continue --protect` trains it).
Measured: how far the layer's output moves on the old inputs, relative to the output's size,
after training. The layer guarantee test holds the outputs to 2e-5 absolute, 1e-5 relative.

- "read back": the old inputs lie in the span M had before rounding (medqwen before 16-bit
  storage rounded only when writing: the span a later run guards is not the one measured);
- "settled" (what `--protect` does, continual/bases.py: 8-bit codes with a float32 scale per
  column; 16 bits before): the adding run rounds M and settles it (re-orthonormalised) before
  measuring anything, so the old inputs' basis is the settled span itself; what rounding costs
  is then a slightly different span, measured as the energy a task's basis holds: a task whose
  inputs have a decaying spectrum, its basis at energy 0.99 (and 0.999) exact and settled, and
  the directions protect stores for it (it adds the next direction while the settled 8-bit
  span holds less than the exact one).

    python benchmarks/bases_precision.py              # n = 1536 (2B width), k = 10 % / 25 %
    python benchmarks/bases_precision.py --quick
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from medqwen_cli.adapters import AdapterConfig, inject_adapters
from medqwen_cli.continual.bases import Bases
from medqwen_cli.continual.protect import add_protected_branches
from medqwen_cli.continual.subspace import dequantize, energy_in, new_directions, quantize, settle

INT8 = torch.int8  # "8 bits": codes with one float32 scale per column (continual/subspace.py)


def rounded(basis: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`basis` as stored in `dtype` and read back, float64 (not yet orthonormal again)."""
    if dtype == INT8:
        return dequantize(*quantize(basis))
    return basis.to(dtype).double()


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
    stored = torch.linalg.qr(rounded(basis, dtype))[0]  # written, read back, orthonormalised
    if settled:
        basis = stored = settle(None, rounded(basis, dtype))  # the span the adding run measured
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
          "| float16, settled | 8 bits, settled |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for method in ("lora", "sslora"):
        for share in (0.1, 0.25):
            k = max(1, int(share * args.n))
            cells = [
                max(moved(args.n, k, d, method, s, args.steps, settled) for s in range(args.seeds))
                for d, settled in ((torch.float32, False), (torch.float16, False),
                                   (torch.bfloat16, False), (torch.float16, True), (INT8, True))
            ]  # fmt: skip
            print(f"| {method} | {share:.0%} | " + " | ".join(f"{c:.1e}" for c in cells) + " |")
    print("\nEnergy a task's basis holds (inputs with singular values 1/(1+i/10)^2, 4n samples; "
          "directions: the fewest exact, and those protect stores in 8 bits):")  # fmt: skip
    print("| energy | seed | directions (exact / stored) | exact | float16, settled "
          "| bfloat16, settled | 8 bits, settled | 8 bits, as stored |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for energy in (0.99, 0.999):
        for seed in range(args.seeds):
            (k, kept), *held = energies(args.n, seed, energy)
            print(f"| {energy} | {seed} | {k} / {kept} | " + " | ".join(f"{h:.6f}" for h in held)
                  + " |")  # fmt: skip


def energies(n: int, seed: int, energy: float) -> tuple[tuple[int, int], float, ...]:
    """((fewest directions exact, directions protect stores), energy held by the exact basis,
    by the float16-, bfloat16- and 8-bit-settled ones, and by what protect stores)."""
    g = torch.Generator().manual_seed(seed)
    scales = 1.0 / (1.0 + torch.arange(n, dtype=torch.float64) / 10) ** 2
    x = torch.randn(4 * n, n, generator=g, dtype=torch.float64) * scales
    rotation = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))[0]
    x = x @ rotation.t()
    gram = x.t() @ x
    exact = new_directions(None, gram, energy)
    held = [energy_in(exact, gram)]
    held += [
        energy_in(settle(None, rounded(exact, d)), gram)
        for d in (torch.float16, torch.bfloat16, INT8)
    ]
    bases = Bases()
    bases.add("task", {"g": gram}, energy, {})
    held.append(energy_in(bases.columns["g"], gram))
    return (exact.shape[1], bases.columns["g"].shape[1]), *held


if __name__ == "__main__":
    main()
