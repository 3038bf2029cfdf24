"""The audit report of a bundle as data: what `medqwen report --format json` writes and the HTML
page shows (the schema, field by field: docs/report.md). It only reads files; no torch.

    bundle       path, base model and fingerprint, method, newest and default version, counts
    integrity    every checksum of the bundle verified now (`Bundle.verify`), and the
                 acceptance log's hash chain
    lineage      every version, oldest first: parent, task, strategy, recipe and data digests,
                 parameters, training time and final loss, acceptance status
    performance  per task the headline and per record type scores of every row (base, then the
                 newest version's lineage), the accuracy matrix R, ACC/BWT/FWT/forgetting,
                 per-task drops, the forgetting curves recorded with --watch
    acceptance   per version, the criteria in force, each check and verdict, the overrides
    limits       what the evaluation does not cover, and the recipe's stated limits and risks

No record text is read or written: data appears as task, split, record count and sha256.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from medqwen_cli import __version__
from medqwen_cli.acceptance import NO_CRITERIA, read_log, statuses
from medqwen_cli.acceptance.judge import latest_scores
from medqwen_cli.bundle import BASE_VERSION, Bundle
from medqwen_cli.bundle.manifest import VERSION_FILE, VersionInfo, now
from medqwen_cli.continual import CONTINUAL_FILE, DATA_FILE
from medqwen_cli.continual.record import parse_record

REPORT_SCHEMA = 1
SMALL_N = 100  # fewer eval records than this: the score is a rough estimate (said in limits)


def recipe_digest(recipe: dict[str, Any]) -> str:
    """sha256 of the resolved recipe as canonical JSON (sorted keys, no spaces)."""
    text = json.dumps(recipe, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def build_report(bundle: Bundle) -> dict[str, Any]:
    """The whole report of `bundle` (see the module docstring)."""
    m = bundle.manifest
    log, chain_problems = read_log(bundle.root)
    status = statuses(log)
    records = bundle.read_evals()
    damaged = bundle.damaged_files()  # every file hashed once, here; the reads below trust it
    problems = [f"{path}: {problem}" for path, problem in damaged.items()]
    broken = {path.split("/")[1] for path in damaged if path.startswith("versions/")}
    lineage = [_version(bundle, e, status, e.id not in broken) for e in m.versions]
    newest = [e.id for e in bundle.lineage(m.head)] if m.head else []
    performance = _performance(records, [v for v in lineage if v["id"] in newest and v["tasks"]])
    return {
        "schema": REPORT_SCHEMA,
        "generated": now(),
        "medqwen_version": __version__,
        "bundle": {
            "path": str(bundle.root),
            "name": bundle.root.name,
            "format_version": m.format_version,
            "created": m.created,
            "written_by": m.medqwen_version,
            "base": {
                k: m.base.get(k)
                for k in ("name", "model_id", "model_type", "revision", "source", "fingerprint")
            },
            "method": m.adapter_settings,
            "newest_version": m.head,
            "default_version": bundle.head if m.versions else None,
            "versions": len(m.versions),
            "tasks": m.tasks_seen,
        },  # fmt: skip
        "integrity": {
            "verified": not problems and not chain_problems,
            "problems": problems,
            "acceptance_log": chain_problems,
            "notes": bundle.unpublished_notes(),  # harmless: left by an interrupted write
        },  # fmt: skip
        "lineage": lineage,
        "performance": performance,
        "acceptance": _acceptance(lineage, log),
        "limits": _limits(bundle, lineage, performance),
    }


def _version(bundle: Bundle, entry: Any, status: dict[str, str], intact: bool) -> dict[str, Any]:
    """One version of the lineage table: its facts, read from its files (`intact`: every one of
    them matched its sha256 when `build_report` checked them)."""
    out: dict[str, Any] = {
        "id": entry.id, "parent": entry.parent, "tasks": list(entry.tasks),
        "created": entry.created, "command": entry.command,
        "acceptance": status.get(entry.id, NO_CRITERIA), "intact": intact,
    }  # fmt: skip
    if not intact:  # said in integrity; the facts that need its files stay None
        return {**out, "strategy": None, "recipe_sha256": None, "data": [], "parameters": None,
                "train": None, "description": {}}  # fmt: skip
    vdir = bundle.root / "versions" / entry.id
    info = VersionInfo.model_validate_json((vdir / VERSION_FILE).read_text(encoding="utf-8"))

    def read(name: str) -> dict[str, Any]:
        return json.loads((vdir / name).read_text(encoding="utf-8")) if name in info.files else {}

    data, train = read(DATA_FILE), read("metrics.json").get("train") or {}
    record = read(CONTINUAL_FILE)
    strategy = parse_record(record, f"{entry.id}/{CONTINUAL_FILE}").describe() if record else "none"
    tasks_cfg = info.recipe.get("tasks") or {}
    return {
        **out,
        "strategy": strategy if entry.tasks else None,
        "recipe_sha256": recipe_digest(info.recipe),
        "criteria": info.recipe.get("acceptance"),
        "notes": list((info.recipe.get("acceptance") or {}).get("notes") or []),
        "description": {t: (tasks_cfg.get(t) or {}).get("description") for t in entry.tasks},
        "data": [
            {k: d.get(k) for k in ("task", "split", "records", "sha256")}
            for d in data.get("datasets", [])
        ],
        "parameters": _parameters(bundle, entry),
        "train": {k: train.get(k) for k in ("steps", "samples", "seconds", "final_loss",
                                            "mean_loss", "precision")} if train else None,
    }  # fmt: skip


def _parameters(bundle: Bundle, entry: Any) -> dict[str, int | None]:
    """{total, trained, added}: adapter parameters of the version, those its training could
    change (a protected version: its newest branch only), and those it added to its parent's."""
    from medqwen_cli._io import numel
    from medqwen_cli.bundle import objects
    from medqwen_cli.bundle.summary import _branches

    try:
        shapes = objects.shapes(bundle, entry.id)
        parent = objects.shapes(bundle, entry.parent) if entry.parent else {}
    except Exception:  # a damaged file: integrity says which
        return {"total": None, "trained": None, "added": None}
    total = numel(shapes.values())
    trained = _branches(shapes).get("trained_in_version", total) if entry.tasks else 0
    return {"total": total, "trained": trained, "added": total - numel(parent.values())}


def _performance(records: list[dict[str, Any]], versions: list[dict[str, Any]]) -> dict[str, Any]:
    """Scores, the accuracy matrix and its figures over base + the newest version's lineage."""
    from medqwen_cli.evaluation.summary import HEADLINE_MEAN
    from medqwen_cli.forgetting import forgetting_report

    scores, headline = latest_scores(records)
    rows = [BASE_VERSION] + [v["id"] for v in versions]
    tasks = list(dict.fromkeys(t for v in versions for t in v["tasks"]))
    out: dict[str, Any] = {"rows": rows, "tasks": tasks, "scores": [], "matrix": None,
                           "figures": [], "per_task": [], "curves": []}  # fmt: skip
    for task in tasks:
        for row in rows:
            metric = headline.get((row, task))
            if metric is None:
                continue
            value, n = scores[(row, task, metric)][:2]
            types = sorted({k[2].split(".")[0] for k in scores if k[:2] == (row, task)
                            and "." in k[2]}) if metric == HEADLINE_MEAN else []  # fmt: skip
            out["scores"].append({
                "version": row, "task": task, "metric": metric, "value": value, "n": n,
                "types": {t: _type_score(scores, row, task, t) for t in types},
            })  # fmt: skip
    if not versions:
        return out
    metrics = {t: next((headline[(r, t)] for r in reversed(rows) if (r, t) in headline), None)
               for t in tasks}  # fmt: skip
    lineage = [(v["id"], v["tasks"]) for v in versions]
    cells = [
        r for r in records if r.get("task") in metrics and r.get("metric") == metrics[r["task"]]
    ]
    report = forgetting_report(
        cells, lineage, name="", metric={t: m or "" for t, m in metrics.items()}
    )
    data = report.model_dump(mode="json")
    out.update(matrix=data["matrix"], per_task=data["per_task"], curves=data["curves"],
               figures=[f.model_dump(mode="json") for f in report.figures()])  # fmt: skip
    return out


def _type_score(scores: dict, row: str, task: str, kind: str) -> dict[str, Any]:
    """The record type's headline metric (evaluation/tasks.py) on `row`, `task`."""
    from medqwen_cli.evaluation.tasks import HEADLINE_METRICS

    metric = f"{kind}.{HEADLINE_METRICS.get(kind, '')}"
    value, n = scores.get((row, task, metric), (None, None))[:2]
    return {"metric": metric, "value": value, "n": n}


def _acceptance(lineage: list[dict[str, Any]], log: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per trained version: the criteria of its recipe, its verdicts and overrides."""
    out = []
    for v in lineage:
        if not v["tasks"]:
            continue
        mine = [line for line in log if line.get("version") == v["id"]]
        verdicts = [line for line in mine if line.get("kind") == "verdict"]
        out.append({
            "version": v["id"], "status": v["acceptance"], "criteria": v.get("criteria"),
            "verdict": verdicts[-1] if verdicts else None,
            "overrides": [line for line in mine if line.get("kind") == "override"],
        })  # fmt: skip
    return out


def _limits(bundle: Bundle, lineage: list[dict[str, Any]], perf: dict[str, Any]) -> dict[str, Any]:
    """What the evaluation leaves out, and the limits and risks the recipes state."""
    scored = {(s["version"], s["task"]) for s in perf["scores"]}
    first = {t: i for i, v in reversed(list(enumerate(perf["rows"]))) for t in
             next((x["tasks"] for x in lineage if x["id"] == v), [])}  # fmt: skip
    gaps = []  # the cells the figures need: base (zero-shot) and every row from training on
    for i, row in enumerate(perf["rows"]):
        missing = [t for t in perf["tasks"] if (row, t) not in scored
                   and (i == 0 or i >= first.get(t, 0))]  # fmt: skip
        if missing:
            gaps.append({"version": row, "tasks": missing})
    never = [t for t in perf["tasks"] if not any(s["task"] == t and s["version"] != BASE_VERSION
                                                  for s in perf["scores"])]  # fmt: skip
    small = sorted({(s["task"], s["n"]) for s in perf["scores"] if s["n"] and s["n"] < SMALL_N})
    unscored = sorted({f"{s['task']}: {t['metric']}" for s in perf["scores"]
                       for t in s["types"].values() if t["value"] is None})  # fmt: skip
    notes = list(dict.fromkeys(n for v in lineage for n in v.get("notes") or []))
    notes += [n for n in (bundle.manifest.recipe.get("acceptance") or {}).get("notes") or []
              if n not in notes]  # fmt: skip
    return {
        "never_scored": never, "missing_scores": gaps,
        "small_samples": [{"task": t, "n": n} for t, n in small],
        "unscored_metrics": unscored, "stated": notes,
    }  # fmt: skip
