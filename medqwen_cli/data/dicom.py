"""DICOM -> 8-bit images, the way a radiologist's viewer shows them.

Per frame, in the order the standard defines:

1. stored values -> modality values: the Modality LUT (Rescale Slope/Intercept, e.g. CT
   Hounsfield units, or a Modality LUT Sequence);
2. VOI windowing -> display range: a window given by the caller (center, width) wins over the
   header's Window Center/Width (first value), then a VOI LUT Sequence; with none of these,
   the 0.5-99.5 percentile range of the frame;
3. linear map of that range to 0..255 (so 12/16-bit data becomes 8-bit), values outside clipped;
4. MONOCHROME1 (bright = low values) is inverted so bone is white;
5. colour data (RGB, YBR decoded by pydicom, PALETTE COLOR through its LUT) is scaled to 8 bits.

Multi-frame objects give the middle frame (`frames="middle"`) or every frame (`"all"`).
Every failure (not DICOM, no pixel data, a codec that is not installed) is a `DataError` that
names the file; pydicom is imported lazily (an optional dependency: `pip install
medqwen-cli[dicom]`).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from medqwen_cli.errors import DataError

logger = logging.getLogger(__name__)

# DICOM Modality (0008,0060) -> the words a question and answer use.
MODALITY_NAMES = {
    "CT": "CT",
    "MR": "MRI",
    "CR": "X-ray",
    "DX": "X-ray",
    "DR": "X-ray",
    "RG": "X-ray",
    "US": "ultrasound",
    "NM": "nuclear medicine",
    "PT": "PET",
    "MG": "mammography",
    "XA": "angiography",
    "RF": "fluoroscopy",
    "OP": "fundus photography",
    "SM": "microscopy",
    "OT": "other",
}

Window = tuple[float, float]
NOT_DICOM_SUFFIXES = frozenset(
    {
        ".png",
        ".jpg",
        ".jpeg",
        ".bmp",
        ".tif",
        ".tiff",
        ".gif",
        ".webp",
        ".json",
        ".jsonl",
        ".csv",
        ".tsv",
        ".txt",
        ".npz",
        ".md",
    }
)


def _pydicom() -> Any:
    try:
        import pydicom
    except ImportError:
        raise DataError(
            "reading DICOM needs pydicom, which is not installed",
            "pip install 'medqwen-cli[dicom]'  (or: pip install pydicom)",
        ) from None
    return pydicom


def is_dicom_file(path: Path) -> bool:
    """A .dcm/.dicom name or the DICM magic at byte 128."""
    suffix = path.suffix.lower()
    if suffix in (".dcm", ".dicom"):
        return True
    if suffix in NOT_DICOM_SUFFIXES:  # skip opening every PNG of a large image folder
        return False
    try:
        with path.open("rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def read_dicom(path: Path, *, where: str | None = None) -> Any:
    """pydicom Dataset of `path` (header and pixels); DataError naming `where` on failure."""
    pydicom = _pydicom()
    where = where or str(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns about harmless header oddities
            return pydicom.dcmread(str(path))
    except FileNotFoundError:
        raise DataError(f"{where}: DICOM file not found: {path}", "check the path") from None
    except Exception as exc:  # InvalidDicomError, truncated files, bad tags ...
        raise DataError(
            f"{where}: not a readable DICOM file ({type(exc).__name__}): {path}",
            "check that the file is complete DICOM (dcmdump or pydicom.dcmread opens it)",
        ) from None


def header_info(ds: Any) -> dict[str, str | None]:
    """Modality code and readable name, body part, from the header (None when absent)."""
    code = str(ds.get("Modality", "") or "").strip().upper() or None
    body = str(ds.get("BodyPartExamined", "") or "").strip() or None
    return {
        "modality": code,
        "modality_name": MODALITY_NAMES.get(code, code) if code else None,
        "body_part": body.lower().replace("_", " ") if body else None,
    }


def dicom_to_images(
    path: Path | str,
    *,
    window: Window | None = None,
    frames: Literal["middle", "all"] = "middle",
    where: str | None = None,
    dataset: Any = None,
) -> list[Image.Image]:
    """8-bit PIL images ("L" or "RGB") of a DICOM file: one (middle frame) or every frame."""
    path = Path(path)
    where = where or str(path)
    ds = dataset if dataset is not None else read_dicom(path, where=where)
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise DataError(
            f"{where}: DICOM file has no pixel data: {path}",
            "it is a non-image object (structured report, RT plan, ...); leave it out",
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pixels = ds.pixel_array
    except Exception as exc:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", str(syntax))
        raise DataError(
            f"{where}: cannot decode the pixel data of {path} ({type(exc).__name__}; "
            f"transfer syntax {name})",
            "compressed DICOM needs a codec: pip install pylibjpeg pylibjpeg-libjpeg "
            "pylibjpeg-openjpeg; or the file is truncated",
        ) from None
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    color = int(ds.get("SamplesPerPixel", 1) or 1) > 1
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    frame_axis = n_frames > 1
    if frame_axis:
        indices = [n_frames // 2] if frames == "middle" else list(range(n_frames))
        stack = [pixels[i] for i in indices]
    else:
        stack = [pixels]
    images = []
    for frame in stack:
        if photometric == "PALETTE COLOR":
            images.append(Image.fromarray(_palette(frame, ds), "RGB"))
        elif color:
            images.append(Image.fromarray(_color_to_uint8(frame, ds), "RGB"))
        else:
            gray = _gray_to_uint8(frame, ds, window)
            if photometric == "MONOCHROME1":
                gray = 255 - gray
            images.append(Image.fromarray(gray, "L"))
    return images


def _gray_to_uint8(frame: np.ndarray, ds: Any, window: Window | None) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    values = np.asarray(apply_modality_lut(frame, ds), dtype=np.float64)
    if window is None:
        window = header_window(ds)
    if window is None and "VOILUTSequence" in ds:
        values = np.asarray(apply_voi_lut(values, ds), dtype=np.float64)
    if window is not None:
        center, width = window
        low, high = center - width / 2.0, center + width / 2.0
    else:
        low, high = (float(v) for v in np.percentile(values, [0.5, 99.5]))
    if high <= low:  # a flat frame: all black rather than a division by zero
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = (values - low) / (high - low) * 255.0
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def header_window(ds: Any) -> Window | None:
    """(center, width) from Window Center/Width (the first value of each), if present."""
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is None or width is None:
        return None
    try:
        c = float(center[0] if _is_multi(center) else center)
        w = float(width[0] if _is_multi(width) else width)
    except (TypeError, ValueError, IndexError):
        return None
    return (c, w) if w > 0 else None


def _is_multi(value: Any) -> bool:
    return isinstance(value, list | tuple) or type(value).__name__ == "MultiValue"


def _color_to_uint8(frame: np.ndarray, ds: Any) -> np.ndarray:
    if frame.dtype == np.uint8:
        return frame
    bits = int(ds.get("BitsStored", 8) or 8)
    top = float(2**bits - 1) if bits > 8 else 255.0
    top = max(top, float(frame.max()) if frame.size else 1.0)
    return np.clip(np.rint(frame.astype(np.float64) / top * 255.0), 0, 255).astype(np.uint8)


def _palette(frame: np.ndarray, ds: Any) -> np.ndarray:
    from pydicom.pixels import apply_color_lut

    rgb = apply_color_lut(frame, ds)
    if rgb.dtype == np.uint8:
        return rgb
    # 16-bit LUT entries; some writers declare 16 bits but store 8-bit values
    top = 65535.0 if rgb.size and rgb.max() > 255 else 255.0
    return np.clip(np.rint(rgb.astype(np.float64) / top * 255.0), 0, 255).astype(np.uint8)
