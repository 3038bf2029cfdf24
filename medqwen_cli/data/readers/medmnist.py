"""MedMNIST `.npz` files -> classification records.

Layout (MedMNIST v2/v3): arrays `<split>_images` (N, H, W) or (N, H, W, 3) uint8 and
`<split>_labels` (N, 1) or (N,) integer classes, for split in train / val / test (split
`eval` reads `test`, see `split_aliases`). Multi-label files (labels (N, C) of 0/1, e.g.
ChestMNIST) become open questions whose answer lists the present findings ("no finding" when
none).

Class names, first found: an array `label_names` / `class_names` in the file; a sidecar JSON
`<stem>.json` or `labels.json` / `info.json` (MedMNIST's INFO layout `{"label": {"0": name}}`,
or a list, or a mapping); the names of the well-known MedMNIST files (by file name); else
`class 0`, `class 1`, ... with a warning.

Images are written once as PNG under `cache_dir/medmnist/<stem>-<fingerprint>/<split>/`
(built in a temporary directory and renamed into place), record `line` = index + 1.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from medqwen_cli._io import build_dir_atomic
from medqwen_cli.data.readers.base import ReadContext, split_aliases
from medqwen_cli.data.records import Record, data_error, make_record

# Label names of the MedMNIST v2 collections whose classes are plain words (from medmnist INFO).
KNOWN_LABELS: dict[str, list[str]] = {
    "pathmnist": [
        "adipose",
        "background",
        "debris",
        "lymphocytes",
        "mucus",
        "smooth muscle",
        "normal colon mucosa",
        "cancer-associated stroma",
        "colorectal adenocarcinoma epithelium",
    ],
    "chestmnist": [
        "atelectasis",
        "cardiomegaly",
        "effusion",
        "infiltration",
        "mass",
        "nodule",
        "pneumonia",
        "pneumothorax",
        "consolidation",
        "edema",
        "emphysema",
        "fibrosis",
        "pleural",
        "hernia",
    ],
    "octmnist": ["choroidal neovascularization", "diabetic macular edema", "drusen", "normal"],
    "pneumoniamnist": ["normal", "pneumonia"],
    "breastmnist": ["malignant", "normal, benign"],
}


def read_medmnist(path: Path, ctx: ReadContext) -> list[Record]:
    arrays = _open(path)
    alias = next((a for a in split_aliases(ctx.split) if f"{a}_images" in arrays.files), None)
    if alias is None:
        present = sorted(k[: -len("_images")] for k in arrays.files if k.endswith("_images"))
        raise data_error(
            str(path),
            f"no split {ctx.split!r} in the file (splits: {', '.join(present) or 'none'})",
            "MedMNIST files hold arrays <split>_images and <split>_labels",
        )
    images = _array(arrays, f"{alias}_images", path)
    labels = _array(arrays, f"{alias}_labels", path)
    if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] not in (1, 3)):
        raise data_error(
            str(path), f"{alias}_images has shape {images.shape}; expected (N, H, W[, 3])"
        )
    if labels.ndim == 1:
        labels = labels[:, None]
    if labels.ndim != 2 or labels.shape[0] != images.shape[0]:
        raise data_error(
            str(path),
            f"{alias}_labels has shape {labels.shape} for {images.shape[0]} images",
            "labels need one row per image",
        )
    multi_label = labels.shape[1] > 1
    names = _class_names(path, arrays, labels, multi_label, ctx)
    out_dir = _write_pngs(path, alias, images, ctx.cache_dir)
    records = []
    stem = path.stem
    for i in range(images.shape[0]):
        with ctx.each():  # collect mode: list a bad row, read on
            line = i + 1
            image = str(out_dir / f"{i:06d}.png")
            if multi_label:
                present = [names[c] for c in np.flatnonzero(labels[i] > 0)]
                records.append(
                    make_record(
                        where_file=str(path),
                        line=line,
                        record_id=f"{stem}-{alias}-{i}",
                        task_type="vqa_open",
                        question="Which findings does this image show?",
                        answer=", ".join(present) or "no finding",
                        images=[image],
                        default_type=ctx.default_type,
                    )
                )
                continue
            cls = int(labels[i, 0])
            if not 0 <= cls < len(names):
                raise data_error(
                    f"{path}:{line}",
                    f"{alias}_labels holds class {cls} outside the {len(names)} class names",
                    "give one class name per label value",
                )
            records.append(
                make_record(
                    where_file=str(path),
                    line=line,
                    record_id=f"{stem}-{alias}-{i}",
                    task_type="classification",
                    question="Which class does this image show? Options: " + ", ".join(names) + ".",
                    answer=names[cls],
                    labels=names,
                    images=[image],
                    default_type=ctx.default_type,
                )
            )
    return records


def _open(path: Path) -> Any:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise data_error(
            str(path),
            f"not a readable .npz file ({type(exc).__name__})",
            "MedMNIST files are numpy .npz archives; re-download or re-save it",
        ) from None


def _array(arrays: Any, key: str, path: Path) -> np.ndarray:
    if key not in arrays.files:
        raise data_error(str(path), f"missing array {key!r}", "MedMNIST files hold <split>_labels")
    try:
        return np.asarray(arrays[key])
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise data_error(str(path), f"array {key!r} is unreadable ({type(exc).__name__})") from None


def _class_names(
    path: Path, arrays: Any, labels: np.ndarray, multi_label: bool, ctx: ReadContext
) -> list[str]:
    n_classes = labels.shape[1] if multi_label else int(labels.max()) + 1 if labels.size else 0
    for key in ("label_names", "class_names"):
        if key in arrays.files:
            return [str(x) for x in np.asarray(arrays[key]).tolist()]
    for sidecar in (
        path.with_suffix(".json"),
        path.parent / "labels.json",
        path.parent / "info.json",
    ):
        if sidecar.is_file():
            return _names_from_json(sidecar)
    known = KNOWN_LABELS.get(path.stem.split("_")[0].lower())
    if known is not None and len(known) >= n_classes:
        return known
    ctx.warnings.append(
        f"{path}: no class names found (label_names array, {path.stem}.json or labels.json); "
        "using 'class 0', 'class 1', ..."
    )
    return [f"class {i}" for i in range(n_classes)]


def _names_from_json(sidecar: Path) -> list[str]:
    try:
        data = json.loads(sidecar.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise data_error(
            str(sidecar), f"class-name file is not valid JSON ({type(exc).__name__})"
        ) from None
    if isinstance(data, dict) and isinstance(data.get("label"), dict):
        data = data["label"]
    if isinstance(data, dict):
        try:
            return [str(data[k]) for k in sorted(data, key=int)]
        except ValueError:
            pass
    if isinstance(data, list) and all(isinstance(x, str) for x in data):
        return data
    raise data_error(
        str(sidecar),
        'class names must be a list of strings or a mapping {"0": name, ...}',
        'MedMNIST INFO layout works too: {"label": {"0": "normal", "1": "pneumonia"}}',
    )


def _write_pngs(path: Path, split: str, images: np.ndarray, cache_dir: Path) -> Path:
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    out_dir = Path(cache_dir) / "medmnist" / f"{path.stem}-{digest}" / split
    if out_dir.is_dir():
        return out_dir

    def save(tmp: Path) -> None:
        for i, pixels in enumerate(images):
            array = pixels[..., 0] if pixels.ndim == 3 and pixels.shape[-1] == 1 else pixels
            Image.fromarray(np.ascontiguousarray(array.astype(np.uint8))).save(tmp / f"{i:06d}.png")

    build_dir_atomic(out_dir, save, complete=Path.is_dir)
    return out_dir
