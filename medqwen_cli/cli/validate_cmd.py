"""`medqwen validate RECIPE`: report every problem of a recipe at once."""

from __future__ import annotations

from pathlib import Path

import typer

from medqwen_cli.cli import _output
from medqwen_cli.cli._common import FormatOpt, SetOpt, resolve_format
from medqwen_cli.errors import RecipeError


def validate(
    recipe: Path = typer.Argument(..., help="Recipe file (YAML or JSON)."),
    overrides: SetOpt = None,
    fmt: FormatOpt = "",
) -> None:
    """Check a recipe: every unknown key, wrong type and missing dataset path, all at once."""
    from medqwen_cli.recipe import load_recipe, recipe_to_dict

    fmt = resolve_format(fmt)
    try:
        loaded = load_recipe(recipe, overrides or [])
    except RecipeError as exc:
        if exc.problems:
            rows = [{"field": p, "problem": m} for p, m in exc.problems]
            if fmt == "json":
                _output.emit(
                    fmt, rows, ["field", "problem"], data={"valid": False, "problems": rows}
                )
            else:
                _output.stderr.print(
                    _output.table(rows, ["field", "problem"], f"{recipe}: problems")
                )
            n = len(exc.problems)
            raise RecipeError(
                f"{recipe}: {n} problem{'s' * (n > 1)} (listed above)", exc.hint
            ) from None
        raise
    data = recipe_to_dict(loaded)
    if fmt == "json":
        _output.emit(fmt, [], [], data={"valid": True, "recipe": data})
        return
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
    ]
    _output.emit(fmt, rows, ["key", "value"], title=f"{recipe}: valid")
