"""`medqwen validate RECIPE`: report every problem of a recipe and of its data at once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from medqwen_cli.cli import _output
from medqwen_cli.cli._common import FormatOpt, SetOpt, read_settings, resolve_format
from medqwen_cli.errors import DataError, RecipeError

SHOWN_PER_SPLIT = 50  # text output; JSON and CSV list every problem


def validate(
    recipe: Path = typer.Argument(..., help="Recipe file (YAML or JSON)."),
    overrides: SetOpt = None,
    no_data: bool = typer.Option(
        False, "--no-data", help="Check the recipe only; do not read the datasets' records."
    ),
    fmt: FormatOpt = "",
) -> None:
    """Check a recipe (every unknown key, wrong type and missing dataset path), then read every
    record of every dataset it names, training and eval splits (fields, JSON, images: existence
    and header), and list every problem as file:line: problem. A dataset without an eval split
    (a single file) is a warning: evaluate and continue will not score it."""
    from medqwen_cli.data.check import check_datasets
    from medqwen_cli.recipe import load_recipe, recipe_to_dict

    fmt = resolve_format(fmt)
    try:
        loaded = load_recipe(recipe, overrides or [])
    except RecipeError as exc:
        if exc.problems:
            rows = [{"field": p, "problem": m} for p, m in exc.problems]
            if fmt == "json":
                _output.emit(fmt, _output.Rows(rows, []), data={"valid": False, "problems": rows})
            else:  # a failure: the table goes with the error, on stderr
                _output.print_table(
                    _output.stderr, _output.table(rows, ["field", "problem"], f"{recipe}: problems")
                )
            n = len(exc.problems)
            raise RecipeError(
                f"{recipe}: {n} problem{'s' * (n > 1)} (listed above)", exc.hint
            ) from None
        raise
    data_dir = read_settings().data_cache_dir  # built-in datasets are generated there
    checks = [] if no_data else check_datasets(loaded, cache_dir=data_dir)
    splits = [c.to_dict() for c in checks]
    problems = [p for c in splits for p in c["problems"]]
    warnings = [w for c in checks for w in c.warnings]
    for warning in warnings:
        _output.note(f"warning: {warning}", warning=True)
    if problems:
        _data_problems(fmt, recipe, splits, problems)
    a = loaded.adapter
    tasks = {name: [d.display_name for d in t.datasets] for name, t in loaded.tasks.items()}
    rows = [
        {"key": "base", "value": loaded.model.base},
        {
            "key": "method",
            "value": f"{a.method} E={a.num_experts} k={a.top_k} r={a.rank} scaling={a.scaling}",
        },
        {"key": "datasets", "value": [d.display_name for d in loaded.data.datasets]},
        {"key": "regime", "value": loaded.regime.kind},
        {"key": "tasks", "value": [f"{k}({', '.join(v)})" for k, v in tasks.items()]},
        {
            "key": "train",
            "value": f"lr={loaded.train.lr} batch={loaded.train.batch_size} "
            f"steps={loaded.train.max_steps or f'{loaded.train.epochs} epochs'}",
        },
        {
            "key": "records read",
            "value": [f"{c.name}/{c.split} {c.records}" for c in checks] or "not read (--no-data)",
        },
        *({"key": "warning", "value": w} for w in warnings),
    ]
    _output.emit(
        fmt,
        _output.Rows(rows, ["key", "value"], title=f"{recipe}: valid"),
        data={
            "valid": True,
            "recipe": recipe_to_dict(loaded),
            "datasets": splits,
            "warnings": warnings,
        },
    )


def _data_problems(
    fmt: str, recipe: Path, splits: list[dict[str, Any]], problems: list[dict[str, Any]]
) -> None:
    """Print every data problem (`file:line: problem` lines in text), then fail."""
    if fmt != "table":
        _output.emit(
            fmt,
            _output.Rows(problems, ["where", "problem", "dataset", "split", "hint"]),
            data={"valid": False, "problems": problems, "datasets": splits},
        )
    else:  # file:line: problem, as compilers print them
        for split in (s for s in splits if s["problems"]):
            shown = split["problems"][:SHOWN_PER_SPLIT]
            for p in shown:
                _output.stderr.print(f"{p['where']}: {p['problem']}", markup=False, highlight=False)
            if len(split["problems"]) > len(shown):
                _output.note(
                    f"... and {len(split['problems']) - len(shown)} more in {split['path']} "
                    "(--format json lists every one)",
                    warning=True,
                )
    n, files = len(problems), len({s["path"] for s in splits if s["problems"]})
    hints = {p["hint"] for p in problems}
    raise DataError(
        f"{recipe}: {n} data problem{'s' * (n > 1)} in {files} file{'s' * (files > 1)} "
        "(listed above; every record was read)",
        hints.pop()
        if len(hints) == 1 and None not in hints
        else "fix each file:line above; `--format json` gives the hint for each problem",
    )
