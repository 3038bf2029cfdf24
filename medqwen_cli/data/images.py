"""Image references of a dataset: resolve, contain, check, convert.

Contract of `ImageResolver(root, ...)(raw, where) -> list[absolute path]`:

- `raw` is what a record holds: None (no image), one path, or a list of paths.
- A relative path is taken relative to the dataset `root` (the dataset file's directory), or
  to one of `search_dirs` under it (format-specific image folders), optionally with one of
  `extensions` appended (datasets that store bare image ids). After resolving symlinks it
  must still lie inside `root`: `../x.png`, or a symlink pointing out of the dataset, is
  refused. Absolute paths are the author's explicit choice and are accepted as they are.
- The file must exist and be a readable image (its header is decoded and checked); a DICOM
  file is converted once (middle frame; the given window, else the header's) to a PNG under
  `cache_dir/dicom-png/` and that PNG is returned.
- An image with more pixels than `max_image_pixels` is accepted with a warning (collected
  in `warnings`, one line per split read, ending with `DOWNSCALED`; `load_records` logs it once
  per dataset); the collator downscales it. An image too large to decode safely is an error.
- Every failure is a one-line `DataError` naming `where` (file:line) and the field; the
  results are memoised, so an image shared by many questions is checked once.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from medqwen_cli._io import as_created
from medqwen_cli.data.dicom import dicom_to_images, is_dicom_file
from medqwen_cli.errors import DataError

DOWNSCALED = "they are downscaled when batched"  # the end of the large-image warning


class ImageResolver:
    """Resolves the image references of one dataset (see the module docstring)."""

    def __init__(
        self,
        root: Path,
        *,
        cache_dir: Path,
        max_image_pixels: int | None = None,
        search_dirs: Sequence[str] = ("",),
        extensions: Sequence[str] = (),
        dicom_window: tuple[float, float] | None = None,
    ) -> None:
        self.root = Path(root).resolve()
        self.dicom_window = dicom_window
        self.cache_dir = Path(cache_dir)
        self.max_image_pixels = max_image_pixels
        self.search_dirs = tuple(search_dirs) or ("",)
        self.extensions = tuple(extensions)
        self._seen: dict[str, str] = {}
        self._large: list[tuple[str, int, int]] = []

    def __call__(self, raw: Any, where: str, field: str = "images") -> list[str]:
        if raw is None:
            return []
        items = [raw] if isinstance(raw, str) else raw
        if not isinstance(items, list) or not all(isinstance(p, str) and p.strip() for p in items):
            raise DataError(
                f"{where}: field {field!r} must be a path or a list of paths",
                'write e.g. "images": ["img/case1.png"]',
            )
        return [self.resolve_one(p.strip(), where, field) for p in items]

    # ------------------------------------------------------------------ one reference

    def resolve_one(self, ref: str, where: str, field: str = "images") -> str:
        key = ref
        if key in self._seen:
            return self._seen[key]
        path = self._locate(ref, where, field)
        result = self._check(path, where, field)
        self._seen[key] = result
        return result

    def _locate(self, ref: str, where: str, field: str) -> Path:
        given = Path(ref).expanduser()
        if given.is_absolute():
            if not given.exists():
                raise DataError(
                    f"{where}: image in field {field!r} not found: {given}",
                    "check the path; relative paths are relative to the dataset file",
                )
            return given
        suffixes = ("", *self.extensions) if not given.suffix else ("",)
        first_escape: Path | None = None
        for sub in self.search_dirs:
            for suffix in suffixes:
                candidate = self.root / sub / (ref + suffix)
                resolved = candidate.resolve()
                if not resolved.is_relative_to(self.root):
                    first_escape = first_escape or candidate
                    continue
                if resolved.is_file():
                    return resolved
        if first_escape is not None:
            raise DataError(
                f"{where}: image path in field {field!r} leaves the dataset directory "
                f"{self.root} (via '..' or a symlink); refused",
                "keep images inside the dataset directory (copy them in, or use an absolute "
                "path if you mean a file elsewhere)",
            )
        tried = self.root / self.search_dirs[0] / ref
        raise DataError(
            f"{where}: image in field {field!r} not found: {tried}",
            "image paths are relative to the dataset file's directory; check the name",
        )

    def _check(self, path: Path, where: str, field: str) -> str:
        if is_dicom_file(path):
            return str(self._dicom_png(path, where))
        try:
            with Image.open(path) as image:
                width, height = image.size
                image.verify()  # structure and checksums, without decoding every pixel
        except Image.DecompressionBombError:
            raise DataError(
                f"{where}: image in field {field!r} is too large to decode safely: {path}",
                "downscale it before training (e.g. to at most 2048 px per side)",
            ) from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise DataError(
                f"{where}: image in field {field!r} is unreadable or corrupt "
                f"({type(exc).__name__}): {path}",
                "re-export the image as PNG or JPEG; check that the file is complete",
            ) from None
        if self.max_image_pixels is not None and width * height > self.max_image_pixels:
            self._large.append((where, width, height))
        return str(path)

    def _dicom_png(self, path: Path, where: str) -> Path:
        stat = path.stat()
        key = f"{path}|{stat.st_size}|{stat.st_mtime_ns}|{self.dicom_window}"
        digest = hashlib.sha256(key.encode()).hexdigest()
        target = self.cache_dir / "dicom-png" / f"{digest[:24]}.png"
        if not target.exists():
            image = dicom_to_images(path, window=self.dicom_window, where=where)[0]
            write_png_atomic(image, target)
        return target

    # ------------------------------------------------------------------ warnings

    @property
    def warnings(self) -> list[str]:
        if not self._large:
            return []
        where, width, height = max(self._large, key=lambda item: item[1] * item[2])
        count = len(self._large)
        return [
            f"{count} image{'s' * (count > 1)} larger than max_image_pixels="
            f"{self.max_image_pixels} (largest {width}x{height} at {where}); {DOWNSCALED}"
        ]


def write_png_atomic(image: Image.Image, target: Path) -> None:
    """Write a PNG through a temporary file and a rename (readers never see half a file)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".png", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            image.save(handle, format="PNG")
        as_created(tmp)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
