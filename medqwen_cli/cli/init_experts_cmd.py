"""`medqwen init-experts`: create a bundle with spectral experts initialised from a base."""

from __future__ import annotations

from pathlib import Path

import typer

from medqwen_cli.choices import METHODS
from medqwen_cli.cli import _output
from medqwen_cli.cli._common import (
    FIELDS,
    FormatOpt,
    SetOpt,
    check_choice,
    command_line,
    one_of,
    read_settings,
    resolve_format,
)

DEVICES = ("cpu", "cuda")  # where the SVDs run


def init_experts(
    ctx: typer.Context,
    base: str | None = typer.Option(
        None,
        "--base",
        "-b",
        help="Base model: preset, local dir, alias or cached Hub id (default: the recipe's model.base).",
    ),
    out: Path | None = typer.Option(
        None,
        "--out",
        "-o",
        help="Bundle directory to create: new or empty (a bundle or other files there are "
        "refused). Without it the current directory becomes the bundle, like `git init`.",
        show_default="current directory",
    ),
    recipe: Path | None = typer.Option(
        None,
        "--recipe",
        "-r",
        help="Recipe file; stored in the bundle so later commands need no path.",
    ),
    overrides: SetOpt = None,
    method: str | None = typer.Option(
        None, "--method", help=f"{' | '.join(METHODS)} (= --set adapter.method=...)."
    ),
    experts: int | None = typer.Option(
        None, "--experts", "-E", help="Number of experts (= --set adapter.experts=...)."
    ),
    top_k: int | None = typer.Option(
        None, "--top-k", "-k", help="Experts per token (= --set adapter.top_k=...)."
    ),
    rank: int | None = typer.Option(
        None, "--rank", help="Total rank over all experts (= --set adapter.rank=...)."
    ),
    device: str = typer.Option("cpu", "--device", help=f"Device for the SVDs: {one_of(DEVICES)}."),
    fmt: FormatOpt = "",
) -> None:
    """Stream the base's weights tensor by tensor, initialise experts from SVD segments and
    write bundle version v0001."""
    from medqwen_cli.errors import RecipeError
    from medqwen_cli.init_experts import init_experts as run
    from medqwen_cli.recipe import load_recipe

    fmt = resolve_format(fmt)
    settings = read_settings()
    check_choice(device, DEVICES, "--device")
    items = list(overrides or [])
    for key, value in (("method", method), ("experts", experts), ("top_k", top_k), ("rank", rank)):
        if value is not None:
            items.append(f"adapter.{key}={value}")
    if base is not None:
        items.append(f"model.base={base}")
    elif recipe is None:
        raise RecipeError(
            "no base model given",
            "pass --base (e.g. --base tiny-qwen2-vl) or a --recipe with model.base",
        )
    loaded = load_recipe(recipe, items) if recipe else load_recipe(None, items, base={})

    with _output.progress("SVD per layer") as bar:
        summary = run(
            loaded, out or Path.cwd(), command=command_line(ctx), device=device, progress=bar,
            empty_out=out is not None, settings=settings,
        )  # fmt: skip
    rows = [
        {"field": "bundle", "value": f"{summary.bundle} ({summary.version})"},
        {"field": "base", "value": f"{summary.base} (fingerprint {summary.fingerprint})"},
        {
            "field": "method",
            "value": f"{summary.method} E={summary.experts} k={summary.top_k} r={summary.rank}",
        },
        {"field": "layers adapted", "value": summary.adapted_layers},
        {
            "field": "layers skipped",
            "value": [f"{k} ({v})" for k, v in summary.skipped.items()] or 0,
        },
        {"field": "trainable parameters", "value": summary.trainable_params},
        {"field": "ratio to full-rank MoE", "value": f"{summary.ratio_to_full_moe:.1f}x fewer"},
        *(
            {"field": f"s ({kind.rsplit('.', 1)[-1]})", "value": s}
            for kind, s in summary.scales.items()
        ),
        {"field": "time", "value": f"{summary.seconds:.2f} s (SVD {summary.svd_seconds:.2f} s)"},
    ]
    _output.emit(fmt, _output.Rows(rows, FIELDS, title="init-experts"), data=summary.to_dict())
