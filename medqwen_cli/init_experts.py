"""`init-experts`: spectral expert init streamed tensor by tensor from a base's safetensors files.

The base model is never loaded whole for the SVD pass: the checkpoint headers give every tensor's
name and shape, the targets are selected on canonical module names, and each target weight is read
alone (`safe_open(...).get_tensor`), decomposed, and dropped; its factors are appended to spool
files on disk at once (`_io.TensorWriter`). Peak memory is about one weight and its factors,
whatever the model's size.

The result is a new bundle: `init.safetensors` (frozen A_j0, B_j0 and the scale of every adapted
layer) and version v0001 whose adapter holds the trainable starting values (the experts' A and B,
and the routers), i.e. exactly what `inject_adapters` builds from the same recipe.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medqwen_cli.adapters.config import AdapterConfig
from medqwen_cli.bundle import Bundle, TensorWriter, refuse_existing
from medqwen_cli.errors import AdapterError, BundleError
from medqwen_cli.modeling import checkpoint_files, resolve_base, select_device
from medqwen_cli.recipe import Recipe, recipe_to_dict
from medqwen_cli.settings import Settings

if TYPE_CHECKING:
    import torch

Progress = Callable[[int, int, str], None]


@dataclass
class InitSummary:
    bundle: str
    version: str
    base: str
    fingerprint: str
    method: str
    experts: int
    top_k: int
    rank: int
    adapted_layers: int
    skipped: dict[str, str]
    trainable_params: int
    full_moe_params: int
    ratio_to_full_moe: float
    scales: dict[str, float] = field(default_factory=dict)  # layer kind -> s
    seconds: float = 0.0
    svd_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_out_dir(out: Path, *, empty: bool = True) -> None:
    """Refuse an existing bundle, a file, and (when `empty`) a directory holding anything."""
    refuse_existing(out)
    if empty and out.is_dir():
        entries = sum(1 for _ in out.iterdir())
        if entries:
            raise BundleError(
                f"--out {out} is a directory that holds {entries} other "
                f"entr{'ies' if entries > 1 else 'y'} (not a bundle); init-experts writes a "
                "bundle only into a new or empty directory",
                "choose an empty or new directory, e.g. --out " + str(out / "bundle"),
            )


def checkpoint_targets(paths: list[Path]) -> dict[str, tuple[Path, str, tuple[int, ...]]]:
    """canonical module name -> (file, tensor key, shape) for every `.weight`, headers only."""
    from safetensors import safe_open

    from medqwen_cli.adapters import canonical_from_checkpoint_key

    found: dict[str, tuple[Path, str, tuple[int, ...]]] = {}
    for path in paths:
        with safe_open(str(path), framework="pt") as fh:
            for key in fh.keys():  # noqa: SIM118 - safe_open is not a mapping
                name = canonical_from_checkpoint_key(key)
                if name is not None:
                    found[name] = (path, key, tuple(fh.get_slice(key).get_shape()))
    return found


def linear_module_names(model_path: str, model_type: str) -> set[str]:
    """Canonical names of the base's nn.Linear modules, from a weightless (meta-device) model.

    Checkpoint headers cannot tell a linear weight from an embedding; the model's own modules can.
    """
    import torch
    import transformers

    from medqwen_cli.adapters import linear_shapes
    from medqwen_cli.modeling import SUPPORTED_TYPES

    cls = getattr(transformers, SUPPORTED_TYPES[model_type])
    config = cls.config_class.from_pretrained(model_path, local_files_only=True)
    with torch.device("meta"):
        model = cls._from_config(config)
    return set(linear_shapes(model))


def init_tensors_for(weight: torch.Tensor, cfg: AdapterConfig, name: str) -> dict[str, Any]:
    """`adapters.init_tensors_for`, imported on first use (it needs torch; see check_out_dir)."""
    from medqwen_cli.adapters import init_tensors_for as init_layer

    return init_layer(weight, cfg, name)


def _read_tensor(path: Path, key: str) -> torch.Tensor:
    """One tensor from a safetensors file, the file opened for it alone (no mapping kept)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device="cpu") as fh:
        return fh.get_tensor(key)


def router_start(name: str, in_features: int, cfg: AdapterConfig) -> torch.Tensor | None:
    """The router weight inject_adapters gives layer `name` (None for single-expert methods)."""
    from medqwen_cli.adapters import layer_seed
    from medqwen_cli.adapters.router import DEFAULT_ROUTER_INIT_STD, TopKRouter

    if not cfg.is_routed:
        return None
    router = TopKRouter(
        in_features, cfg.num_experts, cfg.routed_top_k,
        init_std=DEFAULT_ROUTER_INIT_STD, seed=layer_seed(cfg.seed, name + ".router"),
    )  # fmt: skip
    return router.weight.detach()


def init_experts(
    recipe: Recipe,
    out: str | Path,
    *,
    command: str = "medqwen init-experts",
    device: str = "cpu",
    progress: Progress | None = None,
    empty_out: bool = True,
    settings: Settings | None = None,
) -> InitSummary:
    """Stream the base's target weights, compute each layer's init, write a new bundle.

    `out` must be new or an empty directory (`empty_out=False` also accepts a directory holding
    other files: the CLI's "current directory" mode, like `git init`); a bundle is never
    overwritten. The target and the base are checked before torch is imported. A preset base
    is built under `settings.cache_dir` (default: `Settings.from_env()`).
    """
    start = time.perf_counter()
    cfg = recipe.adapter
    out = Path(out).expanduser().resolve()
    check_out_dir(out, empty=empty_out)
    settings = settings if settings is not None else Settings.from_env()
    info = resolve_base(recipe.model.base, recipe.model.revision, cache_dir=settings.cache_dir)

    from medqwen_cli.adapters import layer_kind, select_targets

    device = select_device(device)
    files = checkpoint_targets(checkpoint_files(info.path))
    linear = linear_module_names(info.path, info.model_type)
    selection = select_targets({k: v[2] for k, v in files.items() if k in linear}, cfg)

    scales: dict[str, float] = {}
    svd_seconds, full_moe = 0.0, 0
    total = len(selection.selected)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        # Factors go to disk as each layer is done: memory holds one weight and its factors.
        with TensorWriter(out) as init, TensorWriter(out) as adapter:
            for done, name in enumerate(selection.selected, 1):
                path, key, (m, n) = files[name]
                t0 = time.perf_counter()
                layer = init_tensors_for(_read_tensor(path, key).to(device), cfg, name)
                svd_seconds += time.perf_counter() - t0
                for k in ("init_A", "init_B", "scale"):
                    if k in layer:
                        init.add(f"{name}.{k}", layer[k])
                adapter.add(f"{name}.lora_A", layer["lora_A"])
                adapter.add(f"{name}.lora_B", layer["lora_B"])
                router = router_start(name, n, cfg)
                if router is not None:
                    adapter.add(f"{name}.router.weight", router)
                scales.setdefault(layer_kind(name), float(layer["scale"]))
                full_moe += cfg.num_experts * m * n
                del layer
                if progress is not None:
                    progress(done, total, name)
            if not adapter.numel():  # select_targets raises first; a guard for empty checkpoints
                raise AdapterError("no layer was adapted", "check adapter.targets")
            trainable = adapter.numel()
            recipe_data = recipe_to_dict(recipe)
            bundle = Bundle.create(
                out,
                base=info.to_dict(),
                recipe=recipe_data,
                init_tensors=init,
            )
            summary = InitSummary(
                bundle=str(bundle.root),
                version="v0001",
                base=info.model_id,
                fingerprint=info.fingerprint,
                method=cfg.method,
                experts=cfg.num_experts,
                top_k=cfg.routed_top_k,
                rank=cfg.rank,
                adapted_layers=len(selection.selected),
                skipped=selection.skipped,
                trainable_params=trainable,
                full_moe_params=full_moe,
                ratio_to_full_moe=full_moe / max(trainable, 1),
                scales=scales,
                svd_seconds=svd_seconds,
            )
            summary.seconds = time.perf_counter() - start
            bundle.append_version(
                adapter,
                command=command,
                tasks=[],
                recipe=recipe_data,
                json_files={"metrics.json": {"init": summary.to_dict()}},
            )
    except BaseException:
        if created:  # leave no empty directory behind a failed run
            with contextlib.suppress(OSError):
                out.rmdir()
        raise
    return summary
