"""Bytes a protected task adds to a bundle, at Qwen2-VL-2B shapes, against the base's size.

A protected version stores (1) the directions of its task's layer inputs (protect.safetensors:
n x k 8-bit codes and k float32 scales per layer input, k the task's new directions; float32 and
float16 before, shown beside) and (2) its branch's tensors (the adapter file holds only what
differs from the parent's). The k / n fractions come from a real
protected bundle (`--bundle`, e.g. one made on nano-qwen2-vl), per kind of layer input and per
task; they are applied to Qwen2-VL-2B's widths (28 layers; inputs 1536, and 8960 for down_proj)
and compared with the base's size in bfloat16. The older layout, where every version stored the
whole accumulated basis (float32) and every frozen branch again, is printed beside it. Without --bundle
a five-task protected sequence on tiny-qwen2-vl is made first (a smoke run: tiny's fractions
are far larger than a real model's, n = 64).

    python benchmarks/bases_storage.py --bundle path/to/protected/bundle
    python benchmarks/bases_storage.py --quick        # the tiny sequence
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

LAYERS, HIDDEN, INTER, KV, VOCAB = 28, 1536, 8960, 256, 151936  # Qwen2-VL-2B's language model
INPUT = {"attn": HIDDEN, "o_proj": HIDDEN, "mlp": HIDDEN, "down_proj": INTER}
LINEARS = {  # kind of input -> (out features of each linear reading it)
    "attn": [HIDDEN, KV, KV], "o_proj": [HIDDEN], "mlp": [INTER, INTER], "down_proj": [HIDDEN],
}  # fmt: skip
LM_PARAMS = VOCAB * HIDDEN + LAYERS * sum(INPUT[k] * m for k, outs in LINEARS.items() for m in outs)
VISION_PARAMS = 675_000_000  # the vision tower's published size (about 0.675 B)
BASE_BYTES = (LM_PARAMS + VISION_PARAMS) * 2  # bfloat16, biases and norms left out


def kind(group: str) -> str:
    for key, name in (("down_proj", "down_proj"), ("o_proj", "o_proj"), ("mlp.", "mlp")):
        if key in group:
            return name
    return "attn"


def fractions(bundle: Path) -> list[dict[str, float]]:
    """Per protected task in order: kind of input -> mean over layers of k_new / n."""
    versions = sorted((bundle / "versions").iterdir())
    out, before = [], {}
    for vdir in versions:
        path = vdir / "continual.json"
        if not path.is_file() or json.loads(path.read_text()).get("strategy") != "protect":
            continue
        sizes = json.loads(path.read_text())["bases"]["sizes"]
        per_kind: dict[str, list[float]] = {}
        for group, (n, k) in sizes.items():
            per_kind.setdefault(kind(group), []).append((k - before.get(group, 0)) / n)
            before[group] = k
        out.append({name: statistics.mean(v) for name, v in per_kind.items()})
    return out


def branch_bytes(rank: int, experts: int, spectral: bool, exclude: tuple[str, ...] = ()) -> int:
    """One branch at 2B shapes in float32: A, B, router, and the frozen residual factors
    (none on the kinds of input in `exclude`)."""
    total = 0
    for name, outs in LINEARS.items():
        if name in exclude:
            continue
        n = INPUT[name]
        for m in outs:
            total += rank * (n + m) + (experts * n if experts > 1 else 0)
            total += rank * (n + m) if spectral else 0
    return total * LAYERS * 4


def tiny_sequence() -> Path:
    from medqwen_cli.init_experts import init_experts
    from medqwen_cli.recipe import load_recipe
    from medqwen_cli.training.run import continue_bundle

    root = Path(tempfile.mkdtemp(prefix="bases-storage-")) / "bundle"
    init_experts(load_recipe(Path(__file__).parents[1] / "recipes/debug/tiny.yaml"), root)
    for task in ["xray", "ct", "builtin:mri", "builtin:fundus", "pathology"]:
        sets = ["train.max_steps=2", "continual.protect=true"]
        continue_bundle(root, task=task, overrides=sets, evaluate=False)
    return root


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--bundle", type=Path, help="a protected bundle to take k / n from")
    parser.add_argument("--quick", action="store_true", help="make the tiny sequence")
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--exclude", nargs="*", default=[], choices=sorted(INPUT),
                        help="kinds of layer input given no branch and no basis "
                        "(continual.protect_exclude), e.g. down_proj")  # fmt: skip
    args = parser.parse_args(argv)
    bundle = args.bundle if args.bundle is not None else tiny_sequence()
    tasks = [{k: f for k, f in frac.items() if k not in args.exclude} for frac in fractions(bundle)]
    print(
        f"k / n from {bundle} ({len(tasks)} protected tasks); Qwen2-VL-2B base {BASE_BYTES / 1e9:.2f} GB (bf16)"
    )
    rows, accumulated, total_new, total_old, branches = [], 0.0, 0, 0, 0
    for t, frac in enumerate(tasks, 1):
        new = sum(LAYERS * INPUT[k] * INPUT[k] * f for k, f in frac.items())  # numbers
        columns = sum(LAYERS * INPUT[k] * f for k, f in frac.items())  # one scale each
        accumulated += new
        branch = branch_bytes(args.rank, args.experts, True, tuple(args.exclude)) if t > 1 else 0
        branches += branch
        bases = new + columns * 4  # 8-bit codes, a float32 scale per column (continual/bases.py)
        per_task = bases + branch
        total_new += per_task
        total_old += accumulated * 4 + branches  # every version stored all again
        shown = ", ".join(f"{k} {f:.1%}" for k, f in sorted(frac.items()))
        rows.append(
            f"| {t} | {shown} | {new * 4 / 1e6:.0f} MB | {new * 2 / 1e6:.0f} MB | "
            f"{bases / 1e6:.0f} MB | {branch / 1e6:.0f} MB | {per_task / BASE_BYTES:.1%} | "
            f"{(new * 2 + branch) / BASE_BYTES:.1%} | {total_new / 1e9:.2f} GB | "
            f"{total_old / 1e9:.2f} GB |"
        )
    print(
        "| task | new directions k/n (mean over layers) | bases fp32 | bases fp16 | bases 8-bit | "
        f"branch (sslora r{args.rank}, E{args.experts}) | task / base | with fp16 bases | "
        "bundle now | older layout |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    sizes = [
        sum(f.stat().st_size for f in v.iterdir()) for v in sorted((bundle / "versions").iterdir())
    ]
    print("this bundle's versions (bytes):", sizes)


if __name__ == "__main__":
    main()
