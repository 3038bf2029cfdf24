"""The forgetting study's runs: the recipe of a cell, and one job (A, then B from that A).

A job is one (method, seed, strategy, pair) cell. Its A version is trained once per job folder
(`OUT/<base>-<method>-seed<S>/after-A`, under a lock: the cells of a (method, seed) share it)
and fingerprinted by `a_digest` (its loss and scores). When the results file already names the
A version of that (method, seed) (`a_versions`), a job continues only from that version: an A
retrained here must reproduce the digest bit for bit, else the job stops and says how to bring
the right A over (copy its folder from the machine that trained it). Every cell records the
CPU it ran on (`env`), the A it continued from (`A`: digest, adapter file sha256, CPU).
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

from study_stats import PAIRS, TASK_A, TASK_B, TASK_C, a_digest


class StudyError(Exception):
    """A job that must not go on (its A version is not the one the results file pairs)."""


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def code_version() -> str:
    """The commit of the code that runs (`git describe`, "-dirty" when tracked files differ)."""
    import subprocess

    try:
        done = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=12"],
                              cwd=Path(__file__).parent, capture_output=True, text=True,
                              timeout=60, check=True)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "not a git checkout"
    return done.stdout.strip()


def run_env(fingerprint: str) -> dict:
    """What a run ran on: runs on different base builds are not pairs."""
    import torch

    return {"base_fingerprint": fingerprint, "cpu": cpu_model(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "code": code_version(),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                       f"Python {platform.python_version()}"}  # fmt: skip


def fingerprint_of(run: dict) -> str | None:
    return (run.get("env") or {}).get("base_fingerprint")


def recipe_for(args: argparse.Namespace, method: str, seed: int, sets: list[str] = ()) -> dict:
    """The recipe of one run: matched total rank (lora/pissa one rank-16 adapter, moelora and
    sslora 4 experts of rank 4, top-2), the recipe schema's defaults otherwise."""
    import yaml

    tasks = (TASK_A, TASK_B, TASK_C)
    recipe = {
        "model": {"base": args.base, "dtype": "float32", "device": "cpu"},
        "adapter": {"method": method, "experts": 4, "top_k": 2, "rank": 16, "seed": seed},
        "tasks": {t: {"datasets": [{"path": f"builtin:{t}"}]} for t in tasks},
        "train": {
            "lr": args.lr, "max_steps": args.steps, "batch_size": args.batch, "seed": seed,
            "warmup_ratio": 0.1, "checkpoint_every": 1000, "log_every": 10,
            "max_image_pixels": 56 * 56, "max_length": 256,
        },
        "eval": {"batch_size": 16, "max_samples": args.samples, "scoring": "likelihood"},
    }  # fmt: skip
    for item in sets:
        key, _, value = item.partition("=")
        *parents, leaf = key.split(".")
        node = recipe
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)  # typed like a recipe value: 1 -> int, 0.5 -> float
    return recipe


def strategy_overrides(strategy: str) -> list[str]:
    """The `--set` items of a strategy of the B phase: `none`, `replay:F` / `replay:F:N`
    (continual.replay F, with a buffer of N records of A), or `protect:E` (protected branches at
    continual.protect_energy E; A's basis computed from its data before B, as --protect does).
    `joint` (the upper bound) is no B phase: A and B mixed from the init for twice the steps."""
    kind, *values = strategy.split(":")
    if kind in ("none", "joint") and not values:
        return []
    if kind == "replay" and 1 <= len(values) <= 2:
        sets = [f"continual.replay={float(values[0])}"]
        return sets + ([f"continual.replay_per_task={int(values[1])}"] if len(values) == 2 else [])
    if kind == "protect" and len(values) == 1:
        return ["continual.protect=true", f"continual.protect_energy={float(values[0])}"]
    raise ValueError(
        f"unknown strategy {strategy!r}: none, replay:F, replay:F:N, protect:E or joint"
    )


def label_of(method: str, sets: list[str], strategy: str = "none") -> str:
    return " ".join([method, *sets, *([strategy] if strategy != "none" else [])])


def cell_settings(args: argparse.Namespace) -> dict:
    """What must match for a finished job to count for this invocation."""
    return {k: getattr(args, k) for k in ("base", "steps", "lr", "batch", "samples", "eval_every")}


def _scores(bundle, version: str, tasks: list[str], out: Path) -> dict:
    """Accuracy, answer NLL and per-record p(reference) of `version` on `tasks`."""
    from medqwen_cli.evaluation.api import evaluate_bundle

    predictions = out / f"predictions-{version}.jsonl"
    result = evaluate_bundle(
        bundle, version=None if version == "base" else version, base_only=version == "base",
        tasks=tasks, save_predictions=predictions,
    )  # fmt: skip
    per_task: dict[str, dict] = {}
    for task in result.tasks:
        scores = task.by_type["vqa_closed"]
        per_task[task.task] = {
            "acc": scores["accuracy"], "nll": scores["answer_nll"], "n": task.n, "records": [],
        }  # fmt: skip
    for line in predictions.read_text(encoding="utf-8").splitlines():
        p = json.loads(line)
        p_ref = p["scores"][p["reference"]]
        correct = int(p["prediction"] == p["reference"])
        per_task[p["task"]]["records"].append([p["id"], correct, round(p_ref, 6)])
    return per_task


def _curve(bundle, version: str) -> list[list[float]]:
    """[[step, accuracy, answer NLL], ...] of A while `version` trained: the step-stamped rows
    `continue --watch` published to the bundle's evals.jsonl."""
    points: dict[int, dict] = {}
    for row in bundle.read_evals():
        ours = row.get("version") == version and row.get("step") is not None
        if ours and row["task"] == TASK_A and row["metric"] in ("accuracy", "answer_nll"):
            points.setdefault(int(row["step"]), {})[row["metric"]] = row["value"]
    return [[s, p.get("accuracy"), p.get("answer_nll")] for s, p in sorted(points.items())]


def die_with_parent() -> None:
    """Worker initializer: on Linux a worker ends when the study process does (killing the study
    would otherwise leave its workers training into the study's directories)."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def adapter_sha256(bundle_dir: Path, version: str) -> str:
    """sha256 of the version's adapter file: the A version itself, not its scores."""
    from medqwen_cli.bundle import Bundle

    path = Bundle.open(bundle_dir).version_dir(version) / "adapter.safetensors"
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _phase_a(job: dict, root: Path, snapshot: Path, a_json: Path) -> None:
    """init-experts and train A; the A version is kept as `snapshot`, its scores in `a_json`."""
    from medqwen_cli.bundle import Bundle
    from medqwen_cli.init_experts import init_experts
    from medqwen_cli.recipe import build_recipe
    from medqwen_cli.training.run import continue_bundle

    shutil.rmtree(snapshot, ignore_errors=True)
    work = root / "a-work"
    shutil.rmtree(work, ignore_errors=True)
    summary = init_experts(build_recipe(job["recipe"], check_paths=False), work / "bundle")
    result = continue_bundle(work / "bundle", task=TASK_A, evaluate=False)
    scores = _scores(Bundle.open(work / "bundle"), result.version, [TASK_A, TASK_B, TASK_C], work)
    fingerprint = Bundle.open(work / "bundle").manifest.base["fingerprint"]
    phase = {
        "version": result.version, "trainable_params": summary.trainable_params,
        "loss": result.final_loss, "seconds": result.seconds, "scores": scores,
        "env": run_env(fingerprint), "adapter_sha256": adapter_sha256(work / "bundle", result.version),
    }  # fmt: skip
    os.replace(work / "bundle", snapshot)
    shutil.rmtree(work, ignore_errors=True)
    a_json.write_text(json.dumps(phase), encoding="utf-8")


def _checked_a(job: dict, snapshot: Path, a_json: Path) -> dict:
    """The A phase's record, after checking the snapshot is the version it describes and the
    version the results file pairs this (method, seed) with (`job["expect_a"]`)."""
    phase = json.loads(a_json.read_text(encoding="utf-8"))
    digest = a_digest({"loss_A": phase["loss"], "after_A": phase["scores"]})
    recorded = phase.get("adapter_sha256")
    if recorded and adapter_sha256(snapshot, phase["version"]) != recorded:
        raise StudyError(
            f"{snapshot}'s adapter is not the one {a_json.name} scored (sha256 differs): "
            f"remove {snapshot.parent} and run again"
        )
    expect = job.get("expect_a")
    if expect and digest != expect["digest"]:
        raise StudyError(
            f"{job['method']} seed {job['seed']}: the A version here (digest {digest}, trained "
            f"on {phase['env']['cpu']}) is not the one the results file pairs ({expect['digest']}, "
            f"trained on {expect.get('cpu', 'an unrecorded CPU')}); its cells would not pair. "
            f"Copy {snapshot.name}/ and {a_json.name} from the job folder of the machine that "
            f"trained it into {snapshot.parent}, or start a new results file (--results)"
        )
    return {**phase, "digest": digest}


def run_job(job: dict) -> dict:
    """Train and score one (method, seed) through A (unless another job of the same (method,
    seed) did: the A phase runs under a lock), then each requested (strategy, pair) from that A
    version; returns its result."""
    import torch

    torch.set_num_threads(1)
    from medqwen_cli.bundle import Bundle
    from medqwen_cli.init_experts import init_experts
    from medqwen_cli.recipe import build_recipe
    from medqwen_cli.training.run import continue_bundle, train_bundle

    start = time.perf_counter()
    root = Path(job["dir"])
    snapshot, a_json = root / "after-A", root / "after-A.json"
    root.mkdir(parents=True, exist_ok=True)
    with (root / "a.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not a_json.is_file():  # phase A (shared by the cells)
            _phase_a(job, root, snapshot, a_json)
    phase_a = _checked_a(job, snapshot, a_json)
    out = {
        "trainable_params": phase_a["trainable_params"], "loss_A": phase_a["loss"],
        "after_A": phase_a["scores"], "env": phase_a.get("env"), "cells": {},
        "A": {"digest": phase_a["digest"], "adapter_sha256": phase_a.get("adapter_sha256"),
              "cpu": phase_a["env"]["cpu"]},
    }  # fmt: skip
    for strategy, pair in job["cells"]:  # every strategy's B phase starts from the same A
        task = PAIRS[pair]
        work = root / re.sub(r"[^A-Za-z0-9.]+", "-", f"{strategy}-{pair}")
        shutil.rmtree(work, ignore_errors=True)
        if strategy == "joint":  # from the same init (seeded): A and B mixed, same total steps
            init_experts(build_recipe(job["recipe"], check_paths=False), work / "bundle")
            steps = 2 * job["recipe"]["train"]["max_steps"]
            result = train_bundle(
                work / "bundle", tasks=[TASK_A, task], watch=[TASK_A],
                eval_every=job["eval_every"], overrides=[f"train.max_steps={steps}"],
            )  # fmt: skip
        else:
            shutil.copytree(snapshot, work / "bundle")
            result = continue_bundle(
                work / "bundle", task=task, evaluate=False, watch=[TASK_A],
                eval_every=job["eval_every"], overrides=strategy_overrides(strategy),
            )  # fmt: skip
        bundle = Bundle.open(work / "bundle")
        scores = _scores(bundle, result.version, [TASK_A, task], work)
        out["cells"].setdefault(strategy, {})[pair] = {
            "task": task, "loss": result.final_loss, "seconds": result.seconds,
            "steps": result.steps, "curve": _curve(bundle, result.version), "scores": scores,
            "continual": result.continual,
            "env": run_env(bundle.manifest.base["fingerprint"]),
        }  # fmt: skip
        shutil.rmtree(work, ignore_errors=True)
    out["seconds"] = round(time.perf_counter() - start, 1)
    return out


def base_scores(args: argparse.Namespace, out: Path) -> dict:
    """The base's zero-shot scores on A, B and C (method-independent: computed once per base
    fingerprint)."""
    from medqwen_cli.bundle import Bundle
    from medqwen_cli.init_experts import init_experts
    from medqwen_cli.recipe import build_recipe

    work = Path(tempfile.mkdtemp(prefix="base-", dir=out))
    try:
        init_experts(build_recipe(recipe_for(args, "lora", 0), check_paths=False), work / "b")
        return _scores(Bundle.open(work / "b"), "base", [TASK_A, TASK_B, TASK_C], work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
