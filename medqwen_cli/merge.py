"""`medqwen merge`: a bundle version as a deployable model, in three modes, each honest about it.

Token routing makes the update depend on the token. Per adapted layer (W0: m x n, E experts of
rank d, total rank r = E d, scale s)

    y = W0 x  -  W_res x  +  s * sum_i w_i(x) B_i A_i x,        W_res = (s/E) B0 A0

so no single dense weight reproduces it. The modes:

routed  (exact)   base weights (hard-linked, or copied) + every adapter tensor (experts, routers,
                  the W_res factors) + config.json + a self-contained modeling file
                  (`merge_remote.py`). Loads with `load_merged(DIR)` (a transformers class with
                  medqwen's routed layers) or with transformers alone
                  (`AutoModelForImageTextToText.from_pretrained(DIR, trust_remote_code=True)`);
                  outputs equal the bundle applied to the base.
dense   (approx.) W = W0 - W_res + s * sum_i wbar_i B_i A_i written into the base's own shards:
                  a plain transformers model. wbar_i = mean gate of expert i (0 when not in the
                  top-k) over the non-padding tokens of the calibration samples.
peft    (approx.) the same update D = s * sum_i wbar_i B_i A_i - W_res as a PEFT LoRA adapter.
                  D = P Q with P = [s B diag(wbar (x) 1_d), -(s/E) B0] (m x 2r), Q = [A; A0]
                  (2r x n): rank(D) <= 2r (r without residual). Its SVD comes from two thin
                  QRs; `rank` components are kept (default: all of them, lossless), with
                  lora_alpha = rank so PEFT's scaling is 1.

Calibration: the training split of the calibration tasks (default: the version's lineage tasks),
`calibration_samples` records drawn evenly over the tasks (seeded), the last 20% held out.
Fidelity is measured on the files written, loaded back the way a user loads them, over every
non-padding token t of the held-out samples (z: routed logits, z': the export's):

    relative logit error  = mean_t ||z'_t - z_t||_2 / ||z_t||_2     (and the max over t)
    top-1 agreement       = mean_t [argmax z'_t == argmax z_t]

plus, when the tasks have an eval split, each task's headline metric before (routed) and after.

Writes go to a temporary directory beside `out` that is renamed into place at the end. An
existing `out` is refused unless `overwrite`, and even then only an earlier export (or an empty
directory) is replaced. Library code: returns data, never prints.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from medqwen_cli import __version__
from medqwen_cli.adapters import adapter_layers, canonical_from_checkpoint_key
from medqwen_cli.adapters.naming import canonical_module_name
from medqwen_cli.bundle import Bundle, atomic_write_json, save_tensors, sha256_file, tensor_shapes
from medqwen_cli.errors import MedqwenError
from medqwen_cli.loading import AdaptedModel, bundle_recipe, load_adapted
from medqwen_cli.modeling import (
    SUPPORTED_TYPES,
    BaseInfo,
    checkpoint_files,
    data_cache_dir,
    load_base,
    resolve_base,
    select_device,
    select_dtype,
)
from medqwen_cli.recipe import AdapterConfig, Recipe

MODES = ("routed", "dense", "peft")
FORMAT = 1
MANIFEST_FILE = "merge_manifest.json"
REPORT_FILE = "merge_report.json"
ADAPTER_FILE = "medqwen_adapter.safetensors"  # routed: adapter tensors, checkpoint key layout
REMOTE_FILE = "modeling_medqwen_routed.py"  # routed: a copy of merge_remote.py
INDEX_FILE = "model.safetensors.index.json"
PEFT_CONFIG, PEFT_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
DEFAULT_CALIBRATION_SAMPLES = 256
HELD_OUT_SHARE = 0.2
REMOTE_CLASSES = {  # base model_type -> (config class, model class) in merge_remote.py
    "qwen2_vl": ("MedqwenRoutedQwen2VLConfig", "MedqwenRoutedQwen2VLForConditionalGeneration"),
    "qwen2_5_vl": (
        "MedqwenRoutedQwen2_5_VLConfig",
        "MedqwenRoutedQwen2_5_VLForConditionalGeneration",
    ),
}
# Files of a model directory that are neither weights nor config: tokenizer, processor, templates.
_SUPPORT_SUFFIXES = (".json", ".txt", ".jinja", ".model", ".tiktoken")
_NOT_SUPPORT = ("config.json", INDEX_FILE, "medqwen_preset.json", MANIFEST_FILE, REPORT_FILE)
_TENSOR_NAMES = ("router.weight", "lora_A", "lora_B", "init_A", "init_B", "scale")

ProgressFn = Callable[[int, int, str], None]


class MergeError(MedqwenError):
    """An export cannot be made or loaded (existing output, missing calibration data, ...)."""


@dataclass
class Fidelity:
    """How closely an export follows the routed model on held-out calibration samples."""

    samples: int
    tokens: int  # non-padding positions compared
    mean_relative_logit_error: float
    max_relative_logit_error: float
    top1_agreement: float
    measured_with: str  # how the export was loaded for the measurement
    task_metrics: list[dict[str, Any]] = field(default_factory=list)  # task, metric, before, after
    task_metrics_note: str | None = None


@dataclass
class MergeResult:
    out: str
    mode: str
    exact: bool
    bundle: str
    version: str
    base: str
    base_weights: str  # routed: hardlink | copy; dense: rewritten; peft: not included
    layers: int
    files: list[str]
    calibration: dict[str, Any] | None
    fidelity: Fidelity | None
    peft_rank: int | None
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- the export


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
) -> MergeResult:
    """Export `version` (default head) of `bundle` to `out` (see the module docstring).

    routed is measured only when `calibration` tasks are given; dense and peft always are.
    `rank` (peft only) keeps that many singular components per layer (default: all, exact).
    `evaluate` adds the task metric before/after where the tasks have an eval split.
    """
    t0 = time.perf_counter()
    _check_options(mode, rank, calibration_samples, copy_base)
    bundle = bundle if isinstance(bundle, Bundle) else Bundle.open(bundle)
    vid = bundle.resolve_version(version)
    out = _check_out(Path(out), overwrite, bundle)
    recipe = bundle_recipe(bundle)
    measure = mode != "routed" or bool(calibration)
    tasks = calibration_tasks(bundle, recipe, vid, calibration) if measure else []
    fit, held = calibration_records(recipe, tasks, calibration_samples) if measure else ([], [])
    options = {"dtype": recipe.model.dtype, "device": recipe.model.device}
    adapted = load_adapted(bundle, vid, **options, max_pixels=recipe.train.max_image_pixels)
    layers = dict(adapter_layers(adapted.model))
    collate = _collator(adapted.processor, recipe)
    gates = mean_gates(adapted.model, _batches(fit, collate, recipe), progress) if fit else {}

    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        peft_rank = None
        if mode == "routed":
            base_weights = _write_routed(adapted, staging, copy_base)
        elif mode == "dense":
            base_weights = _write_dense(adapted, gates, staging)
        else:
            peft_rank, truncation = _write_peft(adapted, gates, staging, rank)
            base_weights = "not included"
        manifest = _manifest(bundle, vid, adapted, mode, base_weights, command, staging)
        atomic_write_json(staging / MANIFEST_FILE, manifest)
        fidelity = None
        if held:
            candidate, how = _load_export(staging, manifest, **options, measuring=True)
            held_batches = _batches(held, collate, recipe)
            fidelity = logit_fidelity(adapted.model, candidate, held_batches, progress)
            fidelity.measured_with = how
            if evaluate:
                fidelity.task_metrics, fidelity.task_metrics_note = task_metrics(
                    recipe, tasks, adapted.model, candidate, adapted.processor
                )
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
    return {
        "format": FORMAT,
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
            "method": bundle.manifest.method,
        },
        "base": adapted.base.to_dict(),
        "base_weights": base_weights,
        "files": {
            p.name: sha256_file(p)
            for p in sorted(staging.iterdir())
            if p.is_file() and not p.name.startswith("base-") and p.name != MANIFEST_FILE
        },
    }


# --------------------------------------------------------------------------- calibration


def calibration_tasks(
    bundle: Bundle, recipe: Recipe, version: str, given: Sequence[str] | None
) -> list[str]:
    """The tasks given, else the version's lineage tasks, else the recipe's data.datasets."""
    if given:
        names = list(dict.fromkeys(given))
    else:
        names = list(dict.fromkeys(bundle.read_version_info(version).lineage_tasks))
        names = names or [d.display_name for d in recipe.data.datasets]
    if not names:
        raise MergeError(
            f"no calibration data: version {version} was trained on no task and the recipe has "
            "no data.datasets",
            "name one with --calibration TASK (a recipe task, a dataset path or builtin:NAME)",
        )
    for name in names:
        recipe.task_datasets(name)  # an unknown task fails here, before any model loads
    return names


def calibration_records(recipe: Recipe, tasks: Sequence[str], samples: int) -> tuple[list, list]:
    """(fit, held-out) training-split records: drawn evenly over the tasks, seeded, 20% held."""
    from medqwen_cli.data.readers import load_records

    pools = []
    for name in tasks:
        records = []
        for spec in recipe.task_datasets(name):
            loaded = load_records(
                spec, spec.split, cache_dir=data_cache_dir(),
                max_image_pixels=recipe.train.max_image_pixels,
            )  # fmt: skip
            records += loaded[: spec.max_samples]
        random.Random(f"medqwen-merge:{name}").shuffle(records)
        pools.append(records)
    chosen: list = []
    while len(chosen) < samples and any(pools):  # round robin over the tasks
        for pool in pools:
            if pool and len(chosen) < samples:
                chosen.append(pool.pop(0))
    held = max(1, round(HELD_OUT_SHARE * len(chosen)))
    if len(chosen) - held < 1:
        raise MergeError(
            f"calibration tasks {', '.join(tasks)} have {len(chosen)} training record(s); at least "
            "2 are needed (one to fit the mean gates, one held out)",
            "name tasks with more data through --calibration",
        )
    return chosen[:-held], chosen[-held:]


def _collator(processor: Any, recipe: Recipe) -> Any:
    from medqwen_cli.data.collate import Collator

    return Collator(
        processor, max_image_pixels=recipe.train.max_image_pixels,
        max_length=recipe.train.max_length,
    )  # fmt: skip


def _batches(records: Sequence, collate: Any, recipe: Recipe) -> list[dict[str, Tensor]]:
    size = recipe.eval.batch_size
    out = []
    for i in range(0, len(records), size):
        batch = collate(records[i : i + size])
        batch.pop("labels", None)
        out.append(batch)
    return out


def _to_model(batch: dict[str, Tensor], model: Any) -> dict[str, Tensor]:
    device, dtype = model.device, model.dtype
    return {
        k: v.to(device, dtype) if k == "pixel_values" else v.to(device) for k, v in batch.items()
    }


@torch.no_grad()
def mean_gates(
    model: Any, batches: Sequence[dict[str, Tensor]], progress: ProgressFn | None = None
) -> dict[str, Tensor]:
    """Mean routing weight of each expert, per routed layer, over non-padding tokens: (E,) float64.

    Gates are read from each router's output by a forward hook (0 for experts outside the
    top-k); the padding mask is the one the model-level hook gives every adapter layer (a mask
    of another shape, e.g. vision patches, is ignored and every position counts). Layers without
    a router (lora, pissa) get [1.0].
    """
    sums: dict[str, Tensor] = {}
    counts: dict[str, Tensor] = {}
    handles = []
    for name, layer in adapter_layers(model):
        if layer.router is None:
            continue

        def hook(_module: Any, _args: Any, routing: Any, name: str = name, layer: Any = layer):
            gates = routing.gates.detach().double().reshape(-1, layer.experts)  # (N, E)
            mask = layer.token_mask
            if mask is not None and tuple(mask.shape) == tuple(routing.gates.shape[:-1]):
                keep = mask.reshape(-1).to(gates.device, torch.float64)  # (N,)
            else:
                keep = gates.new_ones(gates.shape[0])  # (N,)
            kept = torch.where(keep[:, None] > 0, gates, torch.zeros_like(gates))  # NaN-safe
            sums[name] = sums.get(name, 0) + (kept * keep[:, None]).sum(0).cpu()
            counts[name] = counts.get(name, 0) + keep.sum().cpu()

        handles.append(layer.router.register_forward_hook(hook))
    try:
        for i, batch in enumerate(batches):
            model(**_to_model(batch, model))
            if progress is not None:
                progress(i + 1, len(batches), "calibrating mean gates")
    finally:
        for handle in handles:
            handle.remove()
    means = {name: sums[name] / counts[name].clamp_min(1.0) for name in sums}
    for name, layer in adapter_layers(model):
        means.setdefault(name, torch.ones(layer.experts, dtype=torch.float64))
    return means


# --------------------------------------------------------------------------- the folded update


def update_factors(layer: Any, gates: Tensor) -> tuple[Tensor, Tensor]:
    """(P, Q), float64 on CPU, with P @ Q = s * sum_i wbar_i B_i A_i - (s/E) B0 A0.

    P: (m, r) or (m, 2r) with the residual, Q: (r, n) or (2r, n).
    """
    s = float(layer.scale)
    cols = gates.double().cpu().repeat_interleave(layer.expert_rank)  # (r,)
    p = [layer.lora_B.detach().double().cpu() * (s * cols)[None, :]]  # (m, r)
    q = [layer.lora_A.detach().double().cpu()]  # (r, n)
    if layer.init_A is not None:
        p.append(layer.init_B.detach().double().cpu() * (-s / layer.experts))  # (m, r)
        q.append(layer.init_A.detach().double().cpu())  # (r, n)
    return torch.cat(p, dim=1), torch.cat(q, dim=0)


def lowrank_svd(p: Tensor, q: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """SVD of P @ Q without forming it: U (m, j), S (j,), Vh (j, n), j <= P's columns."""
    qp, rp = torch.linalg.qr(p)  # (m, a), (a, k)
    qq, rq = torch.linalg.qr(q.t())  # (n, b), (b, k)
    u, s, vh = torch.linalg.svd(rp @ rq.t(), full_matrices=False)  # (a, j), (j,), (j, b)
    return qp @ u, s, vh @ qq.t()


def _checkpoint_prefixes(files: Sequence[Path]) -> dict[str, str]:
    """Canonical module name -> its prefix in the checkpoint (`model.layers.0.mlp.up_proj`)."""
    out = {}
    for file in files:
        for key in tensor_shapes(file):
            canonical = canonical_from_checkpoint_key(key)
            if canonical is not None:
                out[canonical] = key[: -len(".weight")]
    return out


def _missing_in_checkpoint(names: Sequence[str], prefixes: dict[str, str], base: BaseInfo) -> None:
    missing = sorted(set(names) - set(prefixes))
    if missing:
        raise MergeError(
            f"adapted layers without a weight in the base checkpoint {base.path}: "
            f"{', '.join(missing[:4])} (a tied weight?)",
            "exclude tied layers (e.g. lm_head with tie_word_embeddings) from adapter.targets",
        )


def _write_routed(adapted: AdaptedModel, staging: Path, copy_base: bool) -> str:
    """Base shards linked/copied as base-*.safetensors, adapter file, index, config, code."""
    from medqwen_cli import merge_remote

    base = adapted.base
    files = checkpoint_files(base.path)
    weight_map, how = {}, set()
    for file in files:
        target = staging / f"base-{file.name}"
        how.add(_link_or_copy(file.resolve(), target, copy_base))
        weight_map.update(dict.fromkeys(tensor_shapes(target), target.name))
    layers = dict(adapter_layers(adapted.model))
    prefixes = _checkpoint_prefixes(files)
    _missing_in_checkpoint(list(layers), prefixes, base)
    tensors = {
        f"{prefixes[name]}.{key}": value.detach().float()
        for name, layer in layers.items()
        for kind in ("trainable", "frozen")
        for key, value in layer.adapter_tensors(kind).items()
    }
    save_tensors(staging / ADAPTER_FILE, tensors, {"format": "pt", "medqwen": "routed-adapter"})
    weight_map.update(dict.fromkeys(tensors, ADAPTER_FILE))
    total = sum((staging / f).stat().st_size for f in set(weight_map.values()))
    atomic_write_json(
        staging / INDEX_FILE, {"metadata": {"total_size": total}, "weight_map": weight_map}
    )
    first = next(iter(layers.values()))
    config = json.loads((Path(base.path) / "config.json").read_text(encoding="utf-8"))
    config_class, model_class = REMOTE_CLASSES[base.model_type]
    module = Path(REMOTE_FILE).stem
    config["medqwen_routed"] = {
        "format": merge_remote.FORMAT,
        "base_model_type": config["model_type"],
        "base_architectures": config.get("architectures") or [SUPPORTED_TYPES[base.model_type]],
        "adapter_file": ADAPTER_FILE,
        "experts": first.experts,
        "top_k": first.top_k,
        "rank": first.rank,
        "spectral": first.init_A is not None,
        "layers": sorted(layers),
    }
    config["model_type"] = merge_remote.routed_model_type(base.model_type)
    config["architectures"] = [model_class]
    config["auto_map"] = {
        "AutoConfig": f"{module}.{config_class}",
        "AutoModelForImageTextToText": f"{module}.{model_class}",
        "AutoModelForVision2Seq": f"{module}.{model_class}",  # the name in transformers 4.x
    }
    atomic_write_json(staging / "config.json", config)
    shutil.copyfile(merge_remote.__file__, staging / REMOTE_FILE)
    _copy_support_files(Path(base.path), staging)
    return "copy" if how == {"copy"} else "hardlink" if how == {"hardlink"} else "hardlink+copy"


def _link_or_copy(src: Path, dst: Path, copy: bool) -> str:
    """Hard-link `src` to `dst` (same filesystem), else copy it; returns which was done."""
    if not copy:
        try:
            os.link(src, dst)
            return "hardlink"
        except OSError:  # another filesystem, or links not allowed there: copy instead
            pass
    shutil.copyfile(src, dst)
    return "copy"


def _copy_support_files(base: Path, staging: Path) -> None:
    """Tokenizer, processor, generation config and chat template files of the base."""
    for path in sorted(base.iterdir()):
        if (
            path.is_file()
            and path.suffix in _SUPPORT_SUFFIXES
            and path.name not in _NOT_SUPPORT
            and not path.name.startswith(".")
        ):
            shutil.copyfile(path, staging / path.name)


def _write_dense(adapted: AdaptedModel, gates: dict[str, Tensor], staging: Path) -> str:
    """The base's shards with every adapted weight replaced by W0 + P Q (computed in float64
    from the stored W0, saved in its stored dtype); config, index and support files copied."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    base = adapted.base
    files = checkpoint_files(base.path)
    layers = dict(adapter_layers(adapted.model))
    prefixes = _checkpoint_prefixes(files)
    _missing_in_checkpoint(list(layers), prefixes, base)
    by_key = {f"{prefixes[name]}.weight": name for name in layers}
    for file in files:
        with safe_open(str(file), "pt") as handle:
            metadata = handle.metadata() or {"format": "pt"}
        tensors = load_file(str(file))
        for key in tensors.keys() & by_key.keys():
            p, q = update_factors(layers[by_key[key]], gates[by_key[key]])
            w0 = tensors[key]  # (m, n), stored dtype
            tensors[key] = (w0.double() + p @ q).to(w0.dtype)
        save_tensors(staging / file.name, tensors, metadata)
    for name in ("config.json", INDEX_FILE):
        if (Path(base.path) / name).is_file():
            shutil.copyfile(Path(base.path) / name, staging / name)
    _copy_support_files(Path(base.path), staging)
    return "rewritten"


def _write_peft(
    adapted: AdaptedModel, gates: dict[str, Tensor], staging: Path, rank: int | None
) -> tuple[int, dict[str, float]]:
    """adapter_config.json + adapter_model.safetensors; returns (rank, dropped energy per layer).

    The dropped energy of a layer is sum_{j > rank} S_j^2 / sum_j S_j^2 (0: lossless).
    """
    from medqwen_cli.adapters import RoutedLoRALinear

    modules = {  # canonical name -> the module's name in this transformers version
        canonical_module_name(raw): raw
        for raw, module in adapted.model.named_modules()
        if isinstance(module, RoutedLoRALinear)
    }
    tensors, ranks, dropped = {}, {}, {}
    for name, layer in adapter_layers(adapted.model):
        p, q = update_factors(layer, gates[name])
        u, s, vh = lowrank_svd(p, q)
        keep = min(rank or p.shape[1], s.numel())
        root = s[:keep].sqrt()  # (k,)
        key = f"base_model.model.{modules[name]}"
        tensors[f"{key}.lora_A.weight"] = (root[:, None] * vh[:keep]).float()  # (k, n)
        tensors[f"{key}.lora_B.weight"] = (u[:, :keep] * root[None, :]).float()  # (m, k)
        ranks[modules[name]] = keep
        total = float((s**2).sum())
        dropped[name] = float((s[keep:] ** 2).sum()) / total if total > 0 else 0.0
    r = max(ranks.values())
    pattern = {raw: k for raw, k in ranks.items() if k != r}
    base = adapted.base
    config = {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": base.model_id if base.source == "hub-cache" else base.path,
        "revision": base.revision,
        "r": r,
        "lora_alpha": r,  # scaling lora_alpha / r = 1: the factors carry the whole update
        "rank_pattern": pattern,
        "alpha_pattern": dict(pattern),
        "target_modules": sorted(ranks),
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "modules_to_save": None,
        "inference_mode": True,
    }
    save_tensors(staging / PEFT_WEIGHTS, tensors, {"format": "pt"})
    atomic_write_json(staging / PEFT_CONFIG, config)
    return r, dropped


# --------------------------------------------------------------------------- loading exports


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    file = Path(path).expanduser() / MANIFEST_FILE
    if not file.is_file():
        raise MergeError(
            f"{file.parent} is not a medqwen export (no {MANIFEST_FILE})",
            "make one with `medqwen merge BUNDLE --out DIR`",
        )
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MergeError(f"cannot read {file}: {exc}", "re-run `medqwen merge`") from None
    if manifest.get("format", 0) > FORMAT:
        raise MergeError(
            f"{file} has format {manifest.get('format')}, newer than this medqwen reads ({FORMAT})",
            "upgrade medqwen: pip install -U medqwen-cli",
        )
    return manifest


def load_merged(path: str | os.PathLike[str], *, dtype: str = "auto", device: str = "auto") -> Any:
    """The model of an export made by `medqwen merge`, in eval mode.

    routed: the base's transformers class with medqwen's routed layers in place (exact);
    dense: the plain transformers class; peft: the base with the PEFT adapter (a PeftModel;
    needs `peft`). The processor: `medqwen_cli.modeling.load_processor(path)` (routed, dense)
    or the base's (peft).
    """
    path = Path(path).expanduser().resolve()
    model, _ = _load_export(path, read_manifest(path), dtype=dtype, device=device)
    return model


def _load_export(
    path: Path, manifest: dict[str, Any], *, dtype: str, device: str, measuring: bool = False
) -> tuple[Any, str]:
    """(model, how it was loaded). peft: a PeftModel; when `measuring` without peft installed,
    the base with the adapter's factors applied by `_apply_lora` (the same sum PEFT computes)."""
    import transformers

    from medqwen_cli.modeling import _quiet_transformers

    _quiet_transformers()
    device = select_device(device)
    torch_dtype = select_dtype(dtype, device)
    mode = manifest["mode"]
    model_type = manifest["base"]["model_type"]
    cls = getattr(transformers, SUPPORTED_TYPES[model_type])
    if mode == "routed":
        model = _load_routed(path, manifest, cls, torch_dtype)
        how = "medqwen_cli.load_merged (transformers class + medqwen routed layers)"
    elif mode == "dense":
        model = cls.from_pretrained(str(path), dtype=torch_dtype, local_files_only=True)
        how = f"transformers {cls.__name__}.from_pretrained"
    else:
        base, _, _ = load_base(_export_base(manifest), dtype=dtype, device=device)
        try:
            import peft
        except ImportError:
            if not measuring:
                raise MergeError(
                    "loading a --mode peft export needs the `peft` package, which is not installed",
                    "pip install peft (or use --mode dense, which needs nothing beyond transformers)",
                ) from None
            return _apply_lora(base, path), "base + LoRA factors by medqwen (peft not installed)"
        model = peft.PeftModel.from_pretrained(base, str(path), is_trainable=False)
        how = f"peft {peft.__version__} PeftModel.from_pretrained on the base"
    model.to(device).eval().requires_grad_(False)
    return model, how


def _apply_lora(model: Any, path: Path) -> Any:
    """Forward hooks adding B (A x) to each target of a peft export (scaling 1: alpha = r)."""
    from medqwen_cli.bundle import load_tensors

    tensors = load_tensors(path / PEFT_WEIGHTS)
    for name, module in model.named_modules():
        key = f"base_model.model.{name}"
        if f"{key}.lora_A.weight" not in tensors:
            continue
        a = tensors[f"{key}.lora_A.weight"].to(module.weight.device)  # (k, n)
        b = tensors[f"{key}.lora_B.weight"].to(module.weight.device)  # (m, k)

        def hook(_m: Any, args: tuple, out: Tensor, a: Tensor = a, b: Tensor = b) -> Tensor:
            return out + ((args[0].to(a.dtype) @ a.t()) @ b.t()).to(out.dtype)

        module.register_forward_hook(hook)
    return model.eval().requires_grad_(False)


def _export_base(manifest: dict[str, Any]) -> BaseInfo:
    base = manifest["base"]
    where = base["path"] if Path(base["path"]).is_dir() else base["name"]
    info = resolve_base(where, base.get("revision"))
    if info.fingerprint != base["fingerprint"]:
        raise MergeError(
            f"base model at {info.path} has fingerprint {info.fingerprint}, the export was made "
            f"on {base['fingerprint']} ({base['model_id']})",
            "put the original base model back where the manifest says",
        )
    return info


def _load_routed(path: Path, manifest: dict[str, Any], cls: Any, torch_dtype: Any) -> Any:
    """The standard class from the linked base shards, then medqwen's routed layers injected
    with the adapter tensors (checksum verified)."""
    from medqwen_cli.adapters import inject_adapters, load_adapter_state
    from medqwen_cli.bundle import load_tensors

    adapter = path / ADAPTER_FILE
    expected = manifest["files"].get(ADAPTER_FILE)
    if not adapter.is_file() or sha256_file(adapter) != expected:
        raise MergeError(
            f"{adapter} is missing or does not match its checksum in {MANIFEST_FILE}",
            "re-run `medqwen merge` to rebuild the export",
        )
    raw = json.loads((path / "config.json").read_text(encoding="utf-8"))
    settings = raw.pop("medqwen_routed")
    raw.pop("auto_map", None)
    raw["model_type"], raw["architectures"] = (
        settings["base_model_type"],
        settings["base_architectures"],
    )
    config = cls.config_class.from_dict(raw)
    # The index lists the adapter tensors too; the plain class reports them as unused.
    model = cls.from_pretrained(str(path), config=config, dtype=torch_dtype, local_files_only=True)
    tensors = {_canonical_key(k): v for k, v in load_tensors(adapter).items()}
    trainable = ("lora_A", "lora_B", "router.weight")
    init = {k: v for k, v in tensors.items() if not k.endswith(trainable)}
    inject_adapters(model, AdapterConfig.model_validate(manifest["source"]["method"]), init)
    load_adapter_state(model, {k: v for k, v in tensors.items() if k.endswith(trainable)})
    return model


def _canonical_key(key: str) -> str:
    """`model.layers.0.mlp.up_proj.router.weight` ->
    `language_model.layers.0.mlp.up_proj.router.weight` (module part made canonical)."""
    for name in _TENSOR_NAMES:
        if key.endswith("." + name):
            return f"{canonical_module_name(key[: -len(name) - 1])}.{name}"
    raise MergeError(f"unexpected tensor {key} in {ADAPTER_FILE}", "re-run `medqwen merge`")


# --------------------------------------------------------------------------- fidelity


@torch.no_grad()
def logit_fidelity(
    reference: Any,
    candidate: Any,
    batches: Sequence[dict[str, Tensor]],
    progress: ProgressFn | None = None,
) -> Fidelity:
    """Relative logit error and top-1 agreement of `candidate` against `reference` over the
    non-padding tokens of `batches` (see the module docstring)."""
    tokens, rel_sum, rel_max, agree, samples = 0, 0.0, 0.0, 0, 0
    for i, batch in enumerate(batches):
        ref = reference(**_to_model(batch, reference)).logits  # (B, L, V)
        cand = candidate(**_to_model(batch, candidate)).logits  # (B, L, V)
        for row, mask in enumerate(batch["attention_mask"].bool()):  # row by row: less memory
            z = ref[row][mask.to(ref.device)].float()  # (T, V) non-padding tokens
            z2 = cand[row][mask.to(cand.device)].float().to(z.device)  # (T, V)
            rel = (z2 - z).norm(dim=-1) / z.norm(dim=-1).clamp_min(1e-12)  # (T,)
            tokens += rel.numel()
            rel_sum += float(rel.double().sum())
            rel_max = max(rel_max, float(rel.max())) if rel.numel() else rel_max
            agree += int((z2.argmax(-1) == z.argmax(-1)).sum())
            samples += 1
        if progress is not None:
            progress(i + 1, len(batches), "measuring fidelity")
    return Fidelity(
        samples=samples, tokens=tokens, mean_relative_logit_error=rel_sum / max(tokens, 1),
        max_relative_logit_error=rel_max, top1_agreement=agree / max(tokens, 1), measured_with="",
    )  # fmt: skip


def task_metrics(
    recipe: Recipe, tasks: Sequence[str], reference: Any, candidate: Any, processor: Any
) -> tuple[list[dict[str, Any]], str | None]:
    """Each task's headline metric on its eval split (first eval.max_samples records), with the
    routed model (before) and the export (after), and under `parts` each record type's own
    headline (a mixed task's headline is their mean); the note says which tasks were skipped."""
    from medqwen_cli.data.readers import load_records
    from medqwen_cli.evaluation.runner import Runner
    from medqwen_cli.evaluation.summary import score_task_predictions

    candidate = _unwrap_peft(candidate)  # the Runner reads transformers' attributes
    rows, skipped = [], []
    for name in tasks:
        specs = [s for s in recipe.task_datasets(name) if s.eval_split]
        if not specs:
            skipped.append(name)
            continue
        records = []
        for spec in specs:
            records += load_records(
                spec, spec.eval_split, cache_dir=data_cache_dir(),
                max_image_pixels=recipe.train.max_image_pixels,
            )  # fmt: skip
        records = records[: recipe.eval.max_samples]
        row: dict[str, Any] = {"task": name, "n": len(records), "scoring": recipe.eval.scoring}
        for label, model in (("before", reference), ("after", candidate)):
            runner = Runner(
                model, processor, batch_size=recipe.eval.batch_size,
                max_new_tokens=recipe.eval.max_new_tokens,
                max_image_pixels=recipe.train.max_image_pixels, max_length=recipe.train.max_length,
            )  # fmt: skip
            scored = score_task_predictions(
                name, records, runner.run(records, recipe.eval.scoring),
                split=",".join(s.eval_split for s in specs),
                findings=recipe.eval.finding_keywords or None,
            )  # fmt: skip
            row["metric"], row[label] = scored.headline_metric, scored.headline
            if scored.headline is None:  # undefined, never read as 0: say why
                row[f"{label}_reason"] = scored.headline_reason
            for kind, scores in scored.by_type.items():  # each record type's own headline
                part = row.setdefault("parts", {}).setdefault(f"{kind}.{scores.headline}", {})
                part[label] = scores.headline_value
        rows.append(row)
    note = f"no eval split for: {', '.join(skipped)}" if skipped else None
    return rows, note


def _unwrap_peft(model: Any) -> Any:
    """A PeftModel's transformers model (its LoRA layers in place), else the model itself."""
    try:
        from peft import PeftModel
    except ImportError:
        return model
    return model.get_base_model() if isinstance(model, PeftModel) else model
