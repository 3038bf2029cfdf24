"""Recipes: one pydantic model for everything a run needs, loaded from YAML or JSON.

A recipe is validated as a whole: every problem (unknown key, wrong type, missing dataset) is
collected and reported at once with its dotted path, and a misspelt key gets a "did you mean".
`--set a.b=value` overrides any field; the value is parsed as YAML and typed by the schema.

Relative dataset paths are resolved against the directory of the recipe file, so a recipe can be
moved together with its data and a resolved recipe (stored in a bundle) needs no working directory.
Dataset paths of the form `builtin:NAME` name a task the package generates itself (no download).
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

# The `adapter` section: defined with the method's facts, re-exported for recipe importers.
from medqwen_cli.adapters.config import DEFAULT_EXCLUDE as DEFAULT_EXCLUDE
from medqwen_cli.adapters.config import DEFAULT_TARGETS as DEFAULT_TARGETS
from medqwen_cli.adapters.config import AdapterConfig
from medqwen_cli.adapters.config import Method as Method
from medqwen_cli.acceptance.schema import AcceptanceConfig, NewTaskCriteria, TaskCriteria
from medqwen_cli.errors import RecipeError

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
    protect_full: Literal["fit", "refuse"] = Field(
        "fit",
        description="When a layer's input has no room for every earlier task's basis at "
        "protect_energy and a new branch: `fit` keeps the directions worth most to some earlier "
        "task that leave the branch its rank (and says which layers and how much each task "
        "kept); `refuse` stops before training, naming an energy that fits.",
    )


class Recipe(_Strict):
    model: ModelConfig = Field(default_factory=ModelConfig, description="The frozen base model.")
    adapter: AdapterConfig = Field(default_factory=AdapterConfig, description="The adapter method.")
    data: DataConfig = Field(default_factory=DataConfig, description="Training data of `train`.")
    regime: RegimeConfig = Field(default_factory=RegimeConfig, description="How datasets mix.")
    tasks: dict[str, TaskConfig] = Field(
        default_factory=dict, description="Named tasks for `train --task` and `continue --task`."
    )
    train: TrainConfig = Field(default_factory=TrainConfig, description="Optimisation.")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="Evaluation.")
    continual: ContinualConfig = Field(
        default_factory=ContinualConfig,
        description="How a run keeps the lineage's earlier tasks (docs/continual.md).",
    )
    acceptance: AcceptanceConfig = Field(
        default_factory=AcceptanceConfig,
        description="Criteria a new version must meet to become the default (docs/report.md).",
    )

    def task_datasets(self, name: str) -> list[DatasetSpec]:
        """Datasets of task `name`: a recipe task, a dataset of `data.datasets` by name, or a
        dataset path / builtin:NAME given directly."""
        if name in self.tasks:
            return list(self.tasks[name].datasets)
        named = [d for d in self.data.datasets if d.display_name == name]
        if named:
            return named
        if name.startswith("builtin:") or Path(name).exists():
            return [DatasetSpec(path=str(Path(name).resolve()) if Path(name).exists() else name)]
        known = ", ".join(sorted(self.tasks)) or "none"
        if "/" in name or "\\" in name or name.startswith((".", "~")):  # meant as a path
            raise RecipeError(
                f"dataset path {name!r} does not exist ({Path(name).expanduser().absolute()}); "
                f"nor is it a task of the recipe (tasks: {known})",
                "check the path (a directory with train.jsonl / eval.jsonl, or a data file), "
                "or give a recipe task or builtin:NAME",
            )
        close = difflib.get_close_matches(name, list(self.tasks), n=1)
        raise RecipeError(
            f"unknown task {name!r}: not a task of the recipe (tasks: {known}) nor an existing path",
            f"did you mean {close[0]!r}?"
            if close
            else "define it under `tasks:` in the recipe, or pass a dataset path or builtin:NAME",
        )


# --------------------------------------------------------------------------- loading


def _read_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise RecipeError(
            f"recipe file not found: {path}", "check the path; `ls recipes/` lists shipped ones"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise RecipeError(
            f"recipe {path} is not UTF-8 text", "save it as UTF-8 YAML or JSON"
        ) from None
    if not text.strip():
        raise RecipeError(f"recipe {path} is empty", "start from recipes/debug/tiny.yaml")
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        elif isinstance(exc, json.JSONDecodeError):
            where = f" at line {exc.lineno}, column {exc.colno}"
        problem = getattr(exc, "problem", None) or getattr(exc, "msg", None) or "parse error"
        raise RecipeError(
            f"recipe {path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}{where}: {problem}",
            "fix the syntax there (indentation, a missing colon or quote)",
        ) from None
    if data is None:
        raise RecipeError(f"recipe {path} is empty", "start from recipes/debug/tiny.yaml")
    if not isinstance(data, dict):
        raise RecipeError(
            f"recipe {path} must be a mapping of sections, found {type(data).__name__}",
            "top-level keys are: " + ", ".join(Recipe.model_fields),
        )
    return data


def _inner_model(annotation: Any, _part: str) -> Any:
    """The pydantic model inside `X`, `X | None`, `list[X]` or `dict[str, X]`, else None."""
    args = getattr(annotation, "__args__", None)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in args or ():
        inner = _inner_model(arg, _part)
        if inner is not None:
            return (
                _ContainerOf(inner)
                if getattr(annotation, "__origin__", None) in (list, dict)
                else inner
            )
    return None


class _ContainerOf:
    """Marks a list/dict of models: the next path part is an index or key, then the model."""

    def __init__(self, model: type[BaseModel]) -> None:
        self.model = model


def _suggest(key: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(key, choices, n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}?" if close else f"valid keys: {', '.join(choices)}"


def _problems(exc: ValidationError, raw: dict[str, Any]) -> list[tuple[str, str]]:
    problems = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        path = ".".join(loc) or "(top)"
        if err["type"] == "extra_forbidden":
            choices = _valid_keys(loc[:-1])
            message = f"unknown key {loc[-1]!r}; {_suggest(loc[-1], choices)}"
        elif err["type"] == "missing":
            message = "required field is missing"
        else:
            given = err.get("input")
            shown = repr(given) if not isinstance(given, dict | list) else type(given).__name__
            message = f"{err['msg']} (got {shown[:60]})"
        problems.append((path, message))
    return problems


def _valid_keys(loc: list[str]) -> list[str]:
    current: Any = Recipe
    for part in loc:
        if isinstance(current, _ContainerOf):
            current = current.model  # skip the index/key
            continue
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(part)
            current = _inner_model(field.annotation, part) if field else None
    if isinstance(current, _ContainerOf):
        current = current.model
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def parse_override(item: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (["a", "b", "c"], value parsed as YAML)."""
    if "=" not in item:
        raise RecipeError(
            f"--set {item!r} is not of the form key.path=value", "example: --set train.lr=1e-4"
        )
    key, value = item.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise RecipeError(f"--set {item!r} has an empty key", "example: --set adapter.rank=16")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    return parts, parsed


def _check_override_path(parts: list[str]) -> None:
    """Refuse `--set` on a path the schema does not have, with a suggestion."""
    current: Any = Recipe
    for i, part in enumerate(parts):
        if isinstance(current, _ContainerOf):
            current = current.model
            continue  # this part is a list index or a dict key
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            dotted = ".".join(parts[:i])
            raise RecipeError(
                f"--set {'.'.join(parts)}: {dotted!r} is a value, it has no field {part!r}",
                f"set {dotted} itself, e.g. --set {dotted}=...",
            )
        field = current.model_fields.get(part)
        if field is None:
            where = ".".join(parts[:i]) or "the recipe"
            raise RecipeError(
                f"--set {'.'.join(parts)}: {where} has no field {part!r}",
                _suggest(part, list(current.model_fields)),
            )
        current = _inner_model(field.annotation, part)


def check_overrides(overrides: list[str]) -> list[str]:
    """The dotted keys of `--set` items, each checked against the schema (no recipe needed)."""
    keys = []
    for item in overrides:
        parts, _ = parse_override(item)
        _check_override_path(parts)
        keys.append(".".join(parts))
    return keys


def override_recipe(recipe: Recipe, overrides: list[str], *, source: str = "recipe") -> Recipe:
    """A copy of a loaded `recipe` (e.g. the one stored in a bundle) with `--set` items applied,
    validated as a whole like `load_recipe`; dataset paths are not checked (see load_recipe)."""
    if not overrides:
        return recipe
    raw = apply_overrides(recipe_to_dict(recipe), overrides)
    _resolve_paths(raw, Path.cwd())
    return build_recipe(raw, source=source, check_paths=False)


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `--set` items to a raw recipe dict (in place, also returned)."""
    for item in overrides:
        parts, value = parse_override(item)
        _check_override_path(parts)
        node: Any = raw
        for part in parts[:-1]:
            if isinstance(node, list):
                node = node[int(part)]
                continue
            if not isinstance(node.get(part), dict | list):
                node[part] = {}
            node = node[part]
        if isinstance(node, list):
            node[int(parts[-1])] = value
        else:
            node[parts[-1]] = value
    return raw


def _resolve_paths(raw: dict[str, Any], base_dir: Path) -> None:
    def fix(specs: Any) -> None:
        for spec in specs if isinstance(specs, list) else []:
            path = spec.get("path") if isinstance(spec, dict) else None
            if isinstance(path, str) and not path.startswith("builtin:"):
                p = Path(path).expanduser()
                spec["path"] = str(p if p.is_absolute() else (base_dir / p).resolve())

    data = raw.get("data")
    if isinstance(data, dict):
        fix(data.get("datasets"))
    tasks = raw.get("tasks")
    if isinstance(tasks, dict):
        for task in tasks.values():
            if isinstance(task, dict):
                fix(task.get("datasets"))


def dataset_problems(recipe: Recipe) -> list[tuple[str, str]]:
    """Datasets whose path does not exist (or names an unknown built-in task)."""
    problems = []
    groups = [("data.datasets", recipe.data.datasets)] + [
        (f"tasks.{name}.datasets", task.datasets) for name, task in recipe.tasks.items()
    ]
    for prefix, specs in groups:
        for i, spec in enumerate(specs):
            where = f"{prefix}.{i}.path"
            if spec.path.startswith("builtin:"):
                name = spec.path.split(":", 1)[1]
                if name not in BUILTIN_TASKS:
                    problems.append(
                        (
                            where,
                            f"unknown built-in task {name!r}; {_suggest(name, list(BUILTIN_TASKS))}",
                        )
                    )
            elif not Path(spec.path).exists():
                problems.append((where, f"path does not exist: {spec.path}"))
    return problems


def build_recipe(
    raw: dict[str, Any], *, source: str = "recipe", check_paths: bool = True
) -> Recipe:
    """Validate a raw dict into a Recipe, raising one RecipeError that lists every problem."""
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as exc:
        problems = _problems(exc, raw)
        raise RecipeError(
            f"{source} has {len(problems)} problem{'s' * (len(problems) > 1)}: "
            + "; ".join(f"{p}: {m}" for p, m in problems),
            "fix the keys above; `medqwen validate RECIPE` shows them as a table, "
            "docs/recipes.md lists every field",
            problems,
        ) from None
    if check_paths:
        problems = dataset_problems(recipe)
        if problems:
            raise RecipeError(
                f"{source}: {len(problems)} dataset path{'s' * (len(problems) > 1)} not found: "
                + "; ".join(f"{p}: {m}" for p, m in problems),
                "paths are relative to the recipe file; built-in tasks are builtin:"
                + "|builtin:".join(BUILTIN_TASKS),
                problems,
            )
    return recipe


def load_recipe(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    *,
    base: dict[str, Any] | None = None,
    check_paths: bool = True,
) -> Recipe:
    """Load a recipe file (or start from `base`, e.g. the recipe stored in a bundle), apply
    `--set` overrides, resolve relative paths, validate everything at once."""
    if path is not None:
        path = Path(path)
        raw = _read_file(path)
        _resolve_paths(raw, path.resolve().parent)
        source = f"recipe {path}"
    else:
        raw = json.loads(json.dumps(base or {}))
        source = "recipe"
    if overrides:
        apply_overrides(raw, overrides)
        _resolve_paths(raw, Path.cwd())
    return build_recipe(raw, source=source, check_paths=check_paths)


def recipe_to_dict(recipe: Recipe) -> dict[str, Any]:
    """The resolved recipe as plain JSON data (stored in bundles and versions)."""
    return recipe.model_dump(mode="json")


# --------------------------------------------------------------------------- docs

SECTIONS: dict[str, type[BaseModel]] = {
    "model": ModelConfig,
    "adapter": AdapterConfig,
    "data.datasets[] / tasks.NAME.datasets[]": DatasetSpec,
    "regime": RegimeConfig,
    "tasks.NAME": TaskConfig,
    "train": TrainConfig,
    "eval": EvalConfig,
    "continual": ContinualConfig,
    "acceptance": AcceptanceConfig,
    "acceptance.new_task": NewTaskCriteria,
    "acceptance.earlier_tasks / acceptance.tasks.NAME": TaskCriteria,
}


def schema_markdown() -> str:
    """The field reference of docs/recipes.md, generated from the schema (a test keeps it in sync)."""
    out = []
    for section, model in SECTIONS.items():
        out.append(
            f"### `{section}`\n\n| field | type | default | description |\n|---|---|---|---|"
        )
        for name, field in model.model_fields.items():
            annotation = str(field.annotation).replace("typing.", "").replace("<class '", "")
            annotation = annotation.replace("'>", "").replace("|", "\\|")
            if field.is_required():
                default = "required"
            elif field.default_factory is not None:
                default = json.dumps(field.default_factory(), default=lambda o: o.model_dump())
            else:
                default = json.dumps(field.default)
            default = default.replace("|", "\\|")
            out.append(f"| `{name}` | `{annotation}` | `{default}` | {field.description or ''} |")
        out.append("")
    return "\n".join(out)
