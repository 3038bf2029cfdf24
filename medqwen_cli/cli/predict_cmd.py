"""`medqwen predict`: answer questions about images with a bundle version; writes nothing."""

from __future__ import annotations

from pathlib import Path

import typer

from medqwen_cli.cli import _output
from medqwen_cli.cli._common import FORMATS, BundleArg, FormatOpt, read_settings, resolve_format

COLUMNS = ["id", "images", "prediction", "scoring"]


def predict(
    bundle: BundleArg = None,
    image: Path | None = typer.Option(
        None,
        "--image",
        "-i",
        help="Image file to ask about (PNG, JPEG, ... or DICOM).",
        show_default=False,
    ),
    question: str | None = typer.Option(
        None, "--question", "-q", help="The question about --image.", show_default=False
    ),
    data: str | None = typer.Option(
        None,
        "--data",
        "-d",
        help="Answer every record of this dataset instead (JSONL or any format train and "
        "evaluate read, or builtin:NAME), in file order. JSONL records need no answer: "
        '{"image": ..., "question": ...}.',
        show_default=False,
    ),
    choices: list[str] | None = typer.Option(
        None,
        "--choices",
        "-c",
        help="A candidate answer (repeatable): answer by likelihood over the choices and "
        "print each one's probability. Default: generate (--data records with candidates: "
        "likelihood over those).",
        show_default=False,
    ),
    version: str | None = typer.Option(
        None, "--version", "-v", help="Version to use (v3, 3, v0003; default: the head)."
    ),
    base_only: bool = typer.Option(False, "--base-only", help="Use the base model alone."),
    max_new_tokens: int | None = typer.Option(
        None,
        "--max-new-tokens",
        help="Longest generated answer (default: eval.max_new_tokens).",
        show_default=False,
    ),
    split: str = typer.Option(
        "eval", "--split", help="Split of --data when it is a directory or holds several."
    ),
    fmt: FormatOpt = "",
) -> None:
    """Answer one question about one image (--image, --question), or every record of a dataset
    (--data), with a version's adapted model. One row per question on stdout: JSON lines
    (id, images, prediction, scoring, scores), CSV or a table. The bundle is only read."""

    fmt = resolve_format(fmt, (*FORMATS, "jsonl"))
    settings = read_settings()
    from medqwen_cli.evaluation.predict import predict as run_predict

    with _output.progress("predict") as bar:
        result = run_predict(
            bundle, image=image, question=question, data=data, choices=choices,
            version=version, base_only=base_only, max_new_tokens=max_new_tokens, split=split,
            progress=bar, settings=settings,
        )  # fmt: skip
    n = len(result.answers)
    _output.note(
        f"{result.version}: {n} answer{'s' * (n != 1)} in {result.answer_seconds:.1f} s "
        f"(model loaded in {result.load_seconds:.1f} s); nothing written to {result.bundle}"
    )
    answers = [answer.to_json() for answer in result.answers]
    rows = [
        {**a, **{f"p({c})": (a["scores"] or {}).get(c) for c in result.choices}} for a in answers
    ]
    _output.emit(
        "jsonl" if fmt == "json" else fmt,  # one JSON line per question, as it is answered
        _output.Rows(rows, COLUMNS + [f"p({c})" for c in result.choices],
                     title=f"{result.bundle} {result.version}"),
        data=answers,
    )  # fmt: skip
