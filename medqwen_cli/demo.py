"""`medqwen demo`: the whole continual loop on built-in medical tasks, as ordinary CLI calls.

For each method (lora, moelora, sslora at the same total rank) the demo creates a bundle, scores
the base zero-shot, then `continue`s through a 3-task sequence (radiograph -> CT -> pathology),
each step evaluating every task seen; finally one forgetting report puts the methods side by side
with a plot. The plan is plain data (argv lists) so the CLI can print each command before running
it: a user can copy any line and run it by hand. Each step's JSON result is kept off the terminal
and summed up in one line (`step_summary`); the scores in those lines and in the report are each
task's headline metric, `headline_mean` (`HEADLINE_NOTE`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

TASKS = ("xray", "ct", "pathology")
HEADLINE_NOTE = (
    "scores are headline_mean: the unweighted mean over a task's record types of each type's "
    "headline metric (closed VQA accuracy, open VQA token F1, report ROUGE-L, classification "
    "accuracy, POPE F1), 0 to 1, higher is better"
)
METHODS = ("lora", "moelora", "sslora")


@dataclass(frozen=True)
class Settings:
    steps: int  # optimizer steps per task
    lr: float
    eval_samples: int
    batch_size: int = 4


# quick: a few minutes on 2 CPU cores with the tiny preset; full: longer runs that learn more
SETTINGS = {
    ("tiny-qwen2-vl", True): Settings(steps=30, lr=0.01, eval_samples=16),
    ("tiny-qwen2-vl", False): Settings(steps=150, lr=0.005, eval_samples=32),
    ("tiny-qwen2.5-vl", True): Settings(steps=30, lr=0.01, eval_samples=16),
    ("tiny-qwen2.5-vl", False): Settings(steps=150, lr=0.005, eval_samples=32),
    ("nano-qwen2-vl", True): Settings(steps=20, lr=0.002, eval_samples=16, batch_size=2),
    ("nano-qwen2-vl", False): Settings(steps=150, lr=0.001, eval_samples=32, batch_size=4),
}


def demo_recipe(base: str, quick: bool) -> dict[str, Any]:
    """The recipe every demo bundle starts from (written next to the bundles)."""
    s = SETTINGS[(base, quick)]
    return {
        "model": {"base": base, "dtype": "float32", "device": "cpu"},
        "adapter": {"method": "sslora", "experts": 4, "top_k": 2, "rank": 16, "alpha": 32.0},
        "tasks": {name: {"datasets": [{"path": f"builtin:{name}"}]} for name in TASKS},
        "train": {
            "lr": s.lr,
            "max_steps": s.steps,
            "batch_size": s.batch_size,
            "warmup_ratio": 0.1,
            "checkpoint_every": max(10, s.steps // 2),
            "log_every": max(1, s.steps // 3),  # three progress lines per task
            "max_image_pixels": 112 * 112,
            "max_length": 512,
        },
        "eval": {
            "batch_size": 8,
            "max_new_tokens": 24,
            "max_samples": s.eval_samples,
            "tasks": list(TASKS),  # every version scores every task: a full matrix
        },
    }


def demo_plan(
    out: Path, recipe_file: Path, base: str, methods: tuple[str, ...] = METHODS
) -> list[list[str]]:
    """The CLI calls of the demo, in order (argv without the program name)."""
    plan: list[list[str]] = []
    for method in methods:
        bundle = str(out / method)
        plan.append(
            [
                "init-experts",
                "--base",
                base,
                "--recipe",
                str(recipe_file),
                "--out",
                bundle,
                "--method",
                method,
            ]
        )
        plan.append(["evaluate", bundle, "--base-only", *[a for t in TASKS for a in ("--task", t)]])
        plan += [["continue", bundle, "--task", task] for task in TASKS]
    plan.append(
        [
            "forgetting-report",
            *(str(out / m) for m in methods),
            "--plot",
            str(out / "forgetting.png"),
        ]
    )
    return plan


def step_summary(argv: list[str], result: dict[str, Any]) -> str:
    """One line for a step's JSON result (init-experts, evaluate or continue)."""

    def scores(pairs: list[tuple[str, Any]]) -> str:
        return ", ".join(f"{t} {'n/a' if v is None else f'{v:.3f}'}" for t, v in pairs)

    name = Path(argv[1] if argv[0] != "init-experts" else argv[argv.index("--out") + 1]).name
    if argv[0] == "init-experts":
        return (
            f"{name}: {result['adapted_layers']} layers adapted, {result['trainable_params']:,} "
            f"trainable parameters ({result['ratio_to_full_moe']:.1f}x fewer than a full-rank "
            f"MoE), {result['seconds']:.1f} s"
        )
    if argv[0] == "evaluate":
        heads = [(t, h["value"]) for t, h in result["headlines"].items()]
        return f"{name} {result['version']}: {scores(heads)} ({result['seconds']:.1f} s)"
    heads = [
        (e["task"], e["value"])
        for e in result.get("evaluations", [])
        if e.get("headline") and e["version"] == result["version"]
    ]
    return (
        f"{name} {result['version']} (trained on {', '.join(result['tasks'])}: "
        f"{result['steps']} steps, loss {result['final_loss']:.3f}, {result['seconds']:.1f} s): "
        f"{scores(heads)}"
    )


def check_demo(base: str, out: Path) -> None:
    from medqwen_cli.errors import MedqwenError

    if (base, True) not in SETTINGS:
        bases = sorted({b for b, _ in SETTINGS})
        raise MedqwenError(
            f"the demo has no settings for base {base!r}", f"use one of {', '.join(bases)}"
        )
    if out.exists() and any(out.iterdir()):
        raise MedqwenError(
            f"{out} exists and is not empty; the demo never overwrites bundles",
            "pass another --out directory, or remove this one",
        )
