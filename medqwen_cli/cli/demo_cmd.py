"""`medqwen demo`: the continual loop for lora, moelora and sslora, each step a printed CLI call."""

from __future__ import annotations

import contextlib
import io
import json
import shlex
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import typer

from medqwen_cli.cli import _output
from medqwen_cli.cli._common import SetOpt


def demo(
    base: str = typer.Option(
        "tiny-qwen2-vl", "--base", "-b", help="tiny-qwen2-vl, tiny-qwen2.5-vl or nano-qwen2-vl."
    ),
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
    """Run the whole loop on built-in medical tasks (radiograph -> CT -> pathology) for lora,
    moelora and sslora at the same rank, then print the forgetting report side by side."""
    import yaml

    from medqwen_cli.bundle import atomic_write_bytes
    from medqwen_cli.cli.app import main
    from medqwen_cli.demo import HEADLINE_NOTE, check_demo, demo_plan, demo_recipe, step_summary
    from medqwen_cli.errors import MedqwenError
    from medqwen_cli.recipe import apply_overrides, build_recipe

    out = out.expanduser().resolve()
    check_demo(base, out)
    raw = apply_overrides(demo_recipe(base, quick), list(overrides or []))
    build_recipe(raw, source="demo recipe")  # every override problem reported before any work
    out.mkdir(parents=True, exist_ok=True)
    recipe_file = out / "recipe.yaml"
    header = f"# medqwen demo recipe ({'quick' if quick else 'full'}, base {base})\n"
    atomic_write_bytes(recipe_file, (header + yaml.safe_dump(raw, sort_keys=False)).encode())
    _output.note(f"demo recipe: {recipe_file}")
    start = time.perf_counter()
    plan = demo_plan(out, recipe_file, base)
    _output.note(HEADLINE_NOTE)
    with _each_warning_once():
        for i, argv in enumerate(plan, 1):
            is_report = argv[0] == "forgetting-report"
            args = [*argv, "--format", "table" if is_report else "json"]
            _output.note(f"[{i}/{len(plan)}] $ medqwen {shlex.join(args)}")
            captured = io.StringIO()
            try:
                if is_report:
                    main(args)
                else:  # the JSON result is summed up in one line; stdout keeps the report
                    with contextlib.redirect_stdout(captured):
                        main(args)
            except SystemExit as exc:
                if exc.code == 130:  # Ctrl-C: the step said where it stopped; stop as it did
                    raise
                if exc.code not in (0, None):
                    raise MedqwenError(
                        f"demo step {i} failed: medqwen {shlex.join(args)}",
                        "the error is printed above; rerun that command by hand to investigate",
                    ) from None
            if not is_report:
                try:
                    summary = step_summary(argv, json.loads(captured.getvalue()))
                except (ValueError, KeyError, TypeError):  # never fail a finished step on a summary
                    summary = "done (no summary: the result was not the expected JSON)"
                _output.note("  " + summary)
    _output.stdout.print(HEADLINE_NOTE, markup=False, highlight=False)
    _output.note(
        f"demo finished in {time.perf_counter() - start:.0f} s; bundles, recipe and plot in {out}"
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
