"""The sections of a recipe (model, data, regime, tasks, train, eval, continual): pydantic
models that document themselves (their descriptions feed docs/recipes.md and --help)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator

# The `adapter` section: defined with the method's facts, re-exported for recipe importers.
from medqwen_cli.adapters.config import DEFAULT_EXCLUDE as DEFAULT_EXCLUDE
from medqwen_cli.adapters.config import DEFAULT_TARGETS as DEFAULT_TARGETS
from medqwen_cli.adapters.config import Method as Method
from medqwen_cli.adapters.config import regexes

# Built-in synthetic tasks (medqwen_cli.data.synthetic generates them on first use, no download).
BUILTIN_TASKS = (
    "xray", "ct", "mri", "fundus", "pathology", "dicom", "cxr-rules", "ct-rules", "derm-rules",
    "seq-cxr", "seq-ct", "seq-derm", "seq-mammo", "seq-thyroid",  # data.synthetic.sequence order
)  # fmt: skip

Scoring = Literal["likelihood", "generate"]  # = choices.SCORINGS (tests/test_recipe.py)
DatasetFormat = Literal[
    "auto", "jsonl", "llava", "messages", "vqa_rad", "slake", "pathvqa", "medmnist", "csv", "dicom",
    "hf",
]  # fmt: skip
# Record types: each decides its prompt, scoring and headline metric (evaluation/tasks.py).
TaskType = Literal["vqa_closed", "vqa_open", "report", "classification", "pope"]
TASK_TYPES: tuple[str, ...] = get_args(TaskType)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Strict):
    base: str = Field(
        "tiny-qwen2-vl",
        description="Base model: a local directory, a Hub id in the local cache, an alias "
        "(Qwen2-VL, Qwen2.5-VL, ...) or a built-in preset (tiny-qwen2-vl, tiny-qwen2.5-vl, nano-qwen2-vl).",
    )
    revision: str | None = Field(None, description="Hub revision (commit) when `base` is a Hub id.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="Weight dtype of the frozen base: auto = float32 on CPU, bfloat16 on GPU.",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Device: auto = cuda when available, else cpu."
    )


class DatasetSpec(_Strict):
    path: str = Field(
        ...,
        description="A file or directory of data, or builtin:NAME for a generated task "
        f"({', '.join(BUILTIN_TASKS)}). Relative paths are relative to the recipe file.",
    )
    name: str | None = Field(None, description="Name in logs and reports (default: from the path).")
    format: DatasetFormat = Field("auto", description="Reader; auto detects it from the content.")
    task_type: TaskType | None = Field(
        None, description="Force a task type for every record (default: from the data)."
    )
    split: str = Field(
        "train", description="Split used for training (file <split>.jsonl in a dir)."
    )
    eval_split: str | None = Field("eval", description="Split used for evaluation, or null.")
    weight: float = Field(1.0, gt=0, description="Sampling weight under the weighted regime.")
    max_samples: int | None = Field(None, ge=1, description="Use at most this many records.")

    @property
    def display_name(self) -> str:
        if self.name:
            return self.name
        if self.path.startswith("builtin:"):
            return self.path.split(":", 1)[1]
        return Path(self.path).stem or Path(self.path).name


class DataConfig(_Strict):
    datasets: list[DatasetSpec] = Field(
        default_factory=list, description="Datasets `medqwen train` uses when no --task is given."
    )


class RegimeConfig(_Strict):
    kind: Literal["mixed", "weighted", "temperature", "round_robin", "sequential"] = Field(
        "mixed",
        description="How datasets mix: mixed (by size), weighted (by weight), temperature "
        "(size^(1/T)), round_robin, sequential (one after another).",
    )
    temperature: float = Field(2.0, gt=0, description="T of the temperature regime.")


class TaskConfig(_Strict):
    datasets: list[DatasetSpec] = Field(..., min_length=1, description="Datasets of this task.")
    regime: RegimeConfig | None = Field(None, description="Regime inside this task (default: top).")
    description: str | None = Field(None, description="Free text shown in reports.")


class TrainConfig(_Strict):
    lr: float = Field(2e-4, gt=0, description="Learning rate of the expert factors.")
    router_lr: float | None = Field(
        None, gt=0, description="Learning rate of routers (default: lr)."
    )
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    epochs: float = Field(1.0, gt=0, description="Passes over the data (ignored with max_steps).")
    max_steps: int | None = Field(None, ge=1, description="Optimizer steps; overrides epochs.")
    batch_size: int = Field(4, ge=1, description="Samples per device per micro-batch.")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="Share of steps spent warming up.")
    schedule: Literal["cosine", "linear", "constant"] = Field(
        "cosine", description="Learning-rate schedule after warmup."
    )
    grad_clip: float | None = Field(1.0, gt=0, description="Max gradient norm (null: no clipping).")
    seed: int = Field(0, description="Seed for data order, dropout and sampling.")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto = fp32 on CPU, bf16 autocast on GPU."
    )
    gradient_checkpointing: bool = Field(False, description="Trade compute for memory.")
    trackers: list[Literal["tensorboard"]] = Field(
        default_factory=list,
        description="Experiment trackers (accelerate): tensorboard writes to <bundle>/logs/ when "
        "the tensorboard package is installed.",
    )
    checkpoint_every: int = Field(100, ge=1, description="Save resumable state every N steps.")
    log_every: int = Field(10, ge=1, description="Write a train_log.jsonl line every N steps.")
    max_image_pixels: int = Field(
        224 * 224, ge=28 * 28, description="Images are resized to at most this many pixels."
    )
    max_length: int = Field(
        2048, ge=16, description="Token cap per sample (prompt truncated first)."
    )


class EvalConfig(_Strict):
    tasks: list[str] | None = Field(
        None,
        description="Tasks `evaluate` scores by default, and `continue` scores besides those "
        "seen so far (default: the tasks seen).",
    )
    batch_size: int = Field(8, ge=1, description="Samples per evaluation batch.")
    max_new_tokens: int = Field(
        64, ge=1, description="Generation cap for open answers and reports."
    )
    max_samples: int | None = Field(
        None,
        ge=1,
        description="Evaluate at most N samples per task, taken in turn from each dataset, "
        "record type and POPE answer (deterministic).",
    )
    scoring: Scoring = Field(
        "likelihood", description="Closed questions: score candidates, or generate and parse."
    )
    finding_keywords: list[str] = Field(
        default_factory=list, description="Clinical terms for the report finding-F1."
    )


class ContinualConfig(_Strict):
    replay: float = Field(
        0.0,
        ge=0,
        le=0.9,
        description="Replay: share of every batch (rounded up, at least one record when above 0) "
        "drawn from the train splits of the lineage's earlier tasks, equal weight per task "
        "(`continue --replay`). 0: no replay.",
    )
    replay_per_task: int | None = Field(
        None,
        ge=1,
        description="Replay from a fixed, seeded buffer of this many records per earlier task "
        "(only a sample of old data is kept); null: every record of the earlier tasks.",
    )
    protect: bool = Field(
        False,
        description="Protected branches (`continue --protect`): freeze every adapter trained so "
        "far and train a new branch per layer whose input side lies outside the span of the "
        "earlier tasks' layer inputs, so their outputs cannot move there; the run also records "
        "its own task's input basis, so a later --protect needs no old data.",
    )
    protect_energy: float = Field(
        0.99,
        gt=0,
        le=1,
        description="Share of each earlier task's layer-input energy its basis keeps (GPM's "
        "threshold): higher keeps old tasks closer, leaves fewer directions for new ones.",
    )
    protect_records: int = Field(
        100,
        ge=1,
        description="Train records per task (a seeded sample) whose layer inputs make its basis.",
    )
    protect_exclude: list[str] = Field(
        default_factory=list,
        description="Adapted layers (regular expressions searched in the layer's name, like "
        "adapter.exclude) that get no protected branch: they keep the earlier tasks' adapters, "
        "frozen, and the run records no basis for an input only they read. E.g. [down_proj$]: "
        "the MLP's output projection reads the widest input (the largest bases) and is where "
        "later branches move old tasks' outputs most. Every later protected run must exclude "
        "at least the same layers.",
    )
    protect_full: Literal["fit", "refuse"] = Field(
        "fit",
        description="When a layer's input has no room for every earlier task's basis at "
        "protect_energy and a new branch: `fit` keeps the directions worth most to some earlier "
        "task that leave the branch its rank (and says which layers and how much each task "
        "kept); `refuse` stops before training, naming an energy that fits.",
    )

    @field_validator("protect_exclude")
    @classmethod
    def _regexes_compile(cls, value: list[str]) -> list[str]:
        return regexes(value)
