"""`merge_bundle`: options checked, the export staged beside `out`, measured, then published."""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from medqwen_cli import __version__
from medqwen_cli.adapters import adapter_layers
from medqwen_cli.bundle import Bundle, atomic_write_json, sha256_file
from medqwen_cli.loading import AdaptedModel, bundle_recipe, load_adapted
from medqwen_cli.merge.calibration import (
    batches,
    calibration_records,
    calibration_tasks,
    collator,
    mean_gates,
)
from medqwen_cli.merge.core import (
    DEFAULT_CALIBRATION_SAMPLES,
    FORMAT,
    MANIFEST_FILE,
    MODES,
    REPORT_FILE,
    MergeError,
    MergeResult,
    ProgressFn,
)
from medqwen_cli.merge.fidelity import logit_fidelity, task_metrics
from medqwen_cli.merge.loading import load_export
from medqwen_cli.merge.writers import write_dense, write_peft, write_routed
from medqwen_cli.settings import Settings


def merge_bundle(
    bundle: Bundle | str | os.PathLike[str] | None,
    out: str | os.PathLike[str],
    *,
    version: str | None = None,
    mode: str = "routed",
    calibration: Sequence[str] | None = None,
    calibration_samples: int = DEFAULT_CALIBRATION_SAMPLES,
    copy_base: bool = False,
    overwrite: bool = False,
    rank: int | None = None,
    evaluate: bool = True,
    command: str = "medqwen merge",
    progress: ProgressFn | None = None,
    settings: Settings | None = None,
) -> MergeResult:
    """Export `version` (default head) of `bundle` to `out` (see the module docstring).

    routed is measured only when `calibration` tasks are given; dense and peft always are.
    `rank` (peft only) keeps that many singular components per layer (default: all, exact).
    `evaluate` adds the task metric before/after where the tasks have an eval split.
    `settings` (default: `Settings.from_env()`): the default bundle and the data cache.
    `progress(done, total, phase)` is called as each phase starts (done 0; total 0 for a phase
    without countable steps: reading data, loading, writing) and after each step of the others
    (batches of calibration and fidelity, records of the task metric).
    """
    t0 = time.perf_counter()
    _check_options(mode, rank, calibration_samples, copy_base)
    settings = settings if settings is not None else Settings.from_env()
    bundle = bundle if isinstance(bundle, Bundle) else Bundle.open(bundle, settings)
    data_dir = settings.data_cache_dir
    vid = bundle.resolve_version(version)
    out = _check_out(Path(out), overwrite, bundle)
    recipe = bundle_recipe(bundle)
    measure = mode != "routed" or bool(calibration)
    tasks = calibration_tasks(bundle, recipe, vid, calibration) if measure else []
    if measure:
        _phase(progress, f"reading calibration data ({', '.join(tasks)})")
    fit, held = (
        calibration_records(recipe, tasks, calibration_samples, data_dir=data_dir)
        if measure
        else ([], [])
    )
    options = {"dtype": recipe.model.dtype, "device": recipe.model.device}
    _phase(progress, f"loading {vid}")
    adapted = load_adapted(
        bundle, vid, **options, max_pixels=recipe.train.max_image_pixels,
        cache_dir=settings.cache_dir,
    )  # fmt: skip
    layers = dict(adapter_layers(adapted.model))
    collate = collator(adapted.processor, recipe)
    gates = mean_gates(adapted.model, batches(fit, collate, recipe), progress) if fit else {}

    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        peft_rank = None
        _phase(progress, f"writing the {mode} export")
        if mode == "routed":
            base_weights = write_routed(adapted, staging, copy_base)
        elif mode == "dense":
            base_weights = write_dense(adapted, gates, staging)
        else:
            peft_rank, truncation = write_peft(adapted, gates, staging, rank)
            base_weights = "not included"
        manifest = _manifest(bundle, vid, adapted, mode, base_weights, command, staging)
        atomic_write_json(staging / MANIFEST_FILE, manifest)
        fidelity = None
        if held:
            _phase(progress, "loading the export back")
            candidate, how = load_export(
                staging, manifest, **options, measuring=True, cache_dir=settings.cache_dir
            )
            held_batches = batches(held, collate, recipe)
            fidelity = logit_fidelity(adapted.model, candidate, held_batches, progress)
            fidelity.measured_with = how
            if evaluate:
                fidelity.task_metrics, fidelity.task_metrics_note = task_metrics(
                    recipe, tasks, adapted.model, candidate, adapted.processor,
                    data_dir=data_dir, progress=progress,
                )  # fmt: skip
            del candidate
        calib = None
        if measure:
            calib = {
                "tasks": tasks,
                "split": "train",
                "fit_samples": len(fit),
                "held_out_samples": len(held),
                "requested_samples": calibration_samples,
            }
        report = {
            "mode": mode,
            "exact": mode == "routed",
            "calibration": calib and {**calib, "held_out_ids": [r.id for r in held]},
            "fidelity": fidelity and asdict(fidelity),
            "mean_gates": {name: g.tolist() for name, g in gates.items()},
            "peft": {"rank": peft_rank, "dropped_energy": truncation} if mode == "peft" else None,
        }
        atomic_write_json(staging / REPORT_FILE, report)
        manifest.update(calibration=calib, fidelity=report["fidelity"])
        manifest["files"][REPORT_FILE] = sha256_file(staging / REPORT_FILE)
        atomic_write_json(staging / MANIFEST_FILE, manifest)
        _publish(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return MergeResult(
        out=str(out), mode=mode, exact=mode == "routed", bundle=str(bundle.root), version=vid,
        base=adapted.base.model_id, base_weights=base_weights, layers=len(layers),
        files=sorted(p.name for p in out.iterdir()), calibration=calib, fidelity=fidelity,
        peft_rank=peft_rank, seconds=round(time.perf_counter() - t0, 3),
    )  # fmt: skip


def _phase(progress: ProgressFn | None, phase: str) -> None:
    """A phase without countable steps starts."""
    if progress is not None:
        progress(0, 0, phase)


def _check_options(mode: str, rank: int | None, samples: int, copy_base: bool) -> None:
    problems = []
    if mode not in MODES:
        problems.append(f"unknown mode {mode!r} (modes: {', '.join(MODES)})")
    if rank is not None and mode != "peft":
        problems.append("a rank applies to --mode peft only")
    if rank is not None and rank < 1:
        problems.append(f"rank must be at least 1, got {rank}")
    if samples < 2:
        problems.append(
            f"calibration needs at least 2 samples (1 to fit, 1 held out), got {samples}"
        )
    if copy_base and mode != "routed":
        problems.append("--copy-base applies to --mode routed only (dense rewrites the weights)")
    if problems:
        raise MergeError("; ".join(problems), "see `medqwen merge --help`")


def _check_out(out: Path, overwrite: bool, bundle: Bundle) -> Path:
    out = out.expanduser().resolve()
    protected = [bundle.root, Path(str(bundle.manifest.base.get("path") or bundle.root))]
    for path in protected:
        path = path.resolve()
        if out == path or out in path.parents:
            raise MergeError(
                f"--out {out} would replace {path} (the bundle or its base model)",
                "choose a directory outside the bundle and the base model",
            )
    if out.exists() and not out.is_dir():
        raise MergeError(f"{out} exists and is not a directory", "choose another --out path")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise MergeError(
                f"output directory {out} already exists", "pass --overwrite to replace it"
            )
        if not (out / MANIFEST_FILE).is_file():
            raise MergeError(
                f"{out} is not a medqwen export (no {MANIFEST_FILE}); --overwrite only replaces "
                "an earlier export",
                "choose a new or empty --out directory",
            )
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def _publish(staging: Path, out: Path) -> None:
    """Rename the finished export into place; an earlier export is moved aside, then removed."""
    umask = os.umask(0)
    os.umask(umask)
    # mkdtemp/mkstemp make owner-only entries; an export is meant to be shared like any model
    # directory. Hard-linked base files keep their own mode (chmod would change the base's).
    os.chmod(staging, 0o777 & ~umask)
    for path in staging.iterdir():
        if path.is_file() and path.stat().st_nlink == 1:
            os.chmod(path, 0o666 & ~umask)
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.rename(out, old / out.name)
    os.rename(staging, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _manifest(
    bundle: Bundle,
    vid: str,
    adapted: AdaptedModel,
    mode: str,
    base_weights: str,
    command: str,
    staging: Path,
) -> dict[str, Any]:
    """Provenance of an export; `files` holds the sha256 of every file medqwen wrote itself."""
    info = bundle.read_version_info(vid)
    branches = any(layer.branches for _, layer in adapter_layers(adapted.model))
    return {
        "format": FORMAT if mode == "routed" and branches else 1,
        "kind": "medqwen-export",
        "mode": mode,
        "exact": mode == "routed",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "medqwen_version": __version__,
        "command": command,
        "source": {
            "bundle": str(bundle.root),
            "version": vid,
            "version_sha256": bundle.entry(vid).sha256,
            "lineage_tasks": info.lineage_tasks,
            "method": bundle.manifest.adapter_settings,
        },
        "base": adapted.base.to_dict(),
        "base_weights": base_weights,
        "files": {
            p.name: sha256_file(p)
            for p in sorted(staging.iterdir())
            if p.is_file() and not p.name.startswith("base-") and p.name != MANIFEST_FILE
        },
    }
