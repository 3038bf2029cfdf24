"""`medqwen demo`: the continual loop for lora, moelora and sslora: each step printed as the CLI
call it stands for, then run by the library function behind that command."""

from __future__ import annotations

import contextlib
import shutil
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer

from medqwen_cli.cli import _output, evaluate_cmd, forgetting_cmd
from medqwen_cli.cli._common import SetOpt, one_of, read_settings
from medqwen_cli.demo import SETTINGS, Step
from medqwen_cli.settings import Settings

BASES = sorted({b for b, _ in SETTINGS})


def demo(
    base: str = typer.Option("tiny-qwen2-vl", "--base", "-b", help=f"Base: {one_of(BASES)}."),
    out: Path = typer.Option(
        Path("medqwen-demo"),
        "--out",
        "-o",
        help="Directory for the bundles, recipe and plot (must be new or empty).",
    ),
    quick: bool = typer.Option(
        False, "--quick", help="Few steps per task: a few minutes on 2 CPU cores."
    ),
    overrides: SetOpt = None,
) -> None:
    """Run the whole loop on built-in medical tasks, each step printed as the command it is.

    On a tiny base: radiograph -> CT -> pathology for lora, moelora and sslora at the same rank,
    then the forgetting report side by side. On nano-qwen2-vl: cxr-rules, then derm-rules (which
    contradicts 2/3 of it) without a strategy and with --protect, from the same first version,
    then one table of what each kept.
    """
    import yaml

    from medqwen_cli.bundle import atomic_write_bytes
    from medqwen_cli.demo import (
        HEADLINE_NOTE,
        STRATEGY_BASES,
        check_demo,
        demo_plan,
        demo_recipe,
        step_summary,
        strategy_plan,
    )
    from medqwen_cli.errors import MedqwenError
    from medqwen_cli.recipe import apply_overrides, build_recipe

    out = out.expanduser().resolve()
    settings = read_settings()  # every step: the same cache (the bundles are given by path)
    check_demo(base, out)
    raw = apply_overrides(demo_recipe(base, quick), list(overrides or []))
    build_recipe(raw, source="demo recipe")  # every override problem reported before any work
    out.mkdir(parents=True, exist_ok=True)
    recipe_file = out / "recipe.yaml"
    header = f"# medqwen demo recipe ({'quick' if quick else 'full'}, base {base})\n"
    atomic_write_bytes(recipe_file, (header + yaml.safe_dump(raw, sort_keys=False)).encode())
    _output.note(f"demo recipe: {recipe_file}")
    start = time.perf_counter()
    strategies = base in STRATEGY_BASES
    plan = (strategy_plan if strategies else demo_plan)(out, recipe_file, base)
    _output.note(HEADLINE_NOTE)
    trained: dict[str, dict[str, Any]] = {}  # "<bundle name>:<task>" -> continue's result
    with _each_warning_once():
        for i, step in enumerate(plan, 1):
            _output.note(f"[{i}/{len(plan)}] $ {step.line}")
            try:  # a Ctrl-C passes through: main() says where training stopped, exit 130
                result = _run(step, recipe_file, base, settings)
            except MedqwenError as exc:
                _output.error(exc.message, exc.hint)
                raise MedqwenError(
                    f"demo step {i} failed: {step.line}",
                    "the error is printed above; rerun that command by hand to investigate",
                ) from None
            if step.command == "continue" and result is not None:
                trained[f"{step.bundles[0].name}:{step.task}"] = result
            if result is not None:
                try:
                    summary = step_summary(step, result)
                except (ValueError, KeyError, TypeError):  # never fail a finished step on a summary
                    summary = "done (no summary: the result was not the expected JSON)"
                _output.note("  " + summary)
    if strategies:
        _strategy_table(trained)
    _output.stdout.print(HEADLINE_NOTE, markup=False, highlight=False)
    _output.note(
        f"demo finished in {time.perf_counter() - start:.0f} s; bundles, recipe, plot and report "
        f"(report.html) in {out}"
    )


def _run(step: Step, recipe_file: Path, base: str, settings: Settings) -> dict[str, Any] | None:
    """Do what `step.argv` does through the CLI, by the library call behind it: the same stderr
    (progress, notes), the result as its JSON would have it; the report goes to stdout."""
    (bundle, *_) = step.bundles
    if step.command == "init-experts":
        from medqwen_cli.init_experts import init_experts
        from medqwen_cli.recipe import load_recipe

        recipe = load_recipe(recipe_file, [f"adapter.method={step.method}", f"model.base={base}"])
        with _output.progress("SVD per layer") as bar:
            summary = init_experts(
                recipe, bundle, command=step.line, progress=bar, settings=settings
            )
            return summary.to_dict()
    if step.command == "cp":
        shutil.copytree(step.bundles[0], step.bundles[1])  # the demo's --out was empty
        return None
    if step.command == "evaluate":
        from medqwen_cli.evaluation.api import evaluate_bundle

        with _output.progress("evaluate") as bar:
            result = evaluate_bundle(
                bundle, tasks=list(step.tasks), base_only=True, progress=bar, settings=settings
            )
        evaluate_cmd.note_result(result)
        return result.to_dict()
    if step.command == "continue":
        from medqwen_cli.training.run import continue_bundle

        with _output.TrainProgress() as bar, _output.progress("evaluate") as ebar:
            result = continue_bundle(
                bundle, task=step.task, command=step.line, progress_fn=bar, eval_progress=ebar,
                settings=settings, overrides=list(step.overrides),
            )  # fmt: skip
        return result.to_dict()
    if step.command == "report":
        from medqwen_cli.cli.report_cmd import write_report

        write_report(bundle, out=Path(step.argv[-1]), settings=settings)
        return None
    plot = Path(step.argv[step.argv.index("--plot") + 1])
    forgetting_cmd.report(
        list(step.bundles), metric=None, fmt="table", plot=plot, settings=settings
    )
    return None


def _strategy_table(trained: dict[str, dict[str, Any]]) -> None:
    """The strategy demo's answer on stdout: per strategy, what it kept of A and learned of B."""
    from medqwen_cli.demo import CONFLICT, strategy_table

    rows = strategy_table(trained)
    shown = [
        {k: v if isinstance(v, str) else "n/a" if v is None else f"{v:.2f}" for k, v in r.items()}
        for r in rows
    ]
    a, b = CONFLICT
    _output.emit(
        "table",
        _output.Rows(shown, list(rows[0]), title=f"what each strategy kept of {a} after {b}"),
    )


@contextlib.contextmanager
def _each_warning_once() -> Iterator[None]:
    """Show each distinct warning once: every step loads the model again, and libraries reset
    Python's once-per-location registry, so transformers' deprecation warnings would repeat."""
    seen: set[tuple[type, str]] = set()
    show = warnings.showwarning

    def once(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
        if (category, str(message)) not in seen:
            seen.add((category, str(message)))
            show(message, category, filename, lineno, file, line)

    warnings.showwarning = once
    try:
        yield
    finally:
        warnings.showwarning = show
