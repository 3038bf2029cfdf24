"""`medqwen demo`: the whole continual loop on built-in medical tasks, step by step.

Two plans. On a tiny base (`make demo`), for each method (lora, moelora, sslora at the same
total rank) the demo creates a bundle, scores the base zero-shot, then `continue`s through a
3-task sequence (radiograph -> CT -> pathology), each step evaluating every task seen; finally
one forgetting report puts the methods side by side with a plot. On `nano-qwen2-vl` (a real
pretrained language model) it shows what the product is for (`strategy_plan`): one lora bundle
learns `cxr-rules`, is copied, and each copy learns the contradicting `derm-rules`, one without a
strategy (it forgets) and one with `--protect` (no old data), then one table compares them. The plan is plain data (`Step`s): the CLI prints each step as the command line it
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
CONFLICT = ("cxr-rules", "derm-rules")  # the strategy demo's pair: B contradicts 2/3 of A
STRATEGY_BASES = ("nano-qwen2-vl",)  # bases whose demo is the strategy plan
STRATEGIES = {"none": (), "protect": ("--protect",)}  # bundle name -> continue's options for B
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
    # the forgetting study's settings (docs/forgetting-study.md); quick scores fewer records
    ("nano-qwen2-vl", True): Settings(steps=50, lr=2e-4, eval_samples=40, batch_size=8),
    ("nano-qwen2-vl", False): Settings(steps=50, lr=2e-4, eval_samples=100, batch_size=8),
}


def demo_recipe(base: str, quick: bool) -> dict[str, Any]:
    """The recipe every demo bundle starts from (written next to the bundles)."""
    s = SETTINGS[(base, quick)]
    if base in STRATEGY_BASES:  # the study's recipe: lora rank 16, likelihood scoring
        return {
            "model": {"base": base, "dtype": "float32", "device": "cpu"},
            "adapter": {"method": "lora", "experts": 4, "top_k": 2, "rank": 16},
            "tasks": {name: {"datasets": [{"path": f"builtin:{name}"}]} for name in CONFLICT},
            "train": {
                "lr": s.lr, "max_steps": s.steps, "batch_size": s.batch_size,
                "warmup_ratio": 0.1, "checkpoint_every": 1000, "log_every": 10,
                "max_image_pixels": 56 * 56, "max_length": 256,
            },
            "eval": {
                "batch_size": 16, "max_samples": s.eval_samples, "scoring": "likelihood",
                "tasks": list(CONFLICT),
            },
        }  # fmt: skip
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
    tasks: tuple[str, ...] = TASKS  # evaluate --base-only
    overrides: tuple[str, ...] = ()  # continue: the recipe items its options set

    @property
    def command(self) -> str:
        return self.argv[0]

    @property
    def line(self) -> str:
        if self.command == "cp":  # a shell step: a bundle copied is a second future of its head
            return shlex.join(self.argv)
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
    return [*plan, audit_step(out, bundles[-1])]


def audit_step(out: Path, bundle: Path) -> Step:
    """The demo's last step: the audit report of its last bundle (docs/report.md)."""
    return Step(("report", str(bundle), "--out", str(out / "report.html")), (bundle,))


def strategy_plan(out: Path, recipe_file: Path, base: str) -> list[Step]:
    """The strategy demo: A once, the bundle copied, B without and with each strategy."""
    a, b = CONFLICT
    first = out / "none"
    init = ("init-experts", "--base", base, "--recipe", str(recipe_file), "--out", str(first))
    both = ("--task", a, "--task", b)
    plan = [
        Step((*init, "--method", "lora", *JSON), (first,), method="lora"),
        Step(("evaluate", str(first), "--base-only", *both, *JSON), (first,), tasks=CONFLICT),
        # --protect on the first task only records A's input basis: B needs no data of A later
        Step(("continue", str(first), "--task", a, "--protect", *JSON), (first,), task=a,
             overrides=("continual.protect=true",)),
    ]  # fmt: skip
    bundles = tuple(out / name for name in STRATEGIES)
    plan += [Step(("cp", "-r", str(first), str(other)), (first, other)) for other in bundles[1:]]
    for bundle, options in zip(bundles, STRATEGIES.values(), strict=True):
        sets = ("continual.protect=true",) if "--protect" in options else ()
        plan.append(
            Step(
                ("continue", str(bundle), "--task", b, *options, *JSON),
                (bundle,),
                task=b,
                overrides=sets,
            )  # fmt: skip
        )
    report = ("forgetting-report", *map(str, bundles), "--plot", str(out / "forgetting.png"))
    plan.append(Step((*report, "--format", "table"), bundles))
    return [*plan, audit_step(out, bundles[-1])]


def strategy_table(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per strategy from the continue results of the strategy demo (by bundle name):
    A after A, A after B, the share of A kept, B after B (headline scores)."""
    a, b = CONFLICT
    rows = []
    for name in STRATEGIES:
        first, second = results.get(f"{name}:{a}", {}), results.get(f"{name}:{b}", {})
        after_a = _headline(first, a) if first else _headline(results.get(f"none:{a}", {}), a)
        after_b = _headline(second, a)
        rows.append({
            "strategy": name, f"{a} after {a}": after_a, f"{a} after {b}": after_b,
            f"{a} kept": None if not after_a or after_b is None else after_b / after_a,
            f"{b} after {b}": _headline(second, b),
        })  # fmt: skip
    return rows


def _headline(result: dict[str, Any], task: str) -> float | None:
    for e in result.get("evaluations", []):
        if e.get("headline") and e["version"] == result.get("version") and e["task"] == task:
            return e["value"]
    return None


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
