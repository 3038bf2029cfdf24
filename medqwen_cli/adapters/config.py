"""The adapter's settings (`recipe.adapter`, stored once in `bundle.json`) and each method's facts.

    method    experts E   init of A_j, B_j             frozen init_A/init_B   router
    sslora    E           SVD segments of W0           yes (spectral)         top-k of E
    moelora   E           Kaiming A, B = 0             no                     top-k of E
    lora      1           Kaiming A, B = 0             no                     none
    pissa     1           principal SVD triplets       yes (spectral)         none

Total rank r is split evenly, d = r / E per expert; k = min(top_k, E) experts route each token,
and a layer has a router only when E > 1.
The fields in FIXED_AT_INIT shape `init.safetensors` and the adapter tensors, so a bundle keeps
them for its whole lineage; the others (dropout, dropout_masks, balance_loss) are training
settings a later version may change. Pydantic only: the recipe imports this without torch.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from medqwen_cli.choices import METHODS  # noqa: F401  (re-exported: the torch-free tuple)
from medqwen_cli.errors import RecipeError

Method = Literal["sslora", "moelora", "lora", "pissa"]  # = choices.METHODS (tests/test_recipe.py)
SPECTRAL_METHODS = ("sslora", "pissa")  # frozen factors from the SVD of W0 (init_A, init_B)
SINGLE_EXPERT_METHODS = ("lora", "pissa")  # E = 1, d = r, no router

DEFAULT_TARGETS = [
    r"layers\.\d+\.self_attn\.(q|k|v|o)_proj$",
    r"layers\.\d+\.mlp\.(gate|up|down)_proj$",
]
DEFAULT_EXCLUDE = [r"(^|\.)visual\.", r"(^|\.)lm_head$"]

# Adapter fields fixed at init: changing them would not match init.safetensors or the adapter's
# tensors (their shapes, seeds, segments or scales).
FIXED_AT_INIT = (
    "method", "experts", "top_k", "rank", "scaling", "alpha", "eta", "rho", "segments",
    "targets", "exclude", "seed",
)  # fmt: skip


def is_spectral(method: str) -> bool:
    """Whether `method` starts from SVD factors of the frozen weight (kept as init_A, init_B)."""
    return method in SPECTRAL_METHODS


def num_experts(method: str, experts: int) -> int:
    """Experts actually used: lora and pissa are single-expert methods whatever `experts` says."""
    return 1 if method in SINGLE_EXPERT_METHODS else experts


def regexes(patterns: list[str]) -> list[str]:
    """`patterns`, each checked to compile (a ValueError names the first that does not)."""
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"invalid regex {pattern!r}: {exc}") from None
    return patterns


class AdapterConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    method: Method = Field(
        "sslora",
        description="sslora = routed experts from spectral segments (this method); moelora = "
        "routed experts with random init; lora = one rank-r LoRA; pissa = principal-SVD LoRA.",
    )
    experts: int = Field(8, ge=1, le=256, description="Number of experts E (lora/pissa use 1).")
    top_k: int = Field(2, ge=1, description="Experts routed per token (k <= E).")
    rank: int = Field(32, ge=1, description="Total rank r over all experts; per-expert rank r/E.")
    scaling: Literal["theory", "constant"] = Field(
        "theory",
        description="theory: s = sqrt(3 * fan_in * eta / d) per layer (GOAT's released `goat` "
        "init: this rule with eta 1, rho 10); constant: s = alpha / d (16 at alpha 64, d 4). Every "
        "method follows it with its own d (lora and pissa: d = r), so one learning rate means "
        "matched step sizes.",
    )
    alpha: float = Field(64.0, gt=0, description="Constant-scaling numerator: s = alpha / d.")
    eta: float = Field(
        1.0,
        gt=0,
        description="LR ratio (full fine-tuning LR / adapter LR) of the theory rule; 1.0 as in "
        "GOAT's scripts (ETA=1.0).",
    )
    rho: float = Field(
        10.0, gt=0, description="Damping of the spectral init: s*B0*A0 = U S V^T / rho."
    )
    segments: Literal["spread", "principal", "minor", "random"] = Field(
        "spread", description="Which singular indices each expert takes (sslora)."
    )
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the adapter input.")
    dropout_masks: Literal["shared", "per_expert"] = Field(
        "shared",
        description="shared: one dropout mask of the layer input for every expert; per_expert: "
        "each expert draws its own mask (GOAT's one Dropout per expert, p 0.05 there), at the "
        "cost of E copies of the input in memory while training.",
    )
    balance_loss: float = Field(
        1e-3,
        ge=0,
        description="Weight lambda of the load-balance loss, summed over routed layers with "
        "GOAT's normalisation (k per layer when uniform); 0 turns it off.",
    )
    targets: list[str] = Field(
        default_factory=lambda: list(DEFAULT_TARGETS),
        description="Regexes searched in module names; a linear layer matching one is adapted.",
    )
    exclude: list[str] = Field(
        default_factory=lambda: list(DEFAULT_EXCLUDE),
        description="Regexes of module names never adapted (vision tower, merger, lm_head).",
    )
    seed: int = Field(0, description="Seed for router init, random segments and random factors.")

    @field_validator("targets", "exclude")
    @classmethod
    def _regexes_compile(cls, value: list[str]) -> list[str]:
        return regexes(value)

    @model_validator(mode="after")
    def _shapes_fit(self) -> AdapterConfig:
        if self.method not in SINGLE_EXPERT_METHODS:  # sslora, moelora: E experts share r
            experts = self.experts
            if self.top_k > experts:
                raise ValueError(f"top_k ({self.top_k}) must be <= experts ({experts})")
            if self.rank % experts:
                raise ValueError(
                    f"rank ({self.rank}) must be divisible by experts ({experts}) so every expert "
                    f"gets the same rank; try rank={experts * max(1, round(self.rank / experts))}"
                )
        return self

    @property
    def num_experts(self) -> int:
        """Experts actually used: lora and pissa are single-expert methods."""
        return num_experts(self.method, self.experts)

    @property
    def expert_rank(self) -> int:
        return self.rank // self.num_experts

    @property
    def routed_top_k(self) -> int:
        """Experts each token is routed to: min(top_k, E) (1 for single-expert methods)."""
        return min(self.top_k, self.num_experts)

    @property
    def is_routed(self) -> bool:
        """Whether adapted layers have a router: more than one expert (a router over one expert
        would always pick it; `RoutedLoRALinear` makes none)."""
        return self.num_experts > 1

    @property
    def is_spectral(self) -> bool:
        return is_spectral(self.method)

    def fixed_changes(self, stored: dict[str, object]) -> list[str]:
        """Fields of FIXED_AT_INIT whose value differs from `stored` (a bundle's adapter settings);
        fields `stored` lacks are not compared."""
        mine = self.model_dump(mode="json")
        return [k for k in FIXED_AT_INIT if k in stored and mine[k] != stored[k]]


def refuse_fixed_changes(adapter: AdapterConfig, stored: dict[str, object]) -> None:
    """Raise RecipeError when `adapter` changes a field of FIXED_AT_INIT that `stored` (a
    bundle's adapter settings) holds."""
    changed = adapter.fixed_changes(stored)
    if changed:
        raise RecipeError(
            f"the recipe changes adapter fields fixed when the bundle was made: {', '.join(changed)} "
            f"(bundle: {', '.join(f'{k}={stored[k]}' for k in changed)})",
            "only training fields (adapter.dropout, adapter.dropout_masks, adapter.balance_loss, "
            "train.*, data, tasks, eval) "
            "may change; start a new bundle with `medqwen init-experts` for another structure",
        )
