"""The body sections of the HTML report: lineage, performance, acceptance, limits."""

from __future__ import annotations

from typing import Any

from medqwen_cli.report.svg import Series, line_chart
from medqwen_cli.report.text import badge, esc, fmt, when

# A sequential blue ramp (light = low, dark = high) that prints in grey as well as in colour.
RAMP = ((0.0, (239, 246, 255)), (0.5, (125, 178, 222)), (1.0, (19, 75, 140)))


def _table(
    header: list[str], rows: list[list[str]], css: str = "", num: set[int] = frozenset()
) -> str:
    """`rows` of HTML cells under `header` (escaped); columns in `num` align right."""
    th = "".join(
        f"<th{' class=num' if i in num else ''}>{esc(h)}</th>" for i, h in enumerate(header)
    )
    body = "".join(
        "<tr>" + "".join(f'<td{" class=num" if i in num else ""}>{c}</td>' for i, c in enumerate(r))
        + "</tr>"
        for r in rows
    )  # fmt: skip
    return f'<table class="{css}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


def _colour(share: float) -> tuple[str, str]:
    """(background, text colour) of a matrix cell at `share` (0-1) of the colour range."""
    for (a, ca), (b, cb) in zip(RAMP, RAMP[1:], strict=False):
        if share <= b:
            t = 0 if b == a else (share - a) / (b - a)
            rgb = [round(x + (y - x) * t) for x, y in zip(ca, cb, strict=True)]
            break
    else:
        rgb = list(RAMP[-1][1])
    dark = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2] < 140
    return f"rgb({rgb[0]},{rgb[1]},{rgb[2]})", "#fff" if dark else "#1f2933"


# --------------------------------------------------------------------------- lineage


def lineage(report: dict[str, Any]) -> str:
    default = report["bundle"]["default_version"]
    rows, digests = [], []
    for v in report["lineage"]:
        tasks = (
            ", ".join(
                f"<strong>{esc(t)}</strong>"
                + (f'<br><span class="muted">{esc(d)}</span>' if d else "")
                for t, d in (v.get("description") or {t: None for t in v["tasks"]}).items()
            )
            or '<span class="muted">none (init: the adapter computes the base model)</span>'
        )
        train = v.get("train") or {}
        params = v.get("parameters") or {}
        rows.append([
            f"<strong>{esc(v['id'])}</strong>" + (" (default)" if v["id"] == default else ""),
            esc(v["parent"] or "-"), tasks, esc(v.get("strategy") or "-"),
            f"{esc(train.get('steps'))} steps, {fmt(train.get('seconds'), 1)} s" if train else "-",
            fmt(train.get("final_loss"), 4) if train else "-",
            f"{_int(params.get('trained'))} / {_int(params.get('added'))}",
            esc(when(v["created"])), badge(v["acceptance"]) if v["tasks"] else "-",
        ])  # fmt: skip
        digests.append([f"<strong>{esc(v['id'])}</strong>", "recipe", "", "",
                        f'<span class="digest">{esc(v.get("recipe_sha256"))}</span>'])  # fmt: skip
        for d in v.get("data") or []:
            digests.append(["", f"{esc(d['task'])} (data)", esc(d["split"]), _int(d["records"]),
                            f'<span class="digest">{esc(d["sha256"])}</span>'])  # fmt: skip
    header = ["version", "parent", "task trained", "strategy", "training", "final loss",
              "parameters trained / added", "written (UTC)", "acceptance"]  # fmt: skip
    return (
        "<section><h2>1. Lineage</h2><p>Every version in the order it was written. A version is "
        "immutable: its files are listed with their sha256 in its version.json. <em>Strategy</em>: "
        "how earlier tasks were kept (none; replay of earlier records; protected branches). "
        "<em>Parameters trained</em>: adapter parameters the training could change; "
        "<em>added</em>: parameters the version added to its parent's.</p>"
        + _table(header, rows, num={5, 6})
        + "<h3>Recipe and data digests</h3><p>The recipe digest is the sha256 of the resolved "
        "recipe as canonical JSON; a data digest is the sha256 of the records' content in order "
        "(never the records themselves). Equal digests mean the same recipe or the same data.</p>"
        + _table(["version", "what", "split", "records", "sha256"], digests, num={3})
        + "</section>"
    )


def _int(value: Any) -> str:
    return "n/a" if value is None else f"{value:,}"


# --------------------------------------------------------------------------- performance


def performance(report: dict[str, Any]) -> str:
    perf = report["performance"]
    parts = ["<section><h2>2. Performance</h2>"]
    if perf["matrix"] is None:
        parts.append("<p>No version of the lineage trained a task yet: nothing to compare.</p>")
    else:
        status = {v["id"]: v["acceptance"] for v in report["lineage"]}
        parts += [_matrix(perf, status), _figures(perf), _per_task(perf), _task_chart(perf)]
        parts += _curve_charts(perf)
    parts.append(_scores_by_type(perf))
    return "".join(parts) + "</section>"


def _matrix(perf: dict[str, Any], status: dict[str, str]) -> str:
    m = perf["matrix"]
    values = [v for row in m["values"] for v in row if v is not None]
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    span = high - low or 1.0
    trained = {(r, m["tasks"].index(t)) for t, r in m["trained_row"].items()}
    rows = []
    for r, version in enumerate(m["rows"]):
        rejected = status.get(version) == "not accepted"
        cells = [
            f"<th>{esc(version)}" + (" " + badge("not accepted") if rejected else "") + "</th>"
        ]
        for c, value in enumerate(m["values"][r]):
            css = "trained" if (r, c) in trained else ""
            if value is None:
                cells.append(f'<td class="na {css}">n/a</td>')
                continue
            bg, ink = _colour((value - low) / span)
            cells.append(f'<td class="{css}" style="background:{bg};color:{ink}">{value:.4f}</td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    head = "".join(f"<th>{esc(t)}<br><span class=muted>{esc(m['metrics'][t])}</span></th>"
                   for t in m["tasks"])  # fmt: skip
    lo, hi = _colour(0.0)[0], _colour(1.0)[0]
    return (
        "<h3>Accuracy matrix R</h3><p>R[i][j] is the score on task j (column) of the model after "
        "version i (row); row <em>base</em> is the base model alone (zero-shot). The outlined "
        "cell is where each task was trained; n/a: never evaluated (never read as 0).</p>"
        f'<table class="matrix" id="accuracy-matrix"><thead><tr><th>model after</th>{head}'
        f"</tr></thead><tbody>{''.join(rows)}</tbody></table>"
        f'<div class="legend">colour: {low:.3f}<span class="ramp" style="background:linear-'
        f'gradient(90deg,{lo},{_colour(0.5)[0]},{hi})"></span>{high:.3f} (the range of the '
        "data, not 0-1)</div>"
    )


IN_WORDS = {
    "ACC": "average score over every task learned so far, with the newest version",
    "BWT": "average change of each earlier task since it was learned (below 0: forgotten)",
    "FWT": "how much earlier training helped a task before it was learned (above 0: helped)",
    "Forgetting": "average loss of each earlier task from its best score so far",
}


def _figures(perf: dict[str, Any]) -> str:
    rows = [[f"<strong>{esc(f['name'])}</strong>", fmt(f["value"]), esc(IN_WORDS.get(f["name"])),
             f'<span class="mono">{esc(f["definition"])}</span>'
             + (f'<br><span class="muted">{esc(f["reason"])}</span>' if f["reason"] else "")]
            for f in perf["figures"]]  # fmt: skip
    header = ["figure", "value", "in words", "definition"]
    return "<h3>Continual-learning figures</h3>" + _table(header, rows, num={1})


def _per_task(perf: dict[str, Any]) -> str:
    rows = [[f"<strong>{esc(t['task'])}</strong>", esc(t["metric"]), esc(t["trained_in"]),
             fmt(t["after_training"]), fmt(t["final"]), fmt(t["drop"]["value"]),
             fmt(t["relative_drop"]["value"]), fmt(t["forgetting"]["value"])]
            for t in perf["per_task"]]  # fmt: skip
    header = ["task", "metric", "trained in", "just trained", "now", "drop", "relative drop",
              "forgetting"]  # fmt: skip
    first = perf["per_task"][0] if perf["per_task"] else None
    defs = "" if first is None else "<ul class=defs>" + "".join(
        f"<li>{esc(first[k]['definition'])}</li>" for k in ("drop", "relative_drop", "forgetting")
    ) + "</ul>"  # fmt: skip
    return "<h3>Per task</h3>" + _table(header, rows, num={3, 4, 5, 6, 7}) + defs


def _task_chart(perf: dict[str, Any]) -> str:
    m = perf["matrix"]
    series = [
        Series(t, [row[c] for row in m["values"]], {m["trained_row"][t]})
        for c, t in enumerate(m["tasks"])
    ]
    svg = line_chart(series, m["rows"], title="Score of each task after each version",
                     x_title="model after version", y_title="score (headline)",
                     marked_note="large marker: just trained")  # fmt: skip
    return (f'<figure class="report-figure" id="figure-tasks">{svg}<figcaption>Figure 1. Each '
            "task's headline score (R's columns) across versions; a gap is a missing score."
            "</figcaption></figure>")  # fmt: skip


def _curve_charts(perf: dict[str, Any]) -> list[str]:
    """One figure per version with forgetting curves (train/continue --watch)."""
    by_version: dict[str, list[dict[str, Any]]] = {}
    for c in perf["curves"]:
        by_version.setdefault(c["version"], []).append(c)
    out = []
    for k, (version, curves) in enumerate(by_version.items(), start=2):
        steps = sorted({p["step"] for c in curves for p in c["points"]})
        series = [Series(f"{c['task']} ({c['metric']})",
                         [next((p["value"] for p in c["points"] if p["step"] == s), None)
                          for s in steps]) for c in curves]  # fmt: skip
        trained = ", ".join(curves[0]["trained"])
        svg = line_chart(series, [str(s) for s in steps],
                         title=f"Forgetting curve: scores while {version} trained {trained}",
                         x_title=f"optimizer step of {version}", y_title="score")  # fmt: skip
        out.append(f'<figure class="report-figure" id="figure-curve-{esc(version)}">{svg}'
                   f"<figcaption>Figure {k}. {esc(curves[0]['definition'])} (recorded with "
                   "--watch; these points never fill R).</figcaption></figure>")  # fmt: skip
    return out


def _scores_by_type(perf: dict[str, Any]) -> str:
    parts = ["<h3>Scores by record type</h3><p>Each task's headline score (the mean over its "
             "record types) and each type's own headline metric, with the number of records "
             "scored (n).</p>"]  # fmt: skip
    if not perf["scores"]:
        parts.append("<p><strong>No score recorded.</strong></p>")
    for task in perf["tasks"]:
        mine = [s for s in perf["scores"] if s["task"] == task]
        if not mine:
            continue
        types = list(dict.fromkeys(k for s in mine for k in s["types"]))
        header = ["model after", f"headline ({mine[0]['metric']})"] + [
            mine[0]["types"].get(t, {}).get("metric", t) for t in types
        ]
        rows = [[f"<strong>{esc(s['version'])}</strong>", f"{fmt(s['value'])} (n={esc(s['n'])})"]
                + [f"{fmt(s['types'].get(t, {}).get('value'))} (n={esc(s['types'].get(t, {}).get('n'))})"
                   for t in types] for s in mine]  # fmt: skip
        parts.append(f"<h3>{esc(task)}</h3>" + _table(header, rows, num=set(range(1, len(header)))))
    return "".join(parts)


# --------------------------------------------------------------------------- acceptance, limits


def acceptance(report: dict[str, Any]) -> str:
    parts = ["<section><h2>3. Acceptance</h2><p>The criteria each version's recipe fixed before it "
             "was trained, each check with the value measured, and the verdict. A version that is "
             "not accepted stays in the bundle and is used only when named; a person may accept "
             "it (<code>medqwen accept</code>), which is recorded with who and why.</p>"]  # fmt: skip
    entries = report["acceptance"]
    if not any(a["verdict"] for a in entries):
        parts.append("<p><strong>No acceptance criteria were set</strong> in the recipes of this "
                     "bundle: no version was checked. Set <code>acceptance:</code> in the recipe "
                     "(docs/report.md).</p>")  # fmt: skip
    for a in entries:
        if a["verdict"] is None:
            continue
        checks = [[esc(c["task"]), esc(c["scope"]), esc(c["criterion"]), esc(c["metric"]),
                   ("≤ " if c["criterion"].startswith("max") else "≥ ") + f"{c['threshold']:g}",
                   fmt(c["measured"], 0 if c["criterion"] == "max_records_lost" else 4), badge("passed" if c["passed"] else "failed"),
                   f'<span class="muted">{esc(c["detail"])}</span>']
                  for c in a["verdict"]["checks"]]  # fmt: skip
        parts.append(
            f"<h3>{esc(a['version'])} {badge(a['status'])}</h3><p class='muted judged'>judged "
            f"{esc(when(a['verdict']['time']))} (medqwen {esc(a['verdict']['medqwen_version'])})</p>"
        )
        parts.append(
            _table(
                [
                    "task",
                    "scope",
                    "criterion",
                    "metric",
                    "required",
                    "measured",
                    "result",
                    "how measured",
                ],
                checks,
                num={4, 5},
            )  # fmt: skip
            if checks
            else "<p>No criterion applied to this version's tasks.</p>"
        )
        for o in a["overrides"]:
            parts.append(f"<p>{badge('accepted by override')} by <strong>{esc(o['by'])}</strong> "
                         f"on {esc(when(o['time']))}: {esc(o['reason'])}</p>")  # fmt: skip
    return "".join(parts) + "</section>"


def limits(report: dict[str, Any]) -> str:
    lim, integrity = report["limits"], report["integrity"]
    items = [f"Task <strong>{esc(t)}</strong> was never scored after training (it has no eval "
             "split, or its run used --no-eval)."
             for t in lim["never_scored"]]  # fmt: skip
    items += [f"No score of {esc(', '.join(g['tasks']))} "
              + ("for the base model (zero-shot)" if g["version"] == "base" else
                 f"after {esc(g['version'])}") + "." for g in lim["missing_scores"]]  # fmt: skip
    if lim["small_samples"]:
        counts = ", ".join(f"{esc(s['task'])} on {s['n']}" for s in lim["small_samples"])
        items.append(f"Few records scored ({counts}): these scores are rough estimates, and small "
                     "differences between versions may be noise.")  # fmt: skip
    if lim["unscored_metrics"]:
        items.append(
            "Metrics that could not be computed: " + esc("; ".join(lim["unscored_metrics"])) + "."
        )
    items.append("The scores measure the eval split of each task as the recipe defines it; they "
                 "say nothing about data from other sites, devices or populations.")  # fmt: skip
    stated = "".join(f"<li>{esc(n)}</li>" for n in lim["stated"]) or (
        "<li class=muted>None stated (set <code>acceptance.notes</code> in the recipe).</li>"
    )
    problems = integrity["problems"] + integrity["acceptance_log"]
    check = ("<p>" + badge("verified") + " every file of every version and init.safetensors match "
             "their sha256, and the acceptance log's chain is intact.</p>") if not problems else (
        "<ul>" + "".join(f"<li class=bad>{esc(p)}</li>" for p in problems) + "</ul>")  # fmt: skip
    check += "".join(f"<p class=muted>{esc(n)}</p>" for n in integrity.get("notes") or [])
    return (
        "<section><h2>4. Limits</h2><h3>What the evaluation does not cover</h3><ul>"
        + "".join(f"<li>{i}</li>" for i in items)
        + f"</ul><h3>Known limits and risks stated in the recipe</h3><ul>{stated}</ul>"
        + f'<h3 id="integrity">Integrity</h3>{check}</section>'
    )
