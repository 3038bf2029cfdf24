"""Hugging Face datasets copied as files (the Hub's parquet conversions of VQA-RAD, PathVQA,
SLAKE, MedMNIST; `save_to_disk` folders) -> records. Which files hold a split: `hf_layout`.

Columns, first found (as the VQA JSON readers name their fields):

- image: `image`, `images`, `image_name`, `img_name`, `img_id`, `image_id`, `img`. A cell is
  an image struct `{bytes, path}` (the `Image` feature), raw bytes, a path, or a list of those.
  Embedded bytes are opened and checked in memory, then kept once under
  `cache_dir/hf-images/<sha256 of the bytes><.png|.jpg|...>` (written atomically; the same
  image in many rows, or in a later run, is one file). A path (bytes absent) is resolved like
  the JSON readers' paths: relative to the dataset folder, or its `images/` or `imgs/`.
- question: `question`, `prompt`; answer: `answer`, `label`; id: `qid`, `id`, `question_id`
  (default `<split>-<n>`, n counting rows over the split's files); optional `answer_type`
  (CLOSED makes a closed question) and `q_lang` / `modality` / `image_organ` (kept in meta).
- An answer column of the `ClassLabel` feature (MedMNIST) makes classification records over
  its class names; the question column is then optional ("Which class does this image
  show? Options: ...").

Type: CLOSED answer types and yes/no answers are vqa_closed (yes/no ones get the candidates
["yes", "no"]), the rest vqa_open, unless the dataset forces a type. Every file's columns
are checked before any row is read: a missing column is one error naming the columns found.
A bad row is `<file>:<row>` (1-based row of that parquet or Arrow file). The dataset folder
is only read, never written.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from medqwen_cli._io import atomic_write_bytes
from medqwen_cli.data.images import ImageResolver
from medqwen_cli.data.readers.base import ReadContext
from medqwen_cli.data.readers.hf_layout import hf_split_files
from medqwen_cli.data.readers.vqa import ID_KEYS, IMAGE_KEYS
from medqwen_cli.data.records import Record, data_error, is_yes_no, make_record

IMAGE_COLUMNS = ("image", "images", *IMAGE_KEYS[1:])
QUESTION_COLUMNS = ("question", "prompt")
ANSWER_COLUMNS = ("answer", "label")
META_COLUMNS = {"q_lang": "lang", "modality": "modality", "image_organ": "organ"}
EXTENSIONS = {"PNG": ".png", "JPEG": ".jpg", "TIFF": ".tif", "BMP": ".bmp", "GIF": ".gif"}
BATCH_ROWS = 64  # rows decoded at a time: embedded images make rows large


@dataclass
class _Columns:
    """The columns of one file that the reader uses (None: absent)."""

    image: str
    answer: str
    question: str | None
    id: str | None
    answer_type: str | None
    meta: dict[str, str] = field(default_factory=dict)
    class_names: list[str] | None = None  # the answer column is a ClassLabel

    def names(self) -> list[str]:
        found = (self.image, self.answer, self.question, self.id, self.answer_type)
        return [c for c in found if c] + list(self.meta)


def read_hf(path: Path, ctx: ReadContext) -> list[Record]:
    split = hf_split_files(path, ctx)
    columns = [_columns(file, _schema(file, split.arrow)) for file in split.files]
    images = _Images(path if path.is_dir() else path.parent, ctx)
    records: list[Record] = []
    number = 0
    for file, cols in zip(split.files, columns, strict=True):
        for line, row in enumerate(_rows(file, split.arrow, cols.names()), start=1):
            number += 1
            with ctx.each():  # collect mode: list a bad row, read on
                default_id = f"{split.name}-{number}"
                records.append(_record(row, cols, file, line, images, ctx, default_id))
    return records


def _record(
    row: dict[str, Any],
    cols: _Columns,
    file: Path,
    line: int,
    images: _Images,
    ctx: ReadContext,
    default_id: str,
) -> Record:
    """One row as a record; `default_id` when the data has no id column."""
    where = f"{file}:{line}"
    paths = images(row[cols.image], where, cols.image)
    question = row[cols.question] if cols.question else None
    answer, labels, kind = row[cols.answer], None, None
    if cols.class_names is not None:
        names = cols.class_names
        if not isinstance(answer, int) or not 0 <= answer < len(names):
            raise data_error(
                where,
                f"column {cols.answer!r} holds a class outside the {len(names)} class names",
                "every row needs a label from the ClassLabel's names",
            )
        answer, labels, kind = names[answer], names, "classification"
        question = question or f"Which class does this image show? Options: {', '.join(names)}."
    elif answer is not None and str(answer).strip():
        answer_type = row[cols.answer_type] if cols.answer_type else None
        closed = str(answer_type or "").strip().upper() == "CLOSED"
        kind = "vqa_closed" if closed or is_yes_no(str(answer)) else "vqa_open"
    meta = {name: row[col] for col, name in cols.meta.items() if isinstance(row[col], str)}
    return make_record(
        where_file=str(file),
        line=line,
        record_id=row[cols.id] if cols.id else None,
        task_type=kind,
        question=question,
        answer=answer,
        labels=labels,
        images=paths,
        meta=meta,
        default_type=ctx.default_type,
        default_id=default_id,
    )


# --------------------------------------------------------------------------- files


def _schema(file: Path, arrow: bool) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if arrow:
            with pa.memory_map(str(file)) as source:
                return pa.ipc.open_stream(source).schema
        return pq.read_schema(file)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise _unreadable(file, arrow, exc) from None


def _rows(file: Path, arrow: bool, columns: list[str]) -> Iterator[dict[str, Any]]:
    """The rows of `file`, a batch at a time, holding only `columns`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if arrow:
            with pa.memory_map(str(file)) as source:
                for batch in pa.ipc.open_stream(source):
                    yield from batch.select(columns).to_pylist()
        else:
            parquet = pq.ParquetFile(file)
            for batch in parquet.iter_batches(batch_size=BATCH_ROWS, columns=columns):
                yield from batch.to_pylist()
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise _unreadable(file, arrow, exc) from None


def _unreadable(file: Path, arrow: bool, exc: Exception) -> Exception:
    kind = "Arrow (save_to_disk)" if arrow else "parquet"
    return data_error(
        str(file),
        f"not a readable {kind} file ({type(exc).__name__})",
        "copy the file again; an interrupted copy leaves a truncated file",
    )


def _columns(file: Path, schema: Any) -> _Columns:
    names = list(schema.names)
    image, question, answer = (
        next((c for c in choices if c in names), None)
        for choices in (IMAGE_COLUMNS, QUESTION_COLUMNS, ANSWER_COLUMNS)
    )
    class_names = _class_names(schema, answer) if answer else None
    missing = [
        f"{what} column ({', '.join(choices)})"
        for what, choices, found in (
            ("an image", IMAGE_COLUMNS, image),
            ("a question", QUESTION_COLUMNS, question or class_names),
            ("an answer", ANSWER_COLUMNS, answer),
        )
        if not found
    ]
    if missing or image is None or answer is None:
        raise data_error(
            str(file),
            f"needs {' and '.join(missing)}; columns found: {', '.join(names) or 'none'}",
            "rename the columns (datasets' rename_column) or convert the data to JSONL",
        )
    return _Columns(
        image=image,
        answer=answer,
        question=question,
        id=next((c for c in ID_KEYS if c in names), None),
        answer_type="answer_type" if "answer_type" in names else None,
        meta={col: name for col, name in META_COLUMNS.items() if col in names},
        class_names=class_names,
    )


def _class_names(schema: Any, column: str) -> list[str] | None:
    """The names of a ClassLabel column, from the features `datasets` stores in the schema."""
    try:
        info = json.loads((schema.metadata or {}).get(b"huggingface", b"{}"))
        feature = info.get("info", {}).get("features", {}).get(column, {})
    except (ValueError, AttributeError):
        return None  # no features, or not ones this reader knows: a plain answer column
    if isinstance(feature, dict) and feature.get("_type") == "ClassLabel":
        names = feature.get("names")
        if isinstance(names, list) and names and all(isinstance(n, str) for n in names):
            return names
    return None


# --------------------------------------------------------------------------- images


class _Images:
    """Image cells -> absolute paths (see the module docstring)."""

    def __init__(self, root: Path, ctx: ReadContext) -> None:
        search = ("", "images", "imgs")
        extensions = (".jpg", ".png", ".jpeg")
        self.resolve: ImageResolver = ctx.resolver(root, search_dirs=search, extensions=extensions)
        self.out = Path(ctx.cache_dir) / "hf-images"
        self.kept: dict[str, str] = {}  # sha256 of the bytes -> file in the cache

    def __call__(self, cell: Any, where: str, column: str) -> list[str]:
        items = cell if isinstance(cell, list) else [cell]
        if not items:
            raise data_error(where, f"column {column!r} holds no image")
        return [self._one(item, where, column) for item in items]

    def _one(self, item: Any, where: str, column: str) -> str:
        data, ref = None, None
        if isinstance(item, dict):
            data, ref = item.get("bytes"), item.get("path")
        elif isinstance(item, bytes):
            data = item
        elif isinstance(item, str | int) and not isinstance(item, bool):
            ref = str(item)
        if isinstance(data, bytes) and data:
            return self._embedded(data, where, column)
        if isinstance(ref, str) and ref.strip():
            return self.resolve.resolve_one(ref.strip(), where, column)
        raise data_error(
            where,
            f"column {column!r} holds no image (found {type(item).__name__} without bytes or path)",
            "an image cell holds {bytes, path}, image bytes, or a path relative to the dataset",
        )

    def _embedded(self, data: bytes, where: str, column: str) -> str:
        digest = hashlib.sha256(data).hexdigest()[:32]
        kept = self.kept.get(digest)
        if kept is None:
            target = self.out / f"{digest}{_image_suffix(data, where, column)}"
            if not target.is_file():
                atomic_write_bytes(target, data)
            kept = self.kept[digest] = str(target)
        return self.resolve.resolve_one(kept, where, column)  # size warnings, once per image


def _image_suffix(data: bytes, where: str, column: str) -> str:
    """Open and check image bytes in memory (header and structure, as `ImageResolver` checks a
    file); their file suffix."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            kind = image.format or "img"
            image.verify()
    except Image.DecompressionBombError:
        raise data_error(
            where,
            f"image in column {column!r} is too large to decode safely",
            "downscale it before training (e.g. to at most 2048 px per side)",
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise data_error(
            where,
            f"image in column {column!r} is unreadable or corrupt ({type(exc).__name__})",
            "re-export the image as PNG or JPEG bytes; check that the file was copied whole",
        ) from None
    return EXTENSIONS.get(kind, f".{kind.lower()}")
