"""Records: the one sample schema every reader produces, and the native JSONL reader.

Contract:

- A `Record` is one question with its answer about zero or more images: `id`, `type`
  (vqa_closed | vqa_open | report | classification | pope), `images` (absolute paths),
  `question`, `answer`, optional `labels` (the candidate set: the class names of a
  classification, the options of a closed question; `answer` is always one of them),
  optional `task` and `meta`, and where it came from (`source` file, 1-based `line`).
- Native JSONL, one object per line::

      {"id": "c1", "type": "vqa_closed", "images": ["img/c1.png"], "question": "Is there
       an effusion?", "answer": "no", "labels": ["yes", "no"], "task": "cxr", "meta": {}}

  `images` (or `image`) paths are relative to the file's directory; `id` defaults to
  `<file stem>-<n>` for the n-th item; `label` is accepted for `answer`; `type` defaults to classification when `labels` is given, else vqa_closed
  for yes/no answers and vqa_open otherwise. Unknown keys are refused (put extras under
  `meta`). Only questions to answer (`medqwen predict`, `answer_optional`) may leave out
  `answer`: a stand-in keeps the record valid and is never read (`unanswered`).
- A bad line is never skipped: the reader raises `DataError("<file>:<line>: <what>")` with a
  hint (or, in collect mode, lists it and reads on: see readers/base.py). Messages name the
  file, line and field, never the record's text (it may be patient data).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from medqwen_cli.data.textfiles import (  # noqa: F401  (re-exported for the readers)
    data_error,
    iter_json_items,
    iter_jsonl,
    read_text,
)
from medqwen_cli.recipe import TASK_TYPES, TaskType

YES_NO = ("yes", "no")

NATIVE_KEYS = (
    "id",
    "type",
    "task",
    "images",
    "image",
    "question",
    "prompt",
    "answer",
    "label",
    "labels",
    "meta",
)


class Record(BaseModel):
    """One sample. Build records through `make_record` so errors name the file and line."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(..., min_length=1, description="Unique within its dataset.")
    type: TaskType = Field(..., description="Task type: decides the metric and the scoring.")
    images: list[str] = Field(default_factory=list, description="Absolute image paths, in order.")
    question: str = Field(..., min_length=1, description="The prompt shown after the images.")
    answer: str = Field(..., min_length=1, description="The target text.")
    labels: list[str] | None = Field(None, description="Candidate answers; `answer` is one.")
    task: str | None = Field(None, description="Task / dataset name (set by load_records).")
    meta: dict[str, Any] = Field(default_factory=dict, description="Extra fields, kept as is.")
    source: str = Field(..., description="File the record was read from.")
    line: int = Field(..., ge=0, description="1-based line (row, item) in `source`.")

    @field_validator("images")
    @classmethod
    def _absolute(cls, value: list[str]) -> list[str]:
        for path in value:
            if not Path(path).is_absolute():
                raise ValueError("image paths must be absolute (readers resolve them)")
        return value

    @model_validator(mode="after")
    def _answer_in_labels(self) -> Record:
        if self.labels is not None:
            if not self.labels:
                raise ValueError("labels must not be empty")
            if self.answer not in self.labels:
                raise ValueError("answer is not one of labels")
        return self

    @property
    def where(self) -> str:
        """`file:line` for messages."""
        return f"{self.source}:{self.line}"


def is_yes_no(answer: str) -> bool:
    return normalize(answer).rstrip(".") in YES_NO


def normalize(text: str) -> str:
    return " ".join(text.split()).casefold()


def unanswered(kind: Any, labels: list[str] | None) -> str:
    """The stand-in answer of a record given without one (`predict --data`): it only keeps
    the record valid and is never read. It makes a record with `labels` a classification and
    one without `type` an open question (answered by generation); a vqa_closed or pope record
    keeps yes/no as its candidates."""
    if labels:
        return labels[0]
    return "yes" if kind in ("vqa_closed", "pope") else "-"


def infer_type(answer: str, labels: list[str] | None) -> str:
    """Default task type when the data does not say: labels -> classification, yes/no ->
    closed VQA, anything else -> open VQA."""
    if labels:
        return "classification"
    return "vqa_closed" if is_yes_no(answer) else "vqa_open"


def _text(value: Any, where: str, field: str, *, required: bool = True) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise data_error(where, f"field {field!r} is missing or empty", _HINTS.get(field))
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise data_error(
            where, f"field {field!r} must be text, found {type(value).__name__}", _HINTS.get(field)
        )
    return str(value).strip()


_HINTS = {
    "answer": "every record needs a non-empty answer (the training target)",
    "question": "every record needs a question (the prompt)",
    "id": "ids are optional; when given they must be text and unique",
}


def make_record(
    *,
    where_file: str,
    line: int,
    record_id: Any,
    question: Any,
    answer: Any,
    images: list[str],
    task_type: Any = None,
    labels: Any = None,
    task: Any = None,
    meta: Any = None,
    default_type: str | None = None,
    default_id: str | None = None,
    answer_optional: bool = False,
) -> Record:
    """Check the fields one by one (so the error names the field, never its content) and
    build a Record. `images` must already be resolved to absolute paths. `default_type`
    (a dataset's forced task type) wins over `task_type`; `default_id` (else `<stem>-<line>`)
    is used when the data gives no id. With `answer_optional` (questions to answer, nothing
    trained or scored) a record may leave out its answer: see `unanswered`."""
    where = f"{where_file}:{line}"
    if answer is None and answer_optional:
        answer = unanswered(default_type or task_type, _labels(labels, where))
    answer_text = _text(answer, where, "answer")
    question_text = _text(question, where, "question")
    identifier = _text(record_id, where, "id", required=False) or (
        default_id or f"{Path(where_file).stem}-{line}"
    )
    label_set = _labels(labels, where)
    kind = default_type or task_type
    if kind is None:
        kind = infer_type(answer_text, label_set)
    if kind not in TASK_TYPES:
        shown = kind if isinstance(kind, str) and len(kind) < 40 else type(kind).__name__
        close = difflib.get_close_matches(str(shown), TASK_TYPES, n=1)
        raise data_error(
            where,
            f"unknown task type {shown!r}",
            f"did you mean {close[0]!r}?" if close else f"use one of: {', '.join(TASK_TYPES)}",
        )
    if label_set is None and kind in ("vqa_closed", "pope") and is_yes_no(answer_text):
        label_set = list(YES_NO)  # candidates for likelihood scoring
        answer_text = normalize(answer_text).rstrip(".")
    if kind == "pope" and {normalize(label) for label in label_set or ()} != set(YES_NO):
        raise data_error(where, "a pope record's answer must be yes or no")
    if label_set is not None:
        match = [label for label in label_set if normalize(label) == normalize(answer_text)]
        if not match:
            raise data_error(
                where,
                f"answer is not in the label set ({len(label_set)} labels)",
                "the answer of a classification must be one of its `labels`; "
                "fix the answer or add it to the labels",
            )
        answer_text = match[0]  # canonical spelling of the label
    if meta is not None and not isinstance(meta, dict):
        raise data_error(where, f"field 'meta' must be an object, found {type(meta).__name__}")
    try:
        return Record(
            id=identifier,
            type=kind,
            images=images,
            question=question_text,
            answer=answer_text,
            labels=label_set,
            task=_text(task, where, "task", required=False),
            meta=meta or {},
            source=where_file,
            line=line,
        )
    except ValidationError as exc:  # a safety net: never echo the input values
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "record"
        raise data_error(where, f"invalid field {field!r}: {err['msg']}") from None


def _labels(value: Any, where: str) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not value:
        raise data_error(where, "field 'labels' must be a non-empty list of strings")
    out: list[str] = []
    for item in value:
        if (
            isinstance(item, bool)
            or not isinstance(item, str | int | float)
            or not str(item).strip()
        ):
            raise data_error(where, "field 'labels' must be a non-empty list of strings")
        text = str(item).strip()
        if text in out:
            raise data_error(where, "field 'labels' lists a label twice")
        out.append(text)
    return out


def native_record(
    obj: Any,
    *,
    path: Path,
    line: int,
    resolve: Callable[[Any, str], list[str]],
    default_type: str | None = None,
    default_id: str | None = None,
    answer_optional: bool = False,
) -> Record:
    """One native JSONL object -> Record. `resolve(raw_images, where)` checks and resolves
    image paths (see readers); `answer_optional` as in `make_record`."""
    where = f"{path}:{line}"
    if not isinstance(obj, dict):
        raise data_error(where, f"expected a JSON object, found {type(obj).__name__}")
    unknown = [key for key in obj if key not in NATIVE_KEYS]
    if unknown:
        key = str(unknown[0])[:40]
        close = difflib.get_close_matches(key, NATIVE_KEYS, n=1)
        raise data_error(
            where,
            f"unknown field {key!r}",
            f"did you mean {close[0]!r}?"
            if close
            else f'put extra fields under "meta"; known fields: {", ".join(NATIVE_KEYS)}',
        )
    raw_images = obj.get("images", obj.get("image"))
    answer = obj.get("answer", obj.get("label"))
    return make_record(
        where_file=str(path),
        line=line,
        record_id=obj.get("id"),
        task_type=obj.get("type"),
        question=obj.get("question", obj.get("prompt")),
        answer=answer,
        labels=obj.get("labels"),
        task=obj.get("task"),
        meta=obj.get("meta"),
        images=resolve(raw_images, where, "images" if "images" in obj else "image"),
        default_type=default_type,
        default_id=default_id,
        answer_optional=answer_optional,
    )


def record_to_json(record: Record, *, relative_to: Path | None = None) -> dict[str, Any]:
    """A record as a native JSONL object (image paths relative to `relative_to` if given)."""
    images = record.images
    if relative_to is not None:
        images = [Path(p).relative_to(relative_to).as_posix() for p in images]
    out: dict[str, Any] = {
        "id": record.id,
        "type": record.type,
        "images": images,
        "question": record.question,
        "answer": record.answer,
    }
    if record.labels is not None:
        out["labels"] = record.labels
    if record.task is not None:
        out["task"] = record.task
    if record.meta:
        out["meta"] = record.meta
    return out
