"""Export formats: file names, modes, errors and result records shared by the merge modules."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from medqwen_cli.errors import MedqwenError

MODES = ("routed", "dense", "peft")
FORMAT = 2  # 2: a routed export of a version with protected branches (every other export
# is written as 1, which a medqwen from before branches reads as it did)
MANIFEST_FILE = "merge_manifest.json"
REPORT_FILE = "merge_report.json"
ADAPTER_FILE = "medqwen_adapter.safetensors"  # routed: adapter tensors, checkpoint key layout
REMOTE_FILE = "modeling_medqwen_routed.py"  # routed: a copy of merge/remote.py
INDEX_FILE = "model.safetensors.index.json"
PEFT_CONFIG, PEFT_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
DEFAULT_CALIBRATION_SAMPLES = 256
HELD_OUT_SHARE = 0.2
REMOTE_CLASSES = {  # base model_type -> (config class, model class) in remote.py
    "qwen2_vl": ("MedqwenRoutedQwen2VLConfig", "MedqwenRoutedQwen2VLForConditionalGeneration"),
    "qwen2_5_vl": (
        "MedqwenRoutedQwen2_5_VLConfig",
        "MedqwenRoutedQwen2_5_VLForConditionalGeneration",
    ),
}
# Files of a model directory that are neither weights nor config: tokenizer, processor, templates.
SUPPORT_SUFFIXES = (".json", ".txt", ".jinja", ".model", ".tiktoken")
NOT_SUPPORT = ("config.json", INDEX_FILE, "medqwen_preset.json", MANIFEST_FILE, REPORT_FILE)
TENSOR_NAMES = ("router.weight", "lora_A", "lora_B", "init_A", "init_B", "scale")

# progress(done, total, phase): done 0 as a phase starts; total 0 when it has no countable steps
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
