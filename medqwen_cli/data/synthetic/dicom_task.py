"""The built-in `dicom` task: real images from pydicom's test files, questions from headers.

Sixteen uncompressed (or natively decoded) files of pydicom / pydicom-data covering CT, MR,
CR, NM and US (multi-frame files give every frame) are converted with the same code as the
DICOM folder reader (modality LUT, header window, MONOCHROME1 inversion, palette colour) and
shrunk to `image_size`. Each image gets a classification "What imaging modality is this?"
and, where the header has Body Part Examined, "Which body part is shown?". Images are split
into train and eval by a seeded shuffle (every fourth image goes to eval; frames of one
series may land in both splits, which only makes the smoke task easier). Needs
`pydicom-data` (no download is ever attempted).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np

from medqwen_cli.data.readers.dicom_folder import convert_dicom, dicom_records
from medqwen_cli.data.records import record_to_json
from medqwen_cli.errors import DataError

DICOM_FILES = (
    "CT_small.dcm",
    "693_UNCI.dcm",
    "eCT_Supplemental.dcm",
    "MR_small.dcm",
    "MR2_UNCI.dcm",
    "emri_small.dcm",
    "MR-SIEMENS-DICOM-WithOverlays.dcm",
    "examples_overlay.dcm",
    "RG1_UNCI.dcm",
    "RG3_UNCI.dcm",
    "JPEG2000_UNC.dcm",
    "US1_UNCI.dcm",
    "examples_rgb_color.dcm",
    "OBXXXX1A.dcm",
    "gdcm-US-ALOKA-16.dcm",
    "color-pl.dcm",
)
INSTALL_HINT = "pip install pydicom pydicom-data  (about 60 MB; no network needed afterwards)"


def testdata_files() -> list[Path]:
    """Paths of DICOM_FILES, from pydicom and the pydicom-data package, never downloaded."""
    try:
        from pydicom.data import get_testdata_file
    except ImportError:
        raise DataError("the built-in dicom task needs pydicom", INSTALL_HINT) from None
    if importlib.util.find_spec("data_store") is None:
        raise DataError(
            "the built-in dicom task needs pydicom's test images (package pydicom-data)",
            INSTALL_HINT,
        )
    paths = []
    for name in DICOM_FILES:
        found = get_testdata_file(name, download=False)
        if found is None:
            raise DataError(
                f"pydicom test file {name} not found (pydicom-data incomplete or too old)",
                "pip install --upgrade pydicom-data",
            )
        paths.append(Path(str(found)))
    return paths


def generate_dicom_task(
    out_dir: Path, *, seed: int = 0, size: int | None = None, image_size: int = 112
) -> dict[str, int]:
    """Write train.jsonl, eval.jsonl and images/ into `out_dir`; return record counts."""
    images_dir = out_dir / "images"
    per_image: list[list[dict]] = []  # the records of each image, in file and frame order
    for path in testdata_files():
        pngs, info = convert_dicom(path, images_dir, frames="all", size=image_size, name=path.stem)
        records = dicom_records(
            path, pngs, info, default_type=None, id_prefix=path.stem, source=path.name
        )
        for _, png in pngs:
            per_image.append(
                [record_to_json(r, relative_to=out_dir) for r in records if r.images == [str(png)]]
            )
    order = np.random.default_rng([seed, 0xD1C0]).permutation(len(per_image))
    eval_images = {int(i) for k, i in enumerate(order) if k % 4 == 3}
    splits: dict[str, list[dict]] = {"train": [], "eval": []}
    for index, items in enumerate(per_image):
        splits["eval" if index in eval_images else "train"].extend(items)
    if size is not None:
        splits["train"] = splits["train"][:size]
    for split, items in splits.items():
        text = "".join(json.dumps(item, ensure_ascii=False) + "\n" for item in items)
        (out_dir / f"{split}.jsonl").write_text(text, encoding="utf-8")
    return {split: len(items) for split, items in splits.items()}
