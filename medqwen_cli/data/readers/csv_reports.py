"""CSV (or TSV) of image/report pairs -> report records.

Columns (header row, case-insensitive): the image (`image`, `image_path`, `path`, `file`,
`filename`, `img`), the report (`report`, `text`, `findings`, `impression`, `caption`,
`answer`), optional `question` / `prompt` (default: "Write the findings report for this
image."), optional `id`, optional `type`. Several images in one cell are separated by `;`.
Images may be DICOM files (converted once to PNG in the cache). `line` is the CSV line where
the row starts.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from medqwen_cli.data.readers.base import ReadContext
from medqwen_cli.data.records import Record, data_error, make_record, read_text

IMAGE_COLUMNS = ("image", "image_path", "images", "path", "file", "filename", "img")
REPORT_COLUMNS = ("report", "text", "findings", "impression", "caption", "answer")
QUESTION_COLUMNS = ("question", "prompt")
DEFAULT_QUESTION = "Write the findings report for this image."


def read_csv(path: Path, ctx: ReadContext) -> list[Record]:
    ctx.require_whole_file_split(path)
    text = read_text(path)
    reader = csv.reader(
        io.StringIO(text, newline=""), delimiter="\t" if path.suffix == ".tsv" else ","
    )
    try:
        header = next(reader)
    except StopIteration:
        raise data_error(
            str(path), "the CSV file is empty", "add a header row: image,report"
        ) from None
    columns = [h.strip().lower() for h in header]
    image_col = _find(columns, IMAGE_COLUMNS)
    report_col = _find(columns, REPORT_COLUMNS)
    if image_col is None or report_col is None:
        raise data_error(
            f"{path}:1",
            f"CSV header needs an image column ({', '.join(IMAGE_COLUMNS)}) and a report "
            f"column ({', '.join(REPORT_COLUMNS)}); found: {', '.join(columns)}",
            "rename the header, e.g. `image,report`",
        )
    question_col = _find(columns, QUESTION_COLUMNS)
    id_col = _find(columns, ("id",))
    type_col = _find(columns, ("type", "task_type"))
    resolve = ctx.resolver(path.parent)
    records = []
    start = reader.line_num + 1
    for row in reader:
        line = start
        start = reader.line_num + 1
        if not any(cell.strip() for cell in row):
            continue  # a blank line is not a record
        with ctx.each():  # collect mode: list a bad row, read on
            where = f"{path}:{line}"
            if len(row) != len(columns):
                raise data_error(
                    where,
                    f"row has {len(row)} cells, the header {len(columns)}",
                    "quote cells that contain the delimiter or a line break",
                )
            cells = [c.strip() for c in row[image_col].split(";") if c.strip()]
            if not cells:
                raise data_error(where, f"field {columns[image_col]!r} (image) is empty")
            records.append(
                make_record(
                    where_file=str(path),
                    line=line,
                    record_id=row[id_col] if id_col is not None else None,
                    task_type=(row[type_col].strip() or None) if type_col is not None else "report",
                    question=(row[question_col] if question_col is not None else "")
                    or DEFAULT_QUESTION,
                    answer=row[report_col],
                    images=resolve(cells, where, columns[image_col]),
                    default_type=ctx.default_type,
                )
            )
    return records


def _find(columns: list[str], names: tuple[str, ...]) -> int | None:
    for name in names:
        if name in columns:
            return columns.index(name)
    return None
