"""Loading a recipe: YAML or JSON, `--set` overrides typed by the schema, every problem at
once, relative paths resolved against the recipe's directory; and its reference for the docs."""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from medqwen_cli.acceptance.schema import AcceptanceConfig, NewTaskCriteria, TaskCriteria
from medqwen_cli.adapters.config import AdapterConfig
from medqwen_cli.errors import RecipeError
from medqwen_cli.recipe.model import Recipe
from medqwen_cli.recipe.sections import (
    BUILTIN_TASKS,
    ContinualConfig,
    DatasetSpec,
    EvalConfig,
    ModelConfig,
    RegimeConfig,
    TaskConfig,
    TrainConfig,
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
            annotation = (
                str(field.annotation)
                .replace("typing.", "")
                .replace("recipe.sections.", "recipe.")
                .replace("<class '", "")
            )
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
