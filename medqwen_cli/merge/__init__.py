"""`medqwen merge`: a bundle version as a deployable model, in three modes, each honest about it.

Token routing makes the update depend on the token. Per adapted layer (W0: m x n, E experts of
rank d, total rank r = E d, scale s)

    y = W0 x  -  W_res x  +  s * sum_i w_i(x) B_i A_i x,        W_res = (s/E) B0 A0

so no single dense weight reproduces it. The modes:

routed  (exact)   base weights (hard-linked, or copied) + every adapter tensor (experts, routers,
                  the W_res factors) + config.json + a self-contained modeling file (`remote.py`,
                  written as `modeling_medqwen_routed.py`). Loads with `load_merged(DIR)` (a
                  transformers class with medqwen's routed layers) or with transformers alone
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

Protected branches (a version of `medqwen continue --protect`): each branch j of a layer is one
more set of experts of the same kind, with its own router, scale and residual, added to the
layer's sum. routed carries their tensors (`<layer>.branches.<j>.*`) and rebuilds them (exact);
dense and peft fold every set alike, each with its own mean gates (`mean_gates` keys
`<layer>.branches.<j>`): P and Q are the sets' factors side by side, so rank(D) <= 2r (1 + b)
(r (1 + b) without residuals). Single-expert sets (lora, pissa) have wbar = [1]: their fold is
exact, and a lora version's peft export is one LoRA of rank r (1 + b) holding every branch.

Calibration: the training split of the calibration tasks (default: the version's lineage tasks),
`calibration_samples` records drawn evenly over the tasks (seeded), the last 20% held out.
Fidelity is measured on the files written, loaded back the way a user loads them, over every
non-padding token t of the held-out samples (z: routed logits, z': the export's):

    relative logit error  = mean_t ||z'_t - z_t||_2 / ||z_t||_2     (and the max over t)
    top-1 agreement       = mean_t [argmax z'_t == argmax z_t]

plus, when the tasks have an eval split, each task's headline metric before (routed) and after,
on the records, n and scoring of `medqwen evaluate` (its own functions read and score them).

Writes go to a temporary directory beside `out` that is renamed into place at the end. An
existing `out` is refused unless `overwrite`, and even then only an earlier export (or an empty
directory) is replaced. Library code: returns data, never prints; `progress(done, total, phase)`
hears each phase start (done 0) and each step of the phases that have steps.

Modules: `export` (merge_bundle: options, staging, publishing), `calibration` (records, mean
gates), `writers` (the folded update and the three writers), `loading` (load_merged and each
mode's loader), `fidelity` (logits and task metrics), `core` (file names, modes, errors,
results; no torch), `remote` (the modeling file of routed exports: torch and transformers only).
The names below are imported on first use, so `medqwen_cli.merge.core` (the modes the CLI offers)
loads without torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from medqwen_cli._lazy import lazy_exports
from medqwen_cli.merge.core import (
    DEFAULT_CALIBRATION_SAMPLES,
    MANIFEST_FILE,
    MODES,
    REPORT_FILE,
    Fidelity,
    MergeError,
    MergeResult,
)

if TYPE_CHECKING:
    from medqwen_cli.merge.calibration import calibration_records, calibration_tasks, mean_gates
    from medqwen_cli.merge.export import merge_bundle
    from medqwen_cli.merge.fidelity import logit_fidelity, task_metrics
    from medqwen_cli.merge.loading import load_merged, read_manifest
    from medqwen_cli.merge.writers import lowrank_svd, update_factors

_LAZY = {  # name -> module that defines it (these modules import torch)
    "calibration_records": "calibration",
    "calibration_tasks": "calibration",
    "mean_gates": "calibration",
    "merge_bundle": "export",
    "logit_fidelity": "fidelity",
    "task_metrics": "fidelity",
    "load_merged": "loading",
    "read_manifest": "loading",
    "lowrank_svd": "writers",
    "update_factors": "writers",
}


__getattr__ = lazy_exports(__name__, _LAZY)


__all__ = [
    "DEFAULT_CALIBRATION_SAMPLES",
    "MANIFEST_FILE",
    "MODES",
    "REPORT_FILE",
    "Fidelity",
    "MergeError",
    "MergeResult",
    "calibration_records",
    "calibration_tasks",
    "load_merged",
    "logit_fidelity",
    "lowrank_svd",
    "mean_gates",
    "merge_bundle",
    "read_manifest",
    "task_metrics",
    "update_factors",
]
