"""Reading data files as text: UTF-8 with line numbers in errors, JSONL line by line, and the
items of a JSON array (or of a list under a key) one at a time with their line numbers.

Errors name the file and line, never the content (it may be patient data).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from medqwen_cli.errors import DataError


def data_error(where: str, what: str, hint: str | None = None) -> DataError:
    """A one-line DataError `where: what` (where is `file:line` or `file`)."""
    return DataError(f"{where}: {what}", hint)


def read_text(path: Path) -> str:
    """Read a UTF-8 file; a decoding error names the line where it happens."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise data_error(
            f"{path}:{line}",
            "not valid UTF-8 text",
            "save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)",
        ) from None


def iter_jsonl(path: Path, problems: list[DataError] | None = None) -> Iterator[tuple[int, Any]]:
    """(line number, parsed object) for each non-blank line of a JSONL file. A line that is not
    JSON raises, or when `problems` is a list is appended there and skipped (collect mode)."""
    data = path.read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            error = data_error(f"{path}:{number}", "not valid UTF-8 text", "save the file as UTF-8")
        except json.JSONDecodeError as exc:
            error = data_error(
                f"{path}:{number}",
                f"malformed JSON at column {exc.colno}: {exc.msg}",
                "each line must be one complete JSON object",
            )
        else:
            yield number, obj
            continue
        if problems is None:
            raise error
        problems.append(error)


def iter_json_items(
    path: Path, problems: list[DataError] | None = None
) -> Iterator[tuple[int, Any]]:
    """(line where the item starts, item) for each item of a JSON array file; a file of
    JSON lines is read as JSONL (with `problems` as in `iter_jsonl`). A syntax error in an
    array always raises: the items after it cannot be told apart."""
    text = read_text(path)
    decoder = json.JSONDecoder()
    start = len(text) - len(text.lstrip())
    if not text[start:].startswith("["):
        try:
            json.loads(text)
        except json.JSONDecodeError as exc:
            if exc.msg == "Extra data":  # several objects: JSON lines in a .json file
                yield from iter_jsonl(path, problems)
                return
            raise data_error(
                f"{path}:{exc.lineno}", f"malformed JSON at column {exc.colno}: {exc.msg}"
            ) from None
        raise data_error(
            str(path),
            "expected a JSON array of records",
            "a .json dataset is a list of objects; use .jsonl for one object per line",
        )
    pos = start + 1
    line = text.count("\n", 0, pos) + 1
    counted = pos
    while True:
        pos = _skip_ws(text, pos)
        if pos < len(text) and text[pos] == "]":
            return
        line += text.count("\n", counted, pos)
        counted = pos
        try:
            item, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise data_error(
                f"{path}:{exc.lineno}", f"malformed JSON at column {exc.colno}: {exc.msg}"
            ) from None
        yield line, item
        pos = _skip_ws(text, end)
        if pos < len(text) and text[pos] == ",":
            pos += 1
        elif pos >= len(text) or text[pos] != "]":
            lineno = text.count("\n", 0, pos) + 1
            raise data_error(f"{path}:{lineno}", "malformed JSON: expected ',' or ']'")


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos
