"""The `medqwen` Typer app and its error policy.

Exit codes: 0 success, 1 a known error (`Error: ...` + `Hint: ...` on stderr), 2 bad usage,
130 interrupted (Ctrl-C; training says the step it stopped after and what a rerun resumes from).
`MEDQWEN_DEBUG=1` prints the traceback (never with local variables, which may hold patient data).
Commands import torch/transformers inside their bodies so `medqwen --help` stays instant.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback

import typer

from medqwen_cli import __version__
from medqwen_cli.cli import (
    _output,
    demo_cmd,
    evaluate_cmd,
    forgetting_cmd,
    init_experts_cmd,
    inspect_cmd,
    log_cmd,
    merge_cmd,
    predict_cmd,
    train_cmd,
    validate_cmd,
)
from medqwen_cli.errors import Interrupted, MedqwenError

app = typer.Typer(
    name="medqwen",
    help="Sparse Spectral LoRA for medical vision-language models: routed spectral experts, "
    "continual tasks with their forgetting measured (and replay of earlier tasks), versioned "
    "adapter bundles. Results go to stdout, "
    "logs and progress to stderr.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"medqwen {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only warnings and errors on stderr."),
) -> None:
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(message)s",
        stream=sys.stderr,
        force=True,
    )


app.command("init-experts")(init_experts_cmd.init_experts)
app.command("train")(train_cmd.train)
app.command("continue")(train_cmd.continue_)
app.command("evaluate")(evaluate_cmd.evaluate)
app.command("predict")(predict_cmd.predict)
app.command("forgetting-report")(forgetting_cmd.forgetting_report)
app.command("merge")(merge_cmd.merge)
app.command("demo")(demo_cmd.demo)
app.command("validate")(validate_cmd.validate)
app.command("inspect")(inspect_cmd.inspect)
app.command("log")(log_cmd.log)


def _debug() -> bool:
    return os.environ.get("MEDQWEN_DEBUG", "").lower() not in ("", "0", "false", "no")


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the app, turn known errors into `Error:`/`Hint:` and exit 1."""
    args = list(argv) if argv is not None else sys.argv[1:]
    try:
        app(args=args, prog_name="medqwen", obj=args)  # obj: the command line a version records
    except MedqwenError as exc:
        if _debug():
            traceback.print_exc()
        _output.error(exc.message, exc.hint)
        sys.exit(1)
    except Interrupted as exc:  # Ctrl-C in training: where it stopped, what a rerun resumes
        _output.error(exc.message, exc.hint)
        sys.exit(130)
    except KeyboardInterrupt:
        _output.error("interrupted")
        sys.exit(130)
    except SystemExit as exc:
        if exc.code == 130:  # typer turns a Ctrl-C elsewhere into exit 130 without a word
            sys.stderr.write("Error: interrupted\n")
        raise
    except Exception as exc:  # a bug: say so plainly; the traceback only on request
        if _debug():
            traceback.print_exc()
        sys.stderr.write(f"Error: unexpected {type(exc).__name__}: {str(exc)[:300]}\n")
        sys.stderr.write("Hint: rerun with MEDQWEN_DEBUG=1 for the traceback and report it\n")
        sys.exit(1)
