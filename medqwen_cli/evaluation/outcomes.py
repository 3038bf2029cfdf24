"""Which records a version answered right: per-record outcomes of the share metrics.

A share metric is a mean over records of 0 or 1 (closed-question, classification and POPE
accuracy; open-question exact match). Its score alone says how many records are right, not
which: two versions at 0.80 may disagree on half of them. `evals.jsonl` therefore keeps, beside
each share metric, the records' outcomes as a bitmap (`outcomes`, hex, record i is bit i from the
most significant bit of the first byte) and a one-way digest of the records scored (`records`:
sha256 of their ids, questions and answers; no text is stored). Two lines with the same digest
scored the same records in the same order, so

    lost(then, now)   = records right in `then` and wrong in `now`
    gained(then, now) = records wrong in `then` and right in `now`

are counted exactly (acceptance's `max_records_lost`), where the scores give only their
difference. Each outcome uses the rule of its metric (`evaluation/metrics`), and a bitmap is kept
only when its mean equals the metric's value.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

from medqwen_cli.data.records import Record

# record type -> its share metrics
SHARE = {
    "vqa_closed": ("accuracy",),
    "classification": ("accuracy",),
    "pope": ("accuracy",),
    "vqa_open": ("exact_match",),
}


def record_outcomes(kind: str, records: Sequence[Record], answers: Sequence[str | None]) -> dict:
    """{metric: [right?, ...]} for `kind`'s share metrics, one entry per record, in order."""
    # the metrics' own rules; imported here, where scoring has loaded them (they load `evaluate`)
    from medqwen_cli.evaluation.metrics._text import normalize, polarity, reference_polarity
    from medqwen_cli.evaluation.metrics.classification import _key
    from medqwen_cli.evaluation.metrics.vqa import judge_closed

    if kind == "vqa_closed":
        right = [
            judge_closed(a, r.answer, r.labels) is True
            for r, a in zip(records, answers, strict=True)
        ]
    elif kind == "classification":
        right = [
            a is not None and _key(a) == _key(r.answer)
            for r, a in zip(records, answers, strict=True)
        ]
    elif kind == "pope":
        right = [
            reference_polarity(r.answer) is not None and polarity(a) == reference_polarity(r.answer)
            for r, a in zip(records, answers, strict=True)
        ]
    elif kind == "vqa_open":
        right = [normalize(a) == normalize(r.answer) for r, a in zip(records, answers, strict=True)]
    else:
        return {}
    return {metric: right for metric in SHARE[kind]}


def records_digest(records: Sequence[Record]) -> str:
    """sha256 of the records' ids, questions and answers, in order (one-way: no text kept)."""
    h = hashlib.sha256()
    for r in records:
        h.update(json.dumps([r.id, r.question, r.answer], ensure_ascii=False).encode() + b"\n")
    return h.hexdigest()


def pack(bits: Sequence[bool]) -> str:
    """Bits as hex, record i at bit 7 - i % 8 of byte i // 8."""
    out = bytearray((len(bits) + 7) // 8)
    for i, bit in enumerate(bits):
        if bit:
            out[i // 8] |= 0x80 >> (i % 8)
    return out.hex()


def unpack(text: str, n: int) -> list[bool]:
    """`pack`'s inverse for `n` records; a bitmap of the wrong length raises ValueError."""
    data = bytes.fromhex(text)
    if len(data) != (n + 7) // 8:
        raise ValueError(f"an outcome bitmap of {len(data)} bytes cannot hold {n} records")
    return [bool(data[i // 8] & (0x80 >> (i % 8))) for i in range(n)]


def lost_and_gained(then: Sequence[bool], now: Sequence[bool]) -> tuple[int, int]:
    """(records right then and wrong now, records wrong then and right now)."""
    if len(then) != len(now):
        raise ValueError(f"outcomes of {len(then)} and {len(now)} records do not pair")
    lost = sum(a and not b for a, b in zip(then, now, strict=True))
    gained = sum(b and not a for a, b in zip(then, now, strict=True))
    return lost, gained
