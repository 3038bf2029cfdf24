"""The publish phase of a run: the trained adapters become a new immutable version.

Main process only, and only once training finished: the adapter, `metrics.json` (the run's
result), `data.json` (what it trained on: digests, no record text), `train_log.jsonl`, and the
continual strategy's record and files (`continual.json`, protect's bases). Then the watch's
curve goes to evals.jsonl, stamped with the new version's id, and the work directory goes.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medqwen_cli.bundle import Bundle
from medqwen_cli.continual import CONTINUAL_FILE, DATA_FILE

if TYPE_CHECKING:
    from medqwen_cli.training.data import TrainData
    from medqwen_cli.training.plan import TrainPlan
    from medqwen_cli.training.result import TrainResult
    from medqwen_cli.training.watch import Watch


def publish(
    plan: TrainPlan,
    bundle: Bundle,
    accelerator: Any,
    model: Any,
    summary: TrainResult,
    watch: Watch | None,
    data: TrainData,
    *,
    command: str,
) -> None:
    """Append the trained adapters as a version, then the watch's rows to evals.jsonl, and
    remove the work directory (main process); fills `summary.version` and `summary.curves`.

    `bundle.append_version` keeps the main process's manifest current. The other processes
    wrote nothing: they open the bundle again, after the barrier, for the version's id.
    """
    from medqwen_cli.adapters import adapter_state_dict
    from medqwen_cli.training.watch import headline_points

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        curve = sorted(watch.rows(), key=lambda r: r["step"]) if watch is not None else []
        summary.curves = headline_points(curve)
        log = plan.run_dir / "train_log.jsonl"
        files = {"train_log.jsonl": log} if log.is_file() else {}
        record = plan.strategy.record(model)
        if record is not None:
            files.update(plan.strategy.files(plan.run_dir))
        entry = bundle.append_version(
            adapter_state_dict(model),
            command=command,
            tasks=plan.tasks,
            recipe=plan.recipe_data,
            parent=plan.parent,
            json_files={
                "metrics.json": {
                    "train": {
                        k: v
                        for k, v in summary.to_dict().items()
                        if k not in ("evaluations", "notes", "acceptance")
                    }
                },
                DATA_FILE: data.data,
                **({CONTINUAL_FILE: record.to_json()} if record is not None else {}),
            },
            files=files or None,
        )
        summary.version = entry.id
        # only now that the version exists: evals.jsonl never names a version that does not
        curve = [{**row, "version": entry.id} for row in curve]
        bundle.append_evals(curve)
        summary.curves = headline_points(curve)
        remove_run_dir(bundle, plan.run_dir)
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        published = Bundle.open(bundle.root)
        summary.version = published.head or ""
        if watch is not None:  # the curve the main process published
            summary.curves = headline_points(
                [r for r in published.read_evals() if r.get("step") is not None
                 and r.get("version") == summary.version]
            )  # fmt: skip


def remove_run_dir(bundle: Bundle, run_dir: Path) -> None:
    """Remove a published run's work directory, and the work area when nothing else is in it."""
    shutil.rmtree(run_dir, ignore_errors=True)
    if bundle.work_dir.is_dir() and not any(bundle.work_dir.iterdir()):
        bundle.work_dir.rmdir()
