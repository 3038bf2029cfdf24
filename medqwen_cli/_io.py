"""File I/O shared by the bundle, the presets, training checkpoints, exports and data caches.

Contract: every write is atomic (a temporary file in the target's directory, fsynced, then
`os.replace`d, then the directory fsynced), so a reader sees the old file or the new one, never a
half-written one. Tensors are read and written as safetensors only (no pickle); a safetensors
file is an 8-byte little-endian header length, a JSON header {name: {dtype, shape,
data_offsets}}, then the raw bytes. Imports nothing of medqwen but its errors, so any module can
use it without an import cycle.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import struct
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from medqwen_cli.errors import BaseModelError, BundleError

if TYPE_CHECKING:
    import torch


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in `path` durable (best effort: not every OS allows it)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def umask() -> int:
    """The process's umask (read by setting it and setting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def as_created(path: Path | str, directory: bool = False) -> None:
    """Give a file or directory made by mkstemp / mkdtemp (owner-only) the mode open / mkdir
    would have given it (0666 / 0777 less the umask): a bundle or cache on a shared disk stays
    readable by the team, as the umask says."""
    os.chmod(path, (0o777 if directory else 0o666) & ~umask())


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[Any]:
    """A binary file handle whose content replaces `path` only if the block finishes.

    Written to a temporary file in the same directory, fsynced, then `os.replace`d (with the
    mode a plain open would give); on an error the temporary file is removed and `path` is
    untouched.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        as_created(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` via a temporary file in the same directory and os.replace."""
    with atomic_file(path) as fh:
        fh.write(data)


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_bytes(path, (json.dumps(data, indent=2, sort_keys=False) + "\n").encode())


def build_dir_atomic(
    target: Path, fill: Callable[[Path], None], *, complete: Callable[[Path], bool]
) -> None:
    """Make directory `target` by `fill`ing a temporary one next to it and renaming that into
    place, so a concurrent reader never sees it half-built. When another process renamed its
    copy first, that copy is kept if `complete(target)` says it is whole; on any error the
    temporary directory is removed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    as_created(tmp, directory=True)  # mkdtemp makes it private; the cache may be shared
    try:
        fill(tmp)
        try:
            os.rename(tmp, target)
        except OSError:  # another process renamed its copy first: keep that one
            if not complete(target):
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def numel(shapes: Iterable[Iterable[int]]) -> int:
    """Total number of elements of tensors of these shapes."""
    total = 0
    for shape in shapes:
        count = 1
        for dim in shape:
            count *= dim
        total += count
    return total


_SAFETENSORS_DTYPES = {
    "torch.float64": "F64", "torch.float32": "F32", "torch.float16": "F16",
    "torch.bfloat16": "BF16", "torch.int64": "I64", "torch.int32": "I32", "torch.int16": "I16",
    "torch.int8": "I8", "torch.uint8": "U8", "torch.bool": "BOOL",
}  # fmt: skip


class TensorWriter:
    """A safetensors file written tensor by tensor, so a large set never sits in memory at once.

    `add` appends each tensor's bytes to a spool file in `spool_dir` and keeps only its header
    entry; `commit(path)` writes the header, copies the spool behind it into a temporary file next
    to `path`, fsyncs, and renames it into place. The spool is removed on commit, on `discard`, and
    when a `with` block exits with an error, which leaves nothing at `path`.
    """

    def __init__(self, spool_dir: Path) -> None:
        spool_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".tensors-", suffix=".spool", dir=spool_dir)
        self._spool_path = Path(name)
        self._spool = os.fdopen(fd, "wb")
        self._header: dict[str, dict[str, Any]] = {}
        self._end = 0

    def __enter__(self) -> TensorWriter:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is not None:
            self.discard()

    def __contains__(self, name: str) -> bool:
        return name in self._header

    def numel(self) -> int:
        return numel(entry["shape"] for entry in self._header.values())

    def add(self, name: str, tensor: torch.Tensor) -> None:
        import torch

        if name in self._header or name == "__metadata__":
            raise ValueError(f"tensor name {name!r} is already used or reserved")
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        dtype = _SAFETENSORS_DTYPES.get(str(flat.dtype))
        if dtype is None:
            raise ValueError(f"{name}: dtype {flat.dtype} cannot be stored in safetensors here")
        data = flat.view(torch.uint8).numpy()  # little-endian on every platform torch supports
        self._spool.write(memoryview(data))
        start, self._end = self._end, self._end + data.nbytes
        self._header[name] = {
            "dtype": dtype, "shape": list(tensor.shape), "data_offsets": [start, self._end]
        }  # fmt: skip

    def commit(self, path: Path, metadata: dict[str, str] | None = None) -> None:
        """Write the finished file at `path` (atomically) and remove the spool."""
        try:
            self._spool.close()
            header: dict[str, Any] = dict(self._header)
            if metadata:
                header["__metadata__"] = dict(metadata)
            blob = json.dumps(header, separators=(",", ":")).encode()
            blob += b" " * (-len(blob) % 8)  # the format lets the header be padded with spaces
            with atomic_file(path) as out, open(self._spool_path, "rb") as spool:
                out.write(struct.pack("<Q", len(blob)))
                out.write(blob)
                shutil.copyfileobj(spool, out, 1 << 24)
        finally:
            self.discard()

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            self._spool.close()
        with contextlib.suppress(OSError):
            self._spool_path.unlink()


def save_tensors(
    path: Path,
    tensors: dict[str, torch.Tensor] | TensorWriter,
    metadata: dict[str, str] | None = None,
) -> None:
    """safetensors file written atomically, one tensor at a time (no whole-file copy in memory)."""
    if isinstance(tensors, TensorWriter):
        tensors.commit(path, metadata)
        return
    with TensorWriter(path.parent) as writer:
        for name, tensor in tensors.items():
            writer.add(name, tensor)
        writer.commit(path, metadata)


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise BundleError(
            f"cannot read tensors from {path}: {str(exc)[:160]}",
            "the file is truncated or corrupt; restore it from a backup copy of the bundle",
        ) from None


def read_header(fh: BinaryIO) -> tuple[dict[str, Any], int]:
    """(header without `__metadata__`, offset of the data) of an open safetensors file."""
    (length,) = struct.unpack("<Q", fh.read(8))
    header = json.loads(fh.read(length))
    header.pop("__metadata__", None)
    return header, 8 + length


def tensor_shapes(path: Path) -> dict[str, list[int]]:
    """Shapes of the tensors in a safetensors file, read from its header only."""
    try:
        with open(path, "rb") as fh:
            header, _ = read_header(fh)
    except (OSError, struct.error, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(
            f"cannot read the header of {path}: {exc}", "the file is truncated or corrupt"
        ) from None
    return {k: v["shape"] for k, v in header.items()}


def checkpoint_files(path: str | Path) -> list[Path]:
    """The safetensors files of a model directory (sharded or not)."""
    path = Path(path)
    index = path / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        files = [path / n for n in names]
    else:
        files = sorted(path.glob("*.safetensors"))
    if not files:
        raise BaseModelError(
            f"no .safetensors weights in {path}",
            "medqwen reads safetensors only (no pickle); convert with save_pretrained(safe_serialization=True)",
        )
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise BaseModelError(f"weight shard missing: {missing[0]}", "re-copy the model directory")
    return files
