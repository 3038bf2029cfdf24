"""The report as one self-contained HTML page: inline CSS, inline SVG figures, no script, no
link to anything outside the file, so it opens offline, archives as is, and prints (A4).

Sections follow the data (report/data.py): header and a plain-language summary, lineage,
performance, acceptance, limits. Every number is printed with its definition or its source.
"""

from __future__ import annotations

from typing import Any

from medqwen_cli.report import sections
from medqwen_cli.report.style import CSS
from medqwen_cli.report.text import badge, esc, fmt, when


def method_line(method: dict[str, Any]) -> str:
    """`sslora, 4 experts, top-2, rank 16`: the adapter settings a reader needs first."""
    parts = [str(method.get("method", "?"))]
    if method.get("experts"):
        parts.append(f"{method['experts']} experts")
    if method.get("top_k"):
        parts.append(f"top-{method['top_k']}")
    if method.get("rank"):
        parts.append(f"rank {method['rank']}")
    return ", ".join(parts)


def render_html(report: dict[str, Any]) -> str:
    """The page of `report` (the dict `build_report` returns)."""
    b = report["bundle"]
    title = f"Model update report: {b['name']}"
    body = [
        _header(report),
        _summary(report),
        sections.lineage(report),
        sections.performance(report),
        sections.acceptance(report),
        sections.limits(report),
        _footer(report),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
        + "".join(body)
        + "</body></html>\n"
    )


def _header(report: dict[str, Any]) -> str:
    b, integrity = report["bundle"], report["integrity"]
    base = b["base"]
    checked = "verified" if integrity["verified"] else "damaged"
    n_problems = len(integrity["problems"]) + len(integrity["acceptance_log"])
    facts = [
        ("Bundle", f'<span class="mono">{esc(b["path"])}</span>'),
        ("Base model", f"{esc(base.get('model_id') or base.get('name'))} "
                       f"<span class=\"muted\">({esc(base.get('model_type'))}, "
                       f"{esc(base.get('source'))})</span>"),
        ("Base fingerprint", f'<span class="mono">{esc(base.get("fingerprint"))}</span>'
                             + (f" · revision {esc(base['revision'])}" if base.get("revision") else "")),
        ("Method", esc(method_line(b["method"]))),
        ("Default version (used by every command)", f"<strong>{esc(b['default_version'])}</strong>"),
        ("Newest version", esc(b["newest_version"])),
        ("Versions / tasks", f"{b['versions']} versions; tasks "
                             f"{esc(' → '.join(b['tasks']) or 'none yet')}"),
        ("Checksums (checked now)", badge(checked)
         + ("" if integrity["verified"] else f" {n_problems} problem(s), see Integrity")),
        ("Report written", f"{esc(when(report['generated']))} · medqwen "
                           f"{esc(report['medqwen_version'])}"),
    ]  # fmt: skip
    cells = "".join(f"<div><b>{esc(k)}</b>{v}</div>" for k, v in facts)
    return (
        f"<header><h1>Model update report: {esc(b['name'])}</h1>"
        f'<p class="sub">What each version of this adapter was trained on, what it can do, what '
        f"it lost, and whether it met the criteria fixed in advance. Written by "
        f"<code>medqwen report</code> from the bundle's files alone.</p>"
        f'<div class="facts">{cells}</div></header>'
    )


def _summary(report: dict[str, Any]) -> str:
    """Plain language first: the default version, each task's score now and just after it was
    learned, the versions not accepted, and the integrity check."""
    b, perf = report["bundle"], report["performance"]
    items = []
    default = next((v for v in report["lineage"] if v["id"] == b["default_version"]), None)
    if default is not None:
        items.append(f"Commands use version <strong>{esc(default['id'])}</strong> unless told "
                     "otherwise" + ("" if b["default_version"] == b["newest_version"] else
                                    f"; the newest version, {esc(b['newest_version'])}, is not "
                                    "accepted and is used only when named") + ".")  # fmt: skip
    items += _task_lines(perf, b["default_version"])
    rejected = [a["version"] for a in report["acceptance"] if a["status"] == "not accepted"]
    checked = [a for a in report["acceptance"] if a["verdict"] is not None]
    if not checked:
        items.append("No acceptance criteria were set: every version became the default as it "
                     "was written.")  # fmt: skip
    else:
        items.append(f"{len(checked)} version(s) checked against acceptance criteria; "
                     + (f"<strong class=\"bad\">not accepted: {esc(', '.join(rejected))}</strong> "
                        "(kept in the bundle, not the default)" if rejected else "all accepted")
                     + ".")  # fmt: skip
    integrity = report["integrity"]
    items.append("Every file of every version matches its recorded sha256." if integrity["verified"]
                 else "<strong class=\"bad\">Integrity problems found</strong>: see Integrity.")  # fmt: skip
    bad = bool(rejected) or not integrity["verified"]
    lis = "".join(f"<li>{i}</li>" for i in items)
    return f'<section class="summary{" alert" if bad else ""}"><strong>Summary</strong><ul>{lis}</ul></section>'


def _task_lines(perf: dict[str, Any], version: str | None) -> list[str]:
    """Per task, its score with `version` (the one commands use) and right after it was
    learned, read from the accuracy matrix."""
    m = perf["matrix"]
    if m is None or version not in m["rows"]:
        return []
    row = m["rows"].index(version)
    lines = []
    for c, task in enumerate(m["tasks"]):
        trained = m["trained_row"][task]
        if trained > row:
            continue  # learned by a newer version that is not the one in use
        now, then = m["values"][row][c], m["values"][trained][c]
        if now is None:
            lines.append(f"Task <strong>{esc(task)}</strong>: not scored with {esc(version)}.")
            continue
        change = ""
        if then is not None and trained != row:
            diff = now - then
            word = "unchanged" if abs(diff) < 5e-4 else ("lost " if diff < 0 else "gained ")
            word += "" if abs(diff) < 5e-4 else fmt(abs(diff), 3)
            change = (f"; it scored {fmt(then, 3)} right after it was learned in "
                      f"{esc(m['rows'][trained])} ({word})")  # fmt: skip
        lines.append(f"Task <strong>{esc(task)}</strong> ({esc(m['metrics'][task])}): "
                     f"{fmt(now, 3)} with {esc(version)}{change}.")  # fmt: skip
    return lines


def _footer(report: dict[str, Any]) -> str:
    return (
        "<footer>Produced by <code>medqwen report</code> (report schema "
        f"{report['schema']}, medqwen {esc(report['medqwen_version'])}) from bundle.json, each "
        "version's version.json, data.json, metrics.json and continual.json, evals.jsonl and "
        "acceptance.jsonl. Data appear as task, split, record count and sha256 only; no record "
        "text is read into this report. The same content as JSON: <code>medqwen report "
        "--format json</code>.</footer>"
    )
