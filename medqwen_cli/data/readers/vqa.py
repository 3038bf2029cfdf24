"""Medical VQA benchmarks in their released JSON layouts.

- VQA-RAD (`VQA_RAD Dataset Public.json`): items with `image_name`, `question`, `answer`,
  `answer_type` (CLOSED/OPEN), `qid`, `phrase_type`; one file for both splits: `test_*`
  phrase types are the test split (read for split test/eval), the others train. Images in
  `VQA_RAD Image Folder/` (or `images/`) next to the file.
- SLAKE (`train.json` / `validate.json` / `test.json`): items with `img_name`
  (`xmlab102/source.jpg`), `question`, `answer`, `answer_type`, `qid`, `q_lang`; images under
  `imgs/`. Both languages are kept (`meta.lang` tells them apart).
- PathVQA (JSON conversions of the release): items with `image` (or `image_name`, `img_id`;
  the extension may be missing), `question`, `answer`, optional `answer_type`; images in
  `images/`, `images/<split>/` or `<split>/`.

Type: CLOSED answer types and yes/no answers are vqa_closed (yes/no ones get the candidate
set ["yes", "no"]), the rest vqa_open, unless the dataset forces a type.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medqwen_cli.data.readers.base import ReadContext, split_aliases
from medqwen_cli.data.records import Record, data_error, is_yes_no, iter_json_items, make_record

IMAGE_KEYS = ("image", "image_name", "img_name", "img_id", "image_id", "img")
ID_KEYS = ("qid", "id", "question_id")


def detect_vqa_layout(item: dict[str, Any]) -> str | None:
    """Which VQA layout an item looks like (None: not a VQA item)."""
    if "question" not in item or "answer" not in item:
        return None
    if "image_name" in item and ("phrase_type" in item or "image_organ" in item):
        return "vqa_rad"
    if "img_name" in item and ("q_lang" in item or "img_id" in item):
        return "slake"
    if any(key in item for key in IMAGE_KEYS):
        return "pathvqa"
    return None


def read_vqa(path: Path, fmt: str, ctx: ReadContext) -> list[Record]:
    items = list(iter_json_items(path))
    split_field = fmt == "vqa_rad" and any(
        isinstance(item, dict) and "phrase_type" in item for _, item in items
    )
    if not split_field:
        ctx.require_whole_file_split(path)
    wanted = _vqa_rad_split(ctx.split) if split_field else None
    search = {
        "vqa_rad": ("", "VQA_RAD Image Folder", "images", "imgs"),
        "slake": ("imgs", "", "images"),
        "pathvqa": (
            "",
            "images",
            *(f"images/{a}" for a in split_aliases(ctx.split)),
            *split_aliases(ctx.split),
            "imgs",
        ),
    }[fmt]
    resolve = ctx.resolver(path.parent, search_dirs=search, extensions=(".jpg", ".png", ".jpeg"))
    records = []
    for number, (line, item) in enumerate(items, start=1):
        with ctx.each():  # collect mode: list a bad item, read on
            where = f"{path}:{line}"
            if not isinstance(item, dict):
                raise data_error(where, f"expected a JSON object, found {type(item).__name__}")
            if split_field:
                phrase = str(item.get("phrase_type") or "")
                if ("test" if phrase.startswith("test") else "train") != wanted:
                    continue  # the other split of the same file, not a skipped record
            image_key = next((key for key in IMAGE_KEYS if key in item), None)
            if image_key is None:
                raise data_error(where, "missing image field (image, image_name or img_name)")
            raw_image = item[image_key]
            if isinstance(raw_image, int | float) and not isinstance(raw_image, bool):
                raw_image = str(raw_image)
            images = resolve(raw_image, where, image_key)
            answer = item.get("answer")
            kind = None
            if answer is not None and str(answer).strip():
                closed = str(item.get("answer_type") or "").strip().upper() == "CLOSED"
                kind = "vqa_closed" if closed or is_yes_no(str(answer)) else "vqa_open"
            meta = {}
            for key, name in (
                ("q_lang", "lang"),
                ("modality", "modality"),
                ("image_organ", "organ"),
            ):
                if isinstance(item.get(key), str):
                    meta[name] = item[key]
            record_id = next((item[key] for key in ID_KEYS if item.get(key) is not None), None)
            records.append(
                make_record(
                    where_file=str(path),
                    line=line,
                    record_id=f"{fmt}-{record_id}" if record_id is not None else None,
                    task_type=kind,
                    question=item.get("question"),
                    answer=answer,
                    images=images,
                    meta=meta,
                    default_type=ctx.default_type,
                    default_id=f"{fmt}-{path.stem}-{number}",
                )
            )
    return records


def _vqa_rad_split(split: str) -> str:
    aliases = split_aliases(split)
    if "test" in aliases:
        return "test"
    if "train" in aliases:
        return "train"
    return split  # matches nothing: the caller reports an empty split
