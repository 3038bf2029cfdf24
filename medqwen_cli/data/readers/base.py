"""What every reader receives: the split asked for, the image resolver, the output cache.

A reader is a function `read(path, ctx) -> list[Record]`. It raises `DataError` naming the
file and line for any bad record; it never skips one. In collect mode (`ctx.problems` is a
list: `medqwen validate`) each bad record's `DataError` is appended there instead and reading
goes on, so one pass reports every bad record; readers wrap each record in `ctx.each()` for it. Formats that carry their own split
information (MedMNIST `.npz`, VQA-RAD's `phrase_type`) select `ctx.split` themselves; for the
others the locator has already picked the file of the split (or refuses, see
`ReadContext.require_whole_file_split`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from medqwen_cli.data.images import ImageResolver
from medqwen_cli.errors import DataError, MissingSplit

# Split names tried, in order, for a requested split: "eval" reads a test or validation file
# when no eval file exists (the split a paper reports).
SPLIT_ALIASES = {
    "train": ("train",),
    "eval": ("eval", "test", "val", "validation", "validate", "valid", "dev"),
    "test": ("test",),
    "val": ("val", "validation", "validate", "valid", "dev"),
    "validation": ("validation", "val", "validate", "valid", "dev"),
}


def split_aliases(split: str) -> tuple[str, ...]:
    return SPLIT_ALIASES.get(split, (split,))


@dataclass
class ReadContext:
    split: str
    train_split: str
    split_in_path: bool  # the file (or folder) was chosen by its split name
    cache_dir: Path
    default_type: str | None = None
    max_image_pixels: int | None = None
    dicom_frames: Literal["middle", "all"] = "middle"
    dicom_window: tuple[float, float] | None = None
    warnings: list[str] = field(default_factory=list)
    problems: list[DataError] | None = None  # a list: collect bad records instead of raising
    answer_optional: bool = False  # native records may leave out the answer (predict)
    _resolvers: list[ImageResolver] = field(default_factory=list)

    @contextlib.contextmanager
    def each(self) -> Iterator[None]:
        """Around one record: its `DataError` propagates, or in collect mode is listed and the
        reader goes on with the next record (the bad one is left out of the result)."""
        try:
            yield
        except DataError as exc:
            if self.problems is None:
                raise
            self.problems.append(exc)

    def resolver(
        self, root: Path, *, search_dirs: Sequence[str] = ("",), extensions: Sequence[str] = ()
    ) -> ImageResolver:
        resolver = ImageResolver(
            root,
            cache_dir=self.cache_dir,
            max_image_pixels=self.max_image_pixels,
            search_dirs=search_dirs,
            extensions=extensions,
            dicom_window=self.dicom_window,
        )
        self._resolvers.append(resolver)
        return resolver

    def all_warnings(self) -> list[str]:
        return [*self.warnings, *(w for r in self._resolvers for w in r.warnings)]

    def require_whole_file_split(self, path: Path) -> None:
        """A file without split information serves the training split only: any other split
        raises `MissingSplit` (a `DataError`; evaluation skips the dataset with a note)."""
        if self.split_in_path or self.split == self.train_split:
            return
        what = "folder" if path.is_dir() else "file"
        layout = (
            f"parquet files named by split ({self.train_split}-*.parquet, test-*.parquet)"
            if path.is_dir() or path.suffix.lower() in (".parquet", ".arrow")
            else f"{self.train_split}.jsonl and {self.split}.jsonl (or test.*)"
        )
        raise MissingSplit(
            f"{path}: the {what} has no split {self.split!r} (it holds one split, used for "
            f"{self.train_split!r})",
            f"point the dataset path at a directory with {layout}, or set eval_split: null "
            "for this dataset",
        )
