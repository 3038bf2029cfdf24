"""`medqwen demo`: the whole continual loop on built-in medical tasks, step by step.

For each method (lora, moelora, sslora at the same total rank) the demo creates a bundle, scores
the base zero-shot, then `continue`s through a 3-task sequence (radiograph -> CT -> pathology),
each step evaluating every task seen; finally one forgetting report puts the methods side by side
with a plot. The plan is plain data (`Step`s): the CLI prints each step as the command line it
stands for, which a user can copy and run by hand, then calls the library function behind that
command. Each step's result is summed up in one line (`step_summary`) instead of its JSON; the
scores in those lines and in the report are each task's headline metric, `headline_mean`
(`HEADLINE_NOTE`).
"""

from __future__ import annotations

import shlex
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
JSON = ("--format", "json")


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


@dataclass(frozen=True)
class Step:
    """One step of the demo: the CLI call it stands for (`argv`, without the program name:
    printed before the step runs and recorded in the version it makes) and what the library call
    behind it needs."""

    argv: tuple[str, ...]
    bundles: tuple[Path, ...]  # the bundle it works on; the forgetting report: all of them
    method: str | None = None  # init-experts
    task: str | None = None  # continue

    @property
    def command(self) -> str:
        return self.argv[0]

    @property
    def line(self) -> str:
        return "medqwen " + shlex.join(self.argv)


def demo_plan(
    out: Path, recipe_file: Path, base: str, methods: tuple[str, ...] = METHODS
) -> list[Step]:
    """The steps of the demo, in order. Each step's result is summed up on stderr (its CLI call
    says --format json); the forgetting report is printed as the table it says."""
    plan: list[Step] = []
    for method in methods:
        b = out / method
        init = ("init-experts", "--base", base, "--recipe", str(recipe_file), "--out", str(b))
        plan.append(Step((*init, "--method", method, *JSON), (b,), method=method))
        tasks = tuple(a for t in TASKS for a in ("--task", t))
        plan.append(Step(("evaluate", str(b), "--base-only", *tasks, *JSON), (b,)))
        plan += [Step(("continue", str(b), "--task", t, *JSON), (b,), task=t) for t in TASKS]
    bundles = tuple(out / m for m in methods)
    report = ("forgetting-report", *map(str, bundles), "--plot", str(out / "forgetting.png"))
    plan.append(Step((*report, "--format", "table"), bundles))
    return plan


def step_summary(step: Step, result: dict[str, Any]) -> str:
    """One line for a step's result (init-experts, evaluate or continue), as its JSON has it."""

    def scores(pairs: list[tuple[str, Any]]) -> str:
        return ", ".join(f"{t} {'n/a' if v is None else f'{v:.3f}'}" for t, v in pairs)

    name = step.bundles[0].name
    if step.command == "init-experts":
        return (
            f"{name}: {result['adapted_layers']} layers adapted, {result['trainable_params']:,} "
            f"trainable parameters ({result['ratio_to_full_moe']:.1f}x fewer than a full-rank "
            f"MoE), {result['seconds']:.1f} s"
        )
    if step.command == "evaluate":
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
