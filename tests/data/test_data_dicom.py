"""DICOM -> 8-bit conversion on real pydicom test files (CT, MR, CR, multi-frame, palette)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
from pydicom.data import get_testdata_file  # noqa: E402

from medqwen_cli.data.dicom import dicom_to_images, header_info, header_window  # noqa: E402
from medqwen_cli.errors import DataError  # noqa: E402


def _file(name: str) -> Path:
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"{name} needs pydicom-data")
    return Path(path)


def test_ct_modality_lut_and_given_window() -> None:
    path = _file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    hu = ds.pixel_array.astype(float) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    (image,) = dicom_to_images(path, window=(40.0, 400.0))  # soft-tissue window in HU
    pixels = np.asarray(image)
    assert image.mode == "L" and pixels.shape == (128, 128)
    expected = np.clip(np.rint((hu - (40 - 200)) / 400 * 255), 0, 255)
    assert np.array_equal(pixels, expected.astype(np.uint8))
    assert header_info(ds) == {"modality": "CT", "modality_name": "CT", "body_part": None}


def test_ct_without_window_uses_percentiles() -> None:
    (image,) = dicom_to_images(_file("CT_small.dcm"))
    pixels = np.asarray(image)
    assert pixels.min() == 0 and pixels.max() == 255 and len(np.unique(pixels)) > 100


def test_mr_header_window_16_to_8_bit() -> None:
    path = _file("MR_small.dcm")
    ds = pydicom.dcmread(path)
    assert header_window(ds) == (600.0, 1600.0)
    (image,) = dicom_to_images(path)
    expected = np.clip(np.rint((ds.pixel_array - (600 - 800)) / 1600 * 255), 0, 255)
    assert ds.pixel_array.dtype == np.int16
    assert np.array_equal(np.asarray(image), expected.astype(np.uint8))


def test_cr_monochrome1_is_inverted() -> None:
    path = _file("RG1_UNCI.dcm")
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    (image,) = dicom_to_images(path)
    raw = ds.pixel_array.astype(float)
    center, width = header_window(ds)
    windowed = np.clip(np.rint((raw - (center - width / 2)) / width * 255), 0, 255).astype(np.uint8)
    assert np.array_equal(np.asarray(image), 255 - windowed)
    assert header_info(ds)["modality_name"] == "X-ray"
    assert header_info(ds)["body_part"] == "chest"


def test_multi_frame_middle_or_all() -> None:
    path = _file("emri_small.dcm")
    ds = pydicom.dcmread(path)
    frames = ds.pixel_array
    assert frames.shape[0] == 10
    (middle,) = dicom_to_images(path)
    every = dicom_to_images(path, frames="all")
    assert len(every) == 10
    assert np.array_equal(np.asarray(middle), np.asarray(every[5]))
    assert not np.array_equal(np.asarray(every[0]), np.asarray(every[5]))


def test_palette_and_rgb_become_rgb() -> None:
    (palette,) = dicom_to_images(_file("OBXXXX1A.dcm"))
    assert palette.mode == "RGB" and palette.size == (800, 600)
    (rgb,) = dicom_to_images(_file("SC_rgb_16bit.dcm"))
    assert rgb.mode == "RGB" and np.asarray(rgb).dtype == np.uint8
    assert np.asarray(rgb).max() > 200


def test_not_dicom_and_missing(tmp_path: Path) -> None:
    bad = tmp_path / "x.dcm"
    bad.write_bytes(b"hello")
    with pytest.raises(DataError, match="not a readable DICOM file"):
        dicom_to_images(bad)
    with pytest.raises(DataError, match="not found"):
        dicom_to_images(tmp_path / "missing.dcm")
