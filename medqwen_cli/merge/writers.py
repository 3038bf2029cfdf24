"""The folded update and the three writers (routed, dense, peft) into a staging directory."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from medqwen_cli.adapters import adapter_layers, canonical_from_checkpoint_key
from medqwen_cli.adapters.naming import canonical_module_name
from medqwen_cli.bundle import atomic_write_json, save_tensors, tensor_shapes
from medqwen_cli.loading import AdaptedModel
from medqwen_cli.merge.calibration import gate_key
from medqwen_cli.merge.core import (
    ADAPTER_FILE,
    INDEX_FILE,
    NOT_SUPPORT,
    PEFT_CONFIG,
    PEFT_WEIGHTS,
    REMOTE_CLASSES,
    REMOTE_FILE,
    SUPPORT_SUFFIXES,
    MergeError,
)
from medqwen_cli.modeling import (
    SUPPORTED_TYPES,
    BaseInfo,
    checkpoint_files,
)


def update_factors(
    layer: Any, gates: Tensor, branch_gates: Sequence[Tensor] = ()
) -> tuple[Tensor, Tensor]:
    """(P, Q), float64 on CPU, with P @ Q the layer's folded update: for its own experts and
    then each protected branch j (own gates `gates`, branch j's `branch_gates[j]`),

        s_j * sum_i wbar_ji B_ji A_ji - (s_j/E) B0_j A0_j      summed over j

    P: (m, q), Q: (q, n) with q = r per set of experts, 2r with a residual (the sets' factors
    side by side: P's columns, Q's rows). A single-expert set (lora, pissa) has wbar = [1]:
    its fold is exact.
    """
    if len(branch_gates) != len(layer.branches):
        raise ValueError(
            f"{len(layer.branches)} branch(es) in the layer, {len(branch_gates)} gate vector(s)"
        )
    p, q = [], []
    for experts, wbar in ((layer, gates), *zip(layer.branches, branch_gates, strict=True)):
        p_j, q_j = _expert_factors(experts, wbar)
        p += p_j
        q += q_j
    return torch.cat(p, dim=1), torch.cat(q, dim=0)


def _expert_factors(experts: Any, gates: Tensor) -> tuple[list[Tensor], list[Tensor]]:
    """One set of experts (a layer's own, or a branch): [s B diag(wbar (x) 1_d), -(s/E) B0]
    and [A; A0] as lists of float64 blocks ((m, r) and (r, n) each)."""
    s = float(experts.scale)
    cols = gates.double().cpu().repeat_interleave(experts.expert_rank)  # (r,)
    p = [experts.lora_B.detach().double().cpu() * (s * cols)[None, :]]  # (m, r)
    q = [experts.lora_A.detach().double().cpu()]  # (r, n)
    if experts.init_A is not None:
        p.append(experts.init_B.detach().double().cpu() * (-s / experts.experts))  # (m, r)
        q.append(experts.init_A.detach().double().cpu())  # (r, n)
    return p, q


def layer_factors(name: str, layer: Any, gates: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """`update_factors` of layer `name` with its gates from `mean_gates` (own: `name`, branch
    j: `name.branches.j`)."""
    branch_gates = [gates[gate_key(name, j)] for j in range(len(layer.branches))]
    return update_factors(layer, gates[name], branch_gates)


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


def write_routed(adapted: AdaptedModel, staging: Path, copy_base: bool) -> str:
    """Base shards linked/copied as base-*.safetensors, adapter file, index, config, code."""
    from medqwen_cli.merge import remote

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
        "format": remote.FORMAT,
        "base_model_type": config["model_type"],
        "base_architectures": config.get("architectures") or [SUPPORTED_TYPES[base.model_type]],
        "adapter_file": ADAPTER_FILE,
        "experts": first.experts,
        "top_k": first.top_k,
        "rank": first.rank,
        "spectral": first.init_A is not None,
        "layers": sorted(layers),
        "branches": {name: len(layer.branches) for name, layer in layers.items() if layer.branches},
    }
    config["model_type"] = remote.routed_model_type(base.model_type)
    config["architectures"] = [model_class]
    config["auto_map"] = {
        "AutoConfig": f"{module}.{config_class}",
        "AutoModelForImageTextToText": f"{module}.{model_class}",
        "AutoModelForVision2Seq": f"{module}.{model_class}",  # the name in transformers 4.x
    }
    atomic_write_json(staging / "config.json", config)
    shutil.copyfile(remote.__file__, staging / REMOTE_FILE)  # same bytes, export's own name
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
            and path.suffix in SUPPORT_SUFFIXES
            and path.name not in NOT_SUPPORT
            and not path.name.startswith(".")
        ):
            shutil.copyfile(path, staging / path.name)


def write_dense(adapted: AdaptedModel, gates: dict[str, Tensor], staging: Path) -> str:
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
            p, q = layer_factors(by_key[key], layers[by_key[key]], gates)
            w0 = tensors[key]  # (m, n), stored dtype
            tensors[key] = (w0.double() + p @ q).to(w0.dtype)
        save_tensors(staging / file.name, tensors, metadata)
    for name in ("config.json", INDEX_FILE):
        if (Path(base.path) / name).is_file():
            shutil.copyfile(Path(base.path) / name, staging / name)
    _copy_support_files(Path(base.path), staging)
    return "rewritten"


def write_peft(
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
        p, q = layer_factors(name, layer, gates)
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
