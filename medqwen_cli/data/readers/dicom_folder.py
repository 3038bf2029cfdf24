"""A folder of DICOM files -> questions the headers answer.

Every DICOM file under the folder (recursively, sorted; `.dcm`/`.dicom` or the DICM magic) is
converted (see `medqwen_cli.data.dicom`: modality LUT, VOI window from the header or given,
MONOCHROME1 inverted, 8-bit) to PNG under `cache_dir/dicom/<fingerprint>/`, and gives:

- a classification record "What imaging modality is this?" over `MODALITY_LABELS`, answer
  from Modality (0008,0060);
- when Body Part Examined (0018,0015) is set, an open question "Which body part is shown?".

Multi-frame files give their middle frame, or with `frames="all"` one record per frame
(`line` = frame number; single-frame files use line 1). The same functions build the built-in
`dicom` task from pydicom's test files.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Literal

from medqwen_cli.data.dicom import (
    MODALITY_NAMES,
    dicom_to_images,
    header_info,
    is_dicom_file,
    read_dicom,
)
from medqwen_cli.data.images import write_png_atomic
from medqwen_cli.data.readers.base import ReadContext
from medqwen_cli.data.records import Record, data_error, make_record

MODALITY_LABELS = sorted(set(MODALITY_NAMES.values()))
MODALITY_QUESTION = "What imaging modality is this?"
BODY_PART_QUESTION = "Which body part is shown?"


def dicom_files(folder: Path) -> list[Path]:
    """DICOM files under `folder`, sorted; a symlink leaving the folder is refused."""
    root = folder.resolve()
    files = []
    for path in sorted(folder.rglob("*")):
        if path.name.startswith(".") or not path.is_file() or not is_dicom_file(path):
            continue
        if not path.resolve().is_relative_to(root):
            raise data_error(
                str(path),
                f"symlink leaves the dataset directory {root}; refused",
                "copy the file into the folder instead of linking to it",
            )
        files.append(path)
    return files


def read_dicom_folder(folder: Path, ctx: ReadContext) -> list[Record]:
    ctx.require_whole_file_split(folder)
    files = [folder] if folder.is_file() else dicom_files(folder)
    if not files:
        raise data_error(
            str(folder), "no DICOM files found", "DICOM files end in .dcm or start with DICM"
        )
    records = []
    for path in files:
        with ctx.each():  # collect mode: list a bad file, read on
            pngs, info = convert_dicom(
                path, ctx.cache_dir / "dicom", frames=ctx.dicom_frames, window=ctx.dicom_window
            )
            records.extend(
                dicom_records(
                    path, pngs, info, default_type=ctx.default_type, id_prefix=_rel_id(path, folder)
                )
            )
    return records


def convert_dicom(
    path: Path,
    out_dir: Path,
    *,
    frames: Literal["middle", "all"] = "middle",
    window: tuple[float, float] | None = None,
    size: int | None = None,
    name: str | None = None,
) -> tuple[list[tuple[int, Path]], dict[str, Any]]:
    """Convert one DICOM file to PNG(s) in `out_dir` (once; keyed by path, size, mtime and
    options). Returns ([(line, png path)], header info). `size` fits the longest side."""
    ds = read_dicom(path)
    info = header_info(ds)
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{frames}|{window}|{size}"
    stem = name or f"{path.stem}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
    if n_frames == 1:
        lines = [1]
    elif frames == "middle":
        lines = [n_frames // 2 + 1]
    else:
        lines = list(range(1, n_frames + 1))
    targets = [(line, out_dir / f"{stem}-f{line:04d}.png") for line in lines]
    if not all(target.exists() for _, target in targets):
        images = dicom_to_images(path, window=window, frames=frames, dataset=ds)
        for (_, target), image in zip(targets, images, strict=True):
            if size is not None and max(image.size) > size:
                image = image.copy()
                image.thumbnail((size, size))
            write_png_atomic(image, target)
    return targets, info


def dicom_records(
    path: Path,
    pngs: list[tuple[int, Path]],
    info: dict[str, Any],
    *,
    default_type: str | None,
    id_prefix: str,
    source: str | None = None,
) -> list[Record]:
    source = source or str(path)
    if not info["modality_name"]:
        raise data_error(
            source, "DICOM header has no Modality (0008,0060)", "set the Modality tag of the file"
        )
    records = []
    for line, png in pngs:
        suffix = f"-f{line}" if len(pngs) > 1 else ""
        meta = {k: v for k, v in info.items() if v is not None}
        records.append(
            make_record(
                where_file=source,
                line=line,
                record_id=f"{id_prefix}{suffix}-modality",
                task_type="classification",
                question=MODALITY_QUESTION,
                answer=info["modality_name"],
                labels=MODALITY_LABELS,
                images=[str(png)],
                meta=meta,
                default_type=default_type,
            )
        )
        if info["body_part"]:
            records.append(
                make_record(
                    where_file=source,
                    line=line,
                    record_id=f"{id_prefix}{suffix}-bodypart",
                    task_type="vqa_open",
                    question=BODY_PART_QUESTION,
                    answer=info["body_part"],
                    images=[str(png)],
                    meta=meta,
                    default_type=default_type,
                )
            )
    return records


def _rel_id(path: Path, folder: Path) -> str:
    if folder.is_file():
        return path.stem
    return path.relative_to(folder).with_suffix("").as_posix()
