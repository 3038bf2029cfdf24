"""The `medqwen` Typer app and its error policy.

Exit codes: 0 success, 1 a known error (`Error: ...` + `Hint: ...` on stderr), 2 bad usage,
3 a version was written but failed its acceptance criteria (`continue`; kept, not the default),
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
    accept_cmd,
    demo_cmd,
    evaluate_cmd,
    forgetting_cmd,
    init_experts_cmd,
    inspect_cmd,
    log_cmd,
    merge_cmd,
    predict_cmd,
    report_cmd,
    train_cmd,
    validate_cmd,
)
from medqwen_cli.errors import Interrupted, MedqwenError

app = typer.Typer(
    name="medqwen",
    help="Sparse Spectral LoRA for medical vision-language models: routed spectral experts, "
    "continual tasks with their forgetting measured, two strategies against it (continue "
    "--protect: protected branches, no old data; --replay: earlier records; what each keeps "
    "and costs on a five-task sequence: docs/continual.md), "
    "versioned adapter bundles. Results go to stdout, logs and progress to stderr.",
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
    quiet: bool = typer.Option(
        False,
        "--quiet",
        "-q",
        help="Only warnings and errors on stderr (also accepted after the command; in predict, "
        "where -q is --question, as --quiet).",
    ),
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
app.command("report")(report_cmd.report)
app.command("accept")(accept_cmd.accept)


def _debug() -> bool:
    return os.environ.get("MEDQWEN_DEBUG", "").lower() not in ("", "0", "false", "no")


QUIET_FLAGS = ("--quiet", "-q")
SHORT_Q_TAKEN = {"predict"}  # commands where -q means something else (predict: --question)


def hoist_quiet(args: list[str]) -> list[str]:
    """`--quiet` (and `-q`, where the command gives it no other meaning) typed after the command
    moved in front of it, where the root option is parsed: `medqwen train B -q` works as
    `medqwen -q train B` does. Tokens after `--` are left alone."""
    command = next((i for i, a in enumerate(args) if not a.startswith("-")), None)
    if command is None:
        return args
    end = args.index("--") if "--" in args[command:] else len(args)
    flags = ("--quiet",) if args[command] in SHORT_Q_TAKEN else QUIET_FLAGS
    moved = [i for i in range(command + 1, end) if args[i] in flags]
    if not moved:
        return args
    rest = [a for i, a in enumerate(args) if i not in moved]
    return [*rest[:command], "--quiet", *rest[command:]]


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the app, turn known errors into `Error:`/`Hint:` and exit 1."""
    args = list(argv) if argv is not None else sys.argv[1:]
    try:  # obj: the command line as typed, which a version records
        app(args=hoist_quiet(args), prog_name="medqwen", obj=args)
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
