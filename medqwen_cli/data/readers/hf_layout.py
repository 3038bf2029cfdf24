"""Where the rows of a split lie in a Hugging Face dataset copied as files.

Layouts (`is_hf_dataset` tells them from other data; `hf_split_files` finds a split in them):

- a `.parquet` file: one split without split information;
- a folder of parquet shards, in the folder itself or in its `data/` subfolder (the Hub's
  layout). A shard's name says its split: `<split>-00000-of-00002[-<hash>].parquet`, or
  `<split>.parquet` for a split name (train, test, validation, ..., or the split asked for).
  Shards named by number only (`0000.parquet`: the Hub's parquet conversion of one split), or
  a single file with another name, are one split without split information;
- a folder of split folders (`train/`, `test/`, ...), each holding parquet shards or a
  `save_to_disk` Dataset;
- a `save_to_disk` DatasetDict (`dataset_dict.json` lists the splits, each a Dataset folder) or
  a single Dataset folder (`state.json` lists its Arrow stream files, `data-00000-of-00001.arrow`;
  it holds one split without split information).

The split asked for is found through `split_aliases` (eval reads test, then validation, ...).
Data without split information serves the training split only (`require_whole_file_split`).
A split that is missing raises `MissingSplit` naming the splits found; for the training split,
a plain `DataError`. Nothing here reads rows; the folder is only listed, never written.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from medqwen_cli.data.readers.base import SPLIT_ALIASES, ReadContext, split_aliases
from medqwen_cli.data.records import data_error
from medqwen_cli.errors import MissingSplit

SPLIT_NAMES = frozenset(SPLIT_ALIASES).union(*SPLIT_ALIASES.values())
# train-00000-of-00002.parquet; older Hub exports add a hash: test-00000-of-00001-5f2a...parquet
_SHARD = re.compile(r"^(?P<split>[A-Za-z]\w*)-\d+-of-\d+(?:-[0-9a-f]+)?$")
HINT = (
    "point the dataset path at a .parquet file, a folder of <split>-00000-of-00001.parquet "
    "shards (or data/ with them), or a folder written by save_to_disk"
)


@dataclass
class SplitFiles:
    """The files holding one split's rows, in row order."""

    files: list[Path]
    arrow: bool  # Arrow stream files of save_to_disk; else parquet
    name: str  # the split found, or the file or folder name of data without split information


def is_hf_dataset(path: Path) -> bool:
    """Whether `path` is one of the layouts above (for `format: auto`)."""
    if path.is_file():
        return path.suffix.lower() == ".parquet"
    if not path.is_dir():
        return False
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        return True
    return bool(_parquet(path) or _parquet(path / "data") or _split_folders(path, SPLIT_NAMES))


def hf_split_files(path: Path, ctx: ReadContext) -> SplitFiles:
    """The files of split `ctx.split` in the dataset at `path` (see the module docstring)."""
    if path.is_file():
        ctx.require_whole_file_split(path)
        return SplitFiles([path], arrow=False, name=path.stem)
    if (path / "dataset_dict.json").is_file():
        name = _pick(path, _dict_splits(path / "dataset_dict.json"), ctx)
        return _saved(path / name, name)
    if (path / "state.json").is_file():
        ctx.require_whole_file_split(path)
        return _saved(path, path.name)
    for folder in (path, path / "data"):
        shards = _parquet(folder)
        if shards:
            return _from_shards(folder, shards, ctx)
    folders = _split_folders(path, SPLIT_NAMES | {ctx.split, ctx.train_split})
    if folders:
        name = _pick(path, list(folders), ctx)
        folder = folders[name]
        if (folder / "state.json").is_file():
            return _saved(folder, name)
        return SplitFiles(_parquet(folder), arrow=False, name=name)
    raise data_error(str(path), "no parquet files or save_to_disk dataset found", HINT)


def _parquet(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("*.parquet") if p.is_file() and not p.name.startswith("."))


def _split_folders(root: Path, names: frozenset[str] | set[str]) -> dict[str, Path]:
    """Subfolders named by a split that hold parquet shards or a save_to_disk Dataset."""
    return {
        p.name: p
        for p in sorted(root.iterdir())
        if p.name in names and p.is_dir() and ((p / "state.json").is_file() or _parquet(p))
    }


def _from_shards(folder: Path, shards: list[Path], ctx: ReadContext) -> SplitFiles:
    names = SPLIT_NAMES | {ctx.split, ctx.train_split}
    named: dict[str, list[Path]] = {}
    unnamed: list[Path] = []
    for shard in shards:
        match = _SHARD.match(shard.stem)
        split = match["split"] if match else shard.stem if shard.stem in names else None
        if split is None:
            unnamed.append(shard)
        else:
            named.setdefault(split, []).append(shard)
    if named and unnamed:
        raise data_error(
            str(unnamed[0]),
            f"the file name does not say its split (the other shards name theirs: "
            f"{', '.join(named)})",
            "name every shard <split>-00000-of-00001.parquet, or move this file elsewhere",
        )
    if named:
        name = _pick(folder, list(named), ctx)
        return SplitFiles(named[name], arrow=False, name=name)
    numbered = all(p.stem.isdigit() for p in unnamed)  # a split folder of the Hub's conversion
    if len(unnamed) > 1 and not numbered:
        raise data_error(
            str(folder),
            f"no parquet file for split {ctx.split!r} and {len(unnamed)} files whose names "
            f"give no split ({', '.join(p.name for p in unnamed[:5])})",
            "name them by split (train-00000-of-00001.parquet, test-00000-of-00001.parquet) "
            "or point the dataset path at one file",
        )
    ctx.require_whole_file_split(folder if numbered else unnamed[0])
    return SplitFiles(unnamed, arrow=False, name=folder.name if numbered else unnamed[0].stem)


def _pick(where: Path, splits: list[str], ctx: ReadContext) -> str:
    """The split of `splits` that serves `ctx.split` (its first alias present)."""
    for alias in split_aliases(ctx.split):
        if alias in splits:
            return alias
    what = f"no split {ctx.split!r} (splits: {', '.join(splits) or 'none'})"
    if ctx.split == ctx.train_split:
        raise data_error(str(where), what, "set `split:` to one of them")
    raise MissingSplit(
        f"{where}: {what}", "set eval_split to one of them, or eval_split: null for this dataset"
    )


def _dict_splits(path: Path) -> list[str]:
    try:
        splits = json.loads(path.read_text(encoding="utf-8"))["splits"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise data_error(
            str(path),
            f"not a readable DatasetDict file ({type(exc).__name__})",
            'save_to_disk writes {"splits": ["train", "test"]}; save the dataset again',
        ) from None
    if not isinstance(splits, list) or not all(isinstance(s, str) for s in splits):
        raise data_error(str(path), "'splits' must be a list of split names")
    return splits


def _saved(folder: Path, name: str) -> SplitFiles:
    """The Arrow files of a save_to_disk Dataset folder, as its state.json lists them."""
    state = folder / "state.json"
    try:
        entries = json.loads(state.read_text(encoding="utf-8"))["_data_files"]
        files = [folder / entry["filename"] for entry in entries]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise data_error(
            str(state),
            f"not a readable save_to_disk state file ({type(exc).__name__})",
            "copy the whole folder written by save_to_disk, or save the dataset again",
        ) from None
    missing = [f for f in files if not f.is_file()]
    if missing or not files:
        raise data_error(
            str(state),
            f"lists Arrow files that are missing ({', '.join(f.name for f in missing[:3])})"
            if missing
            else "lists no Arrow files",
            "copy the whole folder written by save_to_disk",
        )
    return SplitFiles(files, arrow=True, name=name)
