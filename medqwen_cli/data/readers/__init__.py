"""One entry point from a `DatasetSpec` to Records: `load_records(spec, split, cache_dir=...)`.

Where the data of a split is found:

- `builtin:NAME`: the built-in task is generated on first use into
  `cache_dir/builtin/<NAME>-<generator version>-<seed>/` (atomically) and read from there.
- a Hugging Face dataset copied as files (a `.parquet` file, a folder of parquet shards or
  `data/` with them, a `save_to_disk` folder: see `hf_layout`): the `hf` reader finds the
  split in it.
- a directory: `<dir>/<split>.{jsonl,json,csv,tsv,npz}` or a `<dir>/<split>/` folder of DICOM
  files (split `eval` also finds test / val files, see `SPLIT_ALIASES`); else the single data
  file in the directory; else, if it holds DICOM files, the directory itself.
- a file: that file. A file that has no split information serves the dataset's training
  split (`spec.split`) only; MedMNIST `.npz` and VQA-RAD JSON select the split inside.

Formats (`spec.format`, `auto` detects): `jsonl` (native records; a line may also be a
`messages` or `conversations` object), `llava`, `messages`,
`vqa_rad`, `slake`, `pathvqa`, `medmnist`, `csv`, `dicom`, `hf`. Detection: `.parquet`, parquet
shards and save_to_disk folders -> hf, `.npz` -> medmnist,
`.csv`/`.tsv` -> csv, DICOM files or folders -> dicom, JSON / JSONL by the keys of the first
item (`conversations` -> llava, `messages` -> messages, VQA benchmark keys -> that benchmark
unless the item has a key only native records have (`type`, `labels`, `task`, `meta`, ...),
otherwise native jsonl).

After reading: an empty split is an error; ids must be unique; classification records without
`labels` get the dataset's set of answers as their label set; records get `task` = the
dataset's display name unless they carry one; `spec.max_samples` keeps the first N records.
Warnings (large images, guessed class names) come back in `DatasetLoad.warnings` and are logged
by `load_records`, each distinct message once per process (a dataset read again by the next
step of a run, or by every evaluation, does not repeat it); the large-image warning once per
dataset, whichever split came first, and never for built-in data (drawn at one size for every
preset: a small preset's `max_image_pixels` downscales them by design).

`read_dataset(..., collect=True)` is the checking mode of `medqwen validate`: instead of raising
at the first problem it reads on and returns every `DataError` in `DatasetLoad.problems` (each
bad record, malformed line and duplicate id, or the one error that stops the whole file: a
missing path, no file for the split, an unreadable file), with the good records.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from medqwen_cli.data.dicom import is_dicom_file
from medqwen_cli.data.images import DOWNSCALED
from medqwen_cli.data.readers.base import ReadContext, split_aliases
from medqwen_cli.data.readers.conversations import chat_item
from medqwen_cli.data.readers.csv_reports import read_csv
from medqwen_cli.data.readers.dicom_folder import read_dicom_folder
from medqwen_cli.data.readers.hf import read_hf
from medqwen_cli.data.readers.hf_layout import is_hf_dataset
from medqwen_cli.data.readers.medmnist import read_medmnist
from medqwen_cli.data.readers.vqa import detect_vqa_layout, read_vqa
from medqwen_cli.data.records import (
    NATIVE_KEYS,
    Record,
    data_error,
    iter_json_items,
    iter_jsonl,
    native_record,
    normalize,
)
from medqwen_cli.errors import DataError
from medqwen_cli.recipe import BUILTIN_TASKS, DatasetSpec

logger = logging.getLogger(__name__)
# keys of native records that no VQA benchmark layout has: an item with one is a native record
# (read as PathVQA its labels, type, task and meta would be dropped)
NATIVE_ONLY_KEYS = frozenset(NATIVE_KEYS) - {"id", "image", "question", "answer"}
_LOGGED: set[str] = set()  # warnings already logged by this process (see load_records)

DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".npz")
NOT_DATA = ("dataset.json",)  # the manifest of a built-in dataset

__all__ = ["DatasetLoad", "detect_format", "load_records", "read_dataset", "locate_split"]


@dataclass
class DatasetLoad:
    """Records of one split of one dataset, with where they came from and warnings."""

    records: list[Record]
    path: Path
    format: str
    warnings: list[str] = field(default_factory=list)
    problems: list[DataError] = field(default_factory=list)  # collect mode only


def load_records(spec: DatasetSpec, split: str, **options: Any) -> list[Record]:
    """Records of `split` of the dataset `spec`; warnings go to the logger.

    Takes the keyword arguments of `read_dataset` (cache_dir, max_image_pixels, builtin_seed, ...).
    """
    loaded = read_dataset(spec, split, **options)
    for warning in loaded.warnings:
        key = warning
        if warning.endswith(DOWNSCALED):  # large images: once per dataset, none for built-in
            if spec.path.startswith("builtin:"):
                continue
            key = f"{spec.path}: {DOWNSCALED}"
        if key not in _LOGGED:
            _LOGGED.add(key)
            logger.warning(warning)
    return loaded.records


def read_dataset(
    spec: DatasetSpec,
    split: str,
    *,
    cache_dir: Path,
    max_image_pixels: int | None = None,
    builtin_seed: int = 0,
    builtin_size: int | None = None,
    dicom_frames: Literal["middle", "all"] = "middle",
    dicom_window: tuple[float, float] | None = None,
    collect: bool = False,
    answer_optional: bool = False,
) -> DatasetLoad:
    """Like `load_records`, returning the warnings as data (see the module docstring);
    `collect=True` returns every problem in `.problems` instead of raising the first;
    `answer_optional=True` lets native JSONL/JSON records leave out the answer (questions to
    answer: `medqwen predict`), the other formats still need one."""
    cache_dir = Path(cache_dir)
    problems: list[DataError] | None = [] if collect else None
    path, fmt, records = Path(spec.path), spec.format, []
    ctx = ReadContext(
        split=split,
        train_split=spec.split,
        split_in_path=False,
        cache_dir=cache_dir,
        default_type=spec.task_type,
        max_image_pixels=max_image_pixels,
        dicom_frames=dicom_frames,
        dicom_window=dicom_window,
        problems=problems,
        answer_optional=answer_optional,
    )
    with ctx.each():  # in collect mode, an error that stops the whole file is one problem
        root = _dataset_root(spec, cache_dir, builtin_seed, builtin_size)
        path, ctx.split_in_path = locate_split(root, split, spec.format)
        fmt = detect_format(path) if spec.format == "auto" else spec.format
        records = _read(path, fmt, ctx)
        if not records and not problems:
            raise DataError(
                f"{path}: dataset has no records for split {split!r}",
                "add records (one JSON object per line for .jsonl), or check the split name",
            )
    records = _finish(records, spec, problems)
    return DatasetLoad(
        records=records,
        path=path,
        format=fmt,
        warnings=ctx.all_warnings(),
        problems=problems or [],
    )


# --------------------------------------------------------------------------- locating


def _dataset_root(spec: DatasetSpec, cache_dir: Path, seed: int, size: int | None) -> Path:
    if spec.path.startswith("builtin:"):
        name = spec.path.split(":", 1)[1]
        if name not in BUILTIN_TASKS:
            raise DataError(
                f"unknown built-in task {name!r}",
                f"built-in tasks: {', '.join('builtin:' + n for n in BUILTIN_TASKS)}",
            )
        from medqwen_cli.data.synthetic import ensure_builtin

        return ensure_builtin(name, cache_dir, seed=seed, size=size)
    path = Path(spec.path).expanduser()
    if not path.exists():
        raise DataError(
            f"dataset path not found: {path}",
            "relative dataset paths are relative to the recipe file; check the spelling",
        )
    return path


def locate_split(root: Path, split: str, fmt: str = "auto") -> tuple[Path, bool]:
    """(file or DICOM folder holding `split`, whether it was chosen by its split name)."""
    if root.is_file():
        return root, False
    if fmt == "hf" or (fmt == "auto" and is_hf_dataset(root)):
        return root, False  # the hf reader finds the split's files itself
    for name in split_aliases(split):
        for suffix in DATA_SUFFIXES:
            candidate = root / f"{name}{suffix}"
            if candidate.is_file() and candidate.name not in NOT_DATA:
                return candidate, True
        folder = root / name
        if folder.is_dir() and (fmt == "dicom" or any(_dicom_files_quick(folder))):
            return folder, True
    data_files = sorted(
        p
        for p in root.iterdir()
        if p.is_file() and p.suffix in DATA_SUFFIXES and p.name not in NOT_DATA
    )
    if len(data_files) == 1:
        return data_files[0], False
    if len(data_files) > 1:
        raise DataError(
            f"{root}: no file for split {split!r} and {len(data_files)} data files "
            f"({', '.join(p.name for p in data_files[:5])})",
            f"name the files by split ({split}.jsonl, train.jsonl, ...) or point the dataset "
            "path at one file",
        )
    if fmt == "dicom" or any(_dicom_files_quick(root)):
        return root, False
    raise DataError(
        f"{root}: no data for split {split!r} (looked for {split}.jsonl/.json/.csv/.npz, "
        "a single data file, DICOM files)",
        "put the records in <dir>/<split>.jsonl, e.g. train.jsonl and eval.jsonl",
    )


def _dicom_files_quick(folder: Path):  # generator: stop at the first hit
    return (p for p in folder.rglob("*") if p.is_file() and is_dicom_file(p))


def detect_format(path: Path) -> str:
    """Guess the reader of a file or folder from its name and first item."""
    if is_hf_dataset(path):
        return "hf"
    if path.is_dir():
        return "dicom"
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return "medmnist"
    if suffix in (".csv", ".tsv"):
        return "csv"
    if is_dicom_file(path):
        return "dicom"
    if suffix not in (".jsonl", ".json"):
        raise DataError(
            f"{path}: cannot tell the dataset format from the name",
            "use .jsonl/.json/.csv/.npz/.parquet, DICOM files, or set `format:` in the recipe",
        )
    skipped: list[DataError] = []  # a bad first line is reported by the reader, not here
    items = iter_jsonl(path, skipped) if suffix == ".jsonl" else iter_json_items(path, skipped)
    first = next(items, None)
    if first is None:
        raise DataError(f"{path}: dataset has no records", "the file is empty")
    item = first[1]
    if isinstance(item, dict):
        if "conversations" in item:
            return "llava"
        if "messages" in item:
            return "messages"
        layout = detect_vqa_layout(item)
        if layout is not None and not NATIVE_ONLY_KEYS & item.keys():
            return layout
    return "jsonl"


# --------------------------------------------------------------------------- reading


def _read(path: Path, fmt: str, ctx: ReadContext) -> list[Record]:
    if fmt == "hf":
        return read_hf(path, ctx)
    if fmt == "dicom" or path.is_dir():
        if fmt not in ("dicom", "auto"):
            raise DataError(f"{path}: format {fmt!r} needs a file, found a directory")
        return read_dicom_folder(path, ctx)
    if fmt == "medmnist":
        return read_medmnist(path, ctx)
    if fmt == "csv":
        return read_csv(path, ctx)
    if fmt in ("vqa_rad", "slake", "pathvqa"):
        return read_vqa(path, fmt, ctx)
    ctx.require_whole_file_split(path)
    reader = iter_jsonl if path.suffix.lower() == ".jsonl" else iter_json_items
    items = reader(path, ctx.problems)
    resolve = ctx.resolver(path.parent)
    records: list[Record] = []
    for number, (line, obj) in enumerate(items, start=1):
        kwargs = dict(
            path=path,
            line=line,
            resolve=resolve,
            default_type=ctx.default_type,
            default_id=f"{path.stem}-{number}",
        )
        # native JSONL may mix in chat-style lines ("messages" or question/answer, docs/data.md)
        chat = isinstance(obj, dict) and fmt == "jsonl"
        with ctx.each():
            if fmt == "llava" or (chat and "conversations" in obj):
                records.extend(chat_item(obj, layout="llava", **kwargs))
            elif fmt == "messages" or (chat and "messages" in obj):
                records.extend(chat_item(obj, layout="messages", **kwargs))
            else:
                records.append(native_record(obj, answer_optional=ctx.answer_optional, **kwargs))
    return records


def _finish(
    records: list[Record], spec: DatasetSpec, problems: list[DataError] | None = None
) -> list[Record]:
    seen: dict[str, Record] = {}
    for record in records:
        first = seen.setdefault(record.id, record)
        if first is not record:
            error = data_error(
                record.where,
                f"duplicate id (first used at line {first.line})",
                "ids must be unique within a dataset; leave `id` out to number records by line",
            )
            if problems is None:
                raise error
            problems.append(error)
    records = list(seen.values())  # collect mode: a duplicate is left out like any bad record
    unlabelled = [r for r in records if r.type == "classification" and r.labels is None]
    if unlabelled:
        label_set = sorted({normalize(r.answer): r.answer for r in unlabelled}.values())
        canonical = {normalize(label): label for label in label_set}
        index = {id(r) for r in unlabelled}
        records = [
            r.model_copy(update={"labels": label_set, "answer": canonical[normalize(r.answer)]})
            if id(r) in index
            else r
            for r in records
        ]
    name = spec.display_name
    records = [r if r.task else r.model_copy(update={"task": name}) for r in records]
    if spec.max_samples is not None:
        records = records[: spec.max_samples]
    return records
