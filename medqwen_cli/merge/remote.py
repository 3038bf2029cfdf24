"""Routed Sparse Spectral LoRA for a model directory written by `medqwen merge --mode routed`.

`medqwen merge` copies this file, unchanged, into the export as `modeling_medqwen_routed.py`;
transformers imports it from there under `trust_remote_code=True`, so it imports only torch and
transformers (never medqwen). Every adapted linear layer computes, exactly as medqwen does,

    y = W0 x + b  -  (s/E) * B0 (A0 x)  +  s * sum_{i in top-k(x)} w_i(x) * B_i (A_i x)
      = W0 x + b  +  [B, B0] c,     c = [s * (A x) * g(x),  -(s/E) * A0 x]    (2r codes)

    W0, b      the base layer's weight and bias (the base checkpoint, linked or copied)
    A (r x n)  the experts' A_i stacked by rows, expert i owns rows [i*d, (i+1)*d), d = r/E
    B (m x r)  the experts' B_i stacked by columns, same blocks
    A0, B0     the frozen spectral init (W_res = (s/E) B0 A0; absent for lora / moelora)
    w(x)       router: p = softmax(W_r x) in float32, keep the top-k, renormalise to sum 1

A version trained with `medqwen continue --protect` adds protected branches to its layers: each
branch j is one more set of experts of the same kind (E, k, rank; its own router, scale s_j and
residual), whose codes and B columns join the layer's, so the layer stays two GEMMs:

    y = W0 x + b  +  [B, B0, B^1, B0^1, ...] [c; c^1; ...]      c^j: branch j's codes, as c

Adapter and router maths run in float32 with autocast off, whatever the base dtype; the adapter
tensors are created in float32 and stay so when the model is loaded in bfloat16.

config.json says which layers are adapted (`medqwen_routed.layers`, canonical names such as
`language_model.layers.0.self_attn.q_proj`), with which shapes, and how many branches each has
(`medqwen_routed.branches`; absent or empty: none); the model class wraps those
layers when it is built, so transformers loads the base weights and the adapter tensors
(`medqwen_adapter.safetensors`, listed in `model.safetensors.index.json`) in one pass.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
)

FORMAT = 1
_WRAPPERS = ("_orig_mod", "_fsdp_wrapped_module", "_checkpoint_wrapped_module")
# The published checkpoints name the text stack `model.layers.*` and the vision tower
# `visual.*`; the modules are `model.language_model.*` and `model.visual.*`. transformers maps
# these for its own classes only, not for remote code, so the mapping is passed explicitly.
KEY_MAPPING = {
    r"^visual": "model.visual",
    r"^model(?!\.(language_model|visual))": "model.language_model",
}


def canonical_module_name(module_name: str) -> str:
    """`model.language_model.layers.0.mlp.up_proj` -> `language_model.layers.0.mlp.up_proj`,
    `model.visual.X` -> `visual.X` (the names medqwen keys adapters by)."""
    parts = [p for p in module_name.split(".") if p and p not in _WRAPPERS]
    if parts[:1] == ["module"]:
        parts = parts[1:]
    if parts[:1] == ["model"]:
        rest = parts[1:]
        nested = rest[:1] in (["language_model"], ["visual"])
        parts = rest if nested else ["language_model", *rest]
    return ".".join(parts)


class _Experts:
    """E routed LoRA experts and their residual on an n -> m map, without W0: the adapter term
    of `RoutedLinear` and of each of its protected branches (mixed into an nn.Module)."""

    def _init_experts(
        self,
        in_features: int,
        out_features: int,
        *,
        experts: int,
        top_k: int,
        rank: int,
        spectral: bool,
        device: torch.device | str | None,
    ) -> None:
        self.in_features, self.out_features = in_features, out_features
        self.experts, self.top_k, self.rank = experts, top_k, rank
        self.expert_rank = rank // experts  # d
        f32 = {"device": device, "dtype": torch.float32}
        self.lora_A = nn.Parameter(torch.zeros(rank, in_features, **f32))  # (r, n)
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank, **f32))  # (m, r)
        self.register_buffer("scale", torch.zeros((), **f32))
        self.router = nn.Linear(in_features, experts, bias=False, **f32) if experts > 1 else None
        self.register_buffer("init_A", torch.zeros(rank, in_features, **f32) if spectral else None)
        self.register_buffer("init_B", torch.zeros(out_features, rank, **f32) if spectral else None)

    def gates(self, xf: torch.Tensor) -> torch.Tensor:
        """Routing weights (..., E): top-k of softmax(W_r x), renormalised; zero elsewhere."""
        assert self.router is not None
        probs = F.linear(xf, self.router.weight.float()).softmax(dim=-1)  # (..., E)
        top_p, top_i = probs.topk(self.top_k, dim=-1)  # (..., k)
        weights = top_p / top_p.sum(dim=-1, keepdim=True)  # (..., k)
        return torch.zeros_like(probs).scatter(-1, top_i, weights)  # (..., E)

    def codes(self, xf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scaled codes c (N, q) and the matching B columns (m, q): the adapter term is c B^T.
        One GEMM projects x on the experts' and the residual's A (q = 2r; r without one)."""
        x2 = xf.reshape(-1, self.in_features)  # (N, n)
        r, s = self.rank, self.scale
        spectral = self.init_A is not None
        a = torch.cat([self.lora_A.float(), self.init_A]) if spectral else self.lora_A.float()
        proj = x2 @ a.t()  # (N, q)
        h, h0 = (proj[:, :r], proj[:, r:]) if spectral else (proj, None)  # (N, r) each
        if self.router is not None:
            e, d = self.experts, self.expert_rank
            gates = self.gates(xf).reshape(-1, e, 1)  # (N, E, 1)
            h = (h.reshape(-1, e, d) * (gates * s)).reshape(-1, r)  # (N, r)
        else:
            h = h * s  # (N, r)
        b = self.lora_B.float()  # (m, r)
        if h0 is None:
            return h, b
        return torch.cat([h, h0 * (-s / self.experts)], dim=-1), torch.cat([b, self.init_B], dim=1)


class Branch(_Experts, nn.Module):
    """A protected branch: experts added by a later task beside the layer's own (same E, k,
    rank and kind), with its own router, scale and residual; state `branches.<i>.<name>`."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        experts: int,
        top_k: int,
        rank: int,
        spectral: bool,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self._init_experts(
            in_features, out_features, experts=experts, top_k=top_k, rank=rank,
            spectral=spectral, device=device,
        )  # fmt: skip


class RoutedLinear(_Experts, nn.Linear):
    """nn.Linear (W0, b) plus E routed LoRA experts and the residual compensation, and the
    protected branches of later tasks (`branches`, empty unless the version has some)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool,
        *,
        experts: int,
        top_k: int,
        rank: int,
        spectral: bool,
        branches: int = 0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        shape = {"experts": experts, "top_k": top_k, "rank": rank, "spectral": spectral}
        self._init_experts(in_features, out_features, **shape, device=device)
        self.branches = nn.ModuleList(
            Branch(in_features, out_features, **shape, device=device) for _ in range(branches)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The op order of medqwen's RoutedLoRALinear (inference): one GEMM projects x on the
        # experts' and the residual's A (per set of experts), one GEMM applies [B, B0, ...] to
        # the scaled codes of the layer's own experts and of every branch.
        y = F.linear(x, self.weight, self.bias)  # (..., m), base dtype
        with torch.autocast(device_type=x.device.type, enabled=False):
            xf = x.float()  # (..., n)
            h, b = self.codes(xf)  # (N, q), (m, q)
            if len(self.branches):
                parts = [(h, b), *(branch.codes(xf) for branch in self.branches)]
                h = torch.cat([c for c, _ in parts], dim=-1)
                b = torch.cat([m for _, m in parts], dim=1)
            y2 = y.reshape(-1, self.out_features)  # (N, m)
            if y2.dtype == torch.float32:
                out = y2.addmm_(h, b.t())  # (N, m)
            else:  # bf16 base: adapter sum in float32, cast once
                out = y2 + (h @ b.t()).to(y2.dtype)  # (N, m)
        return out.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, experts={self.experts}, top_k={self.top_k}, rank={self.rank}"
        )


def wrap_routed_layers(model: nn.Module, settings: dict) -> None:
    """Replace each listed nn.Linear by a RoutedLinear of the same shape (weights loaded later)."""
    if settings.get("format", FORMAT) > FORMAT:
        raise ValueError(
            f"medqwen_routed format {settings['format']} is newer than this modeling file reads "
            f"({FORMAT}); re-export the model with the medqwen that reads it"
        )
    wanted = set(settings["layers"])
    branches = settings.get("branches", {})  # layer -> protected branches (absent: none)
    found = set()
    for name, module in list(model.named_modules()):
        canonical = canonical_module_name(name)
        if canonical not in wanted or type(module) is not nn.Linear:
            continue
        layer = RoutedLinear(
            module.in_features,
            module.out_features,
            module.bias is not None,
            experts=int(settings["experts"]),
            top_k=int(settings["top_k"]),
            rank=int(settings["rank"]),
            spectral=bool(settings["spectral"]),
            branches=int(branches.get(canonical, 0)),
            device=module.weight.device,
            dtype=module.weight.dtype,
        )
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, layer)
        found.add(canonical)
    if found != wanted:
        missing = ", ".join(sorted(wanted - found)[:4])
        raise ValueError(f"adapted layers not found in the model: {missing}")


def routed_model_type(base_model_type: str) -> str:
    """The export's own model_type: transformers refuses it without trust_remote_code, so the
    routed layers are never silently dropped by loading the base class alone."""
    return f"medqwen_routed_{base_model_type}"


class _Routed:
    """Mixed in before a transformers model class, what a routed export adds to it: the routed
    layers, wrapped when the model is built, and the checkpoint key mapping on load."""

    def __init__(self, config: Qwen2VLConfig | Qwen2_5_VLConfig) -> None:
        super().__init__(config)
        wrap_routed_layers(self, config.medqwen_routed)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        kwargs.setdefault("key_mapping", KEY_MAPPING)
        return super().from_pretrained(*args, **kwargs)


class MedqwenRoutedQwen2VLConfig(Qwen2VLConfig):
    model_type = routed_model_type("qwen2_vl")


class MedqwenRoutedQwen2VLForConditionalGeneration(_Routed, Qwen2VLForConditionalGeneration):
    config_class = MedqwenRoutedQwen2VLConfig


class MedqwenRoutedQwen2_5_VLConfig(Qwen2_5_VLConfig):  # noqa: N801 - transformers' spelling
    model_type = routed_model_type("qwen2_5_vl")


class MedqwenRoutedQwen2_5_VLForConditionalGeneration(  # noqa: N801
    _Routed, Qwen2_5_VLForConditionalGeneration
):
    config_class = MedqwenRoutedQwen2_5_VLConfig
