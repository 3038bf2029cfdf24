"""The routed expert linear layer, in the dense two-GEMM form.

    y = W0 x  -  W_res x  +  sum_{i in top-k} w_i * s * B_i A_i * dropout_i(x)

    dropout_i is one mask for every expert (`dropout_masks="shared"`) or each expert's own
    (`"per_expert"`, GOAT's one Dropout per expert: E masked copies of x, one batched GEMM)

    W0            frozen base weight (m x n), kept untouched in `base_layer`
    A (r x n)     experts' A_i stacked by rows, expert i owns rows [i*d, (i+1)*d)
    B (m x r)     experts' B_i stacked by columns, same blocks
    W_res x       (s / E) * (x A0^T) B0^T from the frozen init factors (low rank, never merged)

Dense form (the cost of one rank-2r LoRA, no per-expert copies of x). The experts and the
frozen residual share one GEMM on each side: the residual is a second block of codes whose
"gate" is the constant -1/E.

    [h, h0] = x [A; A0]^T                               (N, 2r)  (dropout on: two GEMMs)
    c = [s * h * g,  -(s / E) * h0]                     (N, 2r)  g broadcast over each expert's d
                                                                  columns, zero when unselected
    y = W0 x + c [B, B0]^T                              (N, m)   accumulated into W0 x in place
                                                                  (addmm_) for a float32 nn.Linear

Measured in benchmarks/layer.py: with separate terms, each extra (N, m) pass (the residual, its
subtraction, the scale, the final sum) and each extra dx accumulation cost more than the rank-r
GEMMs themselves on CPU. The router stays its own E x n product through `self.router`, whose
forward hooks are part of the contract (merge reads the gates from them).

Adapter and router maths run in float32 with autocast off, whatever the base dtype; the sum is
cast back to the base output's dtype. Single-expert layers (lora, pissa) have no router (g = 1).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from medqwen_cli.adapters.router import (
    DEFAULT_ROUTER_INIT_STD,
    TopKRouter,
    expert_counts,
    load_balance_loss,
)


def _in_backward() -> bool:
    """True while autograd runs a backward pass (where checkpointed forwards are recomputed)."""
    task_id = getattr(torch._C, "_current_graph_task_id", None)
    return task_id is not None and task_id() != -1


class _Experts(nn.Module):
    """E routed LoRA experts (E = 1: plain LoRA / PiSSA) on an n -> m map, without the base
    weight: the adapter term of `RoutedLoRALinear` and of each of its protected branches."""

    # Adapter state, declared once: save, load and freeze follow these names.
    trainable_names: tuple[str, ...] = ("lora_A", "lora_B", "router.weight")
    frozen_names: tuple[str, ...] = ("init_A", "init_B", "scale")

    def _init_experts(
        self,
        in_features: int,
        out_features: int,
        device: torch.device,
        init: Mapping[str, Tensor],
        *,
        experts: int,
        top_k: int,
        dropout: float,
        dropout_masks: str,
        router_init_std: float,
        router_seed: int,
    ) -> None:
        self.in_features, self.out_features = in_features, out_features
        rank = init["lora_A"].shape[0]
        self.experts, self.top_k, self.rank = experts, top_k, rank
        self.expert_rank = rank // experts  # d
        self.lora_A = nn.Parameter(init["lora_A"].detach().to(device, torch.float32).clone())
        self.lora_B = nn.Parameter(init["lora_B"].detach().to(device, torch.float32).clone())
        self.register_buffer("scale", init["scale"].detach().to(device, torch.float32).reshape(()))
        spectral = "init_A" in init
        for name in ("init_A", "init_B"):
            value = init[name].detach().to(device, torch.float32).clone() if spectral else None
            self.register_buffer(name, value)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        if dropout_masks not in ("shared", "per_expert"):
            raise ValueError(f"dropout_masks must be shared or per_expert, got {dropout_masks!r}")
        self.dropout_masks = dropout_masks  # per_expert: expert i sees dropout_i(x)
        self.router: TopKRouter | None = None
        if experts > 1:
            self.router = TopKRouter(
                self.in_features, experts, top_k, init_std=router_init_std, seed=router_seed
            ).to(device)
        counts = torch.zeros(experts, dtype=torch.long, device=device)
        self.register_buffer("load_counts", counts, persistent=False)  # slots per expert
        self.register_buffer("routed_tokens", counts.new_zeros(()), persistent=False)
        self.token_mask: Tensor | None = None  # (batch, seq), set by the model-level hook
        # the set's linear part (`linear_part`) was added to the base weight: no residual
        # codes, and without a router no codes at all (`RoutedLoRALinear.fold_into_base`)
        self.in_base = False
        self.last_balance_loss: Tensor | None = None  # L_b of the latest forward (0-d)

    def own_tensors(self, kind: str = "trainable") -> dict[str, Tensor]:
        """Declared adapter state present here: `trainable` or `frozen` names."""
        names = self.trainable_names if kind == "trainable" else self.frozen_names
        out = {}
        for name in names:
            value: object = self
            for part in name.split("."):  # "router.weight": None when there is no router
                value = getattr(value, part, None)
            if isinstance(value, Tensor):
                out[name] = value
        return out

    def residual(self, x: Tensor) -> Tensor:
        """W_res x = (s / E) * (x A0^T) B0^T in float32 (zero for lora / moelora): (..., m)."""
        if self.init_A is None:
            return x.new_zeros(*x.shape[:-1], self.out_features, dtype=torch.float32)
        h0 = x.float() @ self.init_A.t()  # (..., r)
        return (h0 @ self.init_B.t()) * (self.scale / self.experts)  # (..., m)

    def route(self, x: Tensor) -> Tensor:
        """Gates (..., E); records the balance loss and expert load of this forward."""
        assert self.router is not None
        routing = self.router(x)
        mask = self.token_mask
        # Computed on recomputation too: non-reentrant checkpointing needs the same saved tensors.
        self.last_balance_loss = load_balance_loss(routing.probs, routing.indices, mask)
        if _in_backward():  # activation checkpointing recomputes this forward: count it once
            return routing.gates
        with torch.no_grad():
            counts = expert_counts(routing.indices, self.experts, mask)  # (E,)
            self.load_counts += counts
            self.routed_tokens += counts.sum() // self.top_k
        return routing.gates

    def _codes(self, xf: Tensor) -> tuple[Tensor, Tensor]:
        """Scaled codes c (N, q) and the matching B columns (m, q): the adapter term is c B^T."""
        x2 = xf.reshape(-1, self.in_features)  # (N, n)
        if isinstance(self.dropout, nn.Identity) or not self.training:
            proj = x2 @ self.input_rows().t()  # (N, q): one GEMM for experts and residual
            return self._gate(xf, *self._split(proj))
        h0 = None
        a_exp = self.lora_A.float()  # (r, n)
        if self.dropout_masks == "per_expert" and self.experts > 1:
            # one mask per expert (GOAT): E masked copies of x, one batched GEMM over experts
            e, d = self.experts, self.expert_rank
            xs = self.dropout(x2.expand(e, *x2.shape))  # (E, N, n), masks drawn independently
            h = torch.bmm(xs, a_exp.view(e, d, -1).transpose(1, 2))  # (E, N, d)
            h = h.transpose(0, 1).reshape(-1, self.rank)  # (N, r): expert i in [i*d, (i+1)*d)
        else:  # dropout reaches the experts' input only, not the residual
            h = self.dropout(x2) @ a_exp.t()  # (N, r)
        if not self._no_residual():
            h0 = x2 @ self.init_A.float().t()  # (N, r), never dropped
        return self._gate(xf, h, h0)

    def input_rows(self) -> Tensor:
        """[A; A0] (q, n), float32: the rows the codes are computed from (A alone without a
        residual, or with the residual in the base weight)."""
        a = self.lora_A.float()
        return a if self._no_residual() else torch.cat([a, self.init_A.float()])

    def _no_residual(self) -> bool:
        return self.init_A is None or self.in_base

    def _split(self, proj: Tensor) -> tuple[Tensor, Tensor | None]:
        """x [A; A0]^T (N, q) -> (h, h0), h0 None without a residual."""
        r = self.rank
        return (proj, None) if self._no_residual() else (proj[:, :r], proj[:, r:])

    def linear_part(self) -> Tensor | None:
        """The part of this set's term that is linear in x, as an (m, n) float32 matrix: all of
        it without a router (s B A, minus the residual (s / E) B0 A0 when there is one), only
        the residual with one (the routed sum is not linear); None when there is none."""
        s, e = self.scale, self.experts
        part = None
        if self.router is None:
            part = s * (self.lora_B.float() @ self.lora_A.float())  # (m, n)
        if self.init_A is not None:
            residual = (s / e) * (self.init_B.float() @ self.init_A.float())  # (m, n)
            part = -residual if part is None else part - residual
        return part

    def _gate(self, xf: Tensor, h: Tensor, h0: Tensor | None) -> tuple[Tensor, Tensor]:
        """Codes from the projections: h scaled by s and the gates, h0 by -s / E."""
        r, s = self.rank, self.scale
        if self.router is not None:
            e, d = self.experts, self.expert_rank
            gates = self.route(xf).reshape(-1, e, 1)  # (N, E, 1); routed on (..., n) for the mask
            h = (h.reshape(-1, e, d) * (gates * s)).reshape(-1, r)  # (N, r), x never copied
        else:
            h = h * s  # (N, r)
        b_exp = self.lora_B.float()  # (m, r)
        if h0 is None:
            return h, b_exp
        codes = torch.cat([h, h0 * (-s / self.experts)], dim=-1)  # (N, 2r)
        return codes, torch.cat([b_exp, self.init_B.float()], dim=1)  # (m, 2r)

    def foldable(self) -> bool:
        """True when the codes need no gradient of their own and no dropout mask: their input
        rows can share one GEMM with other such sets (`RoutedLoRALinear.forward`)."""
        if self.lora_A.requires_grad or self.lora_B.requires_grad:
            return False
        return isinstance(self.dropout, nn.Identity) or not self.training

    def reset_stats(self) -> None:
        self.load_counts.zero_()
        self.routed_tokens.zero_()

    def extra_repr(self) -> str:
        kind = "spectral" if self.init_A is not None else "random"
        return f"experts={self.experts}, top_k={self.top_k}, rank={self.rank}, init={kind}"


class Branch(_Experts):
    """A branch (adapters/branches.py, docs/continual.md): experts added for a later task beside
    the frozen ones of its layer, every input-side row (A, and the residual's A0) in the
    complement of the earlier tasks' input basis M, so that A x = 0 for x in span(M).

    `protect` (n x k, orthonormal; a non-persistent buffer, stored in the version's
    protect.safetensors) is set while the branch trains: A's gradient is projected onto the
    complement, and `reproject` puts A back there after each optimizer step (AdamW's
    per-coordinate scaling and weight decay move it out otherwise).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        init: Mapping[str, Tensor],
        *,
        experts: int,
        top_k: int,
        dropout: float = 0.0,
        dropout_masks: str = "shared",
        router_init_std: float = DEFAULT_ROUTER_INIT_STD,
        router_seed: int = 0,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self._init_experts(
            in_features, out_features, torch.device(device or "cpu"), init, experts=experts,
            top_k=top_k, dropout=dropout, dropout_masks=dropout_masks,
            router_init_std=router_init_std, router_seed=router_seed,
        )  # fmt: skip
        self.register_buffer("protect", None, persistent=False)
        self._hook: Any = None

    def set_protect(self, basis: Tensor | None) -> None:
        """Keep lora_A in the complement of span(`basis`) (n x k) from now on; None: stop."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if basis is None:
            self.protect = None
            return
        self.protect = basis.detach().to(self.lora_A.device, torch.float32)
        self._hook = self.lora_A.register_hook(self._project)
        self.reproject()

    def _project(self, grad: Tensor) -> Tensor:
        m = self.protect
        return grad if m is None else grad - (grad @ m) @ m.t()

    @torch.no_grad()
    def reproject(self) -> None:
        """A <- A (I - M M^T): after every optimizer step (a no-op without a basis)."""
        m = self.protect
        if m is not None and m.shape[1]:
            self.lora_A.sub_((self.lora_A @ m) @ m.t())


class RoutedLoRALinear(_Experts):
    """Wraps a frozen nn.Linear with E routed LoRA experts (E = 1: plain LoRA / PiSSA), and
    the protected branches of later tasks (`branches`, empty unless a version added some).

    State names: the experts' own (`trainable_names`, `frozen_names`), and per branch i,
    `branches.<i>.<name>` for every name of both kinds: a branch's frozen factors were made by
    the version that added it (from W0 and the basis), so they travel with the version's
    adapter, not with the bundle's init.safetensors.
    """

    def __init__(
        self,
        base_layer: nn.Linear,
        init: Mapping[str, Tensor],
        *,
        experts: int,
        top_k: int,
        dropout: float = 0.0,
        dropout_masks: str = "shared",
        router_init_std: float = DEFAULT_ROUTER_INIT_STD,
        router_seed: int = 0,
    ) -> None:
        super().__init__()
        self.base_layer = base_layer
        self._init_experts(
            base_layer.in_features, base_layer.out_features, base_layer.weight.device, init,
            experts=experts, top_k=top_k, dropout=dropout, dropout_masks=dropout_masks,
            router_init_std=router_init_std, router_seed=router_seed,
        )  # fmt: skip
        self.branches = nn.ModuleList()

    @property
    def weight(self) -> Tensor:
        return self.base_layer.weight

    @property
    def bias(self) -> Tensor | None:
        return self.base_layer.bias

    def adapter_tensors(self, kind: str = "trainable") -> dict[str, Tensor]:
        """Adapter state present on this layer: `trainable` (the version's: own trainable
        tensors and every tensor of every branch) or `frozen` (the own init tensors, as
        init.safetensors holds them)."""
        out = self.own_tensors(kind)
        if kind == "trainable":
            for i, branch in enumerate(self.branches):
                for part in ("trainable", "frozen"):
                    out.update(
                        {f"branches.{i}.{k}": v for k, v in branch.own_tensors(part).items()}
                    )
        return out

    fold_frozen = True  # benchmarks/branches.py turns it off to measure what folding saves

    @torch.no_grad()
    def fold_into_base(self) -> int:
        """Add every frozen set's linear part to the base weight, in memory, and stop computing
        it as codes: a protected run's earlier tasks then cost nothing (lora, pissa: every
        frozen set is linear) or their routed sums only (sslora: the residual folds). Exact up
        to float rounding; float32 bases only (a 16-bit weight would round the sum), and never
        written anywhere (the adapter's tensors are unchanged). Returns the sets folded."""
        weight = self.base_layer.weight
        if weight.dtype != torch.float32 or not len(self.branches):
            return 0
        folded = 0
        for e in (self, *self.branches):
            if e.in_base or not e.foldable():
                continue
            part = e.linear_part()
            if part is not None:
                weight.add_(part.to(weight.device))
                e.in_base = True
                folded += 1
        return folded

    def _all_codes(self, xf: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Codes and B columns of the layer's own experts and of every branch, in that order.

        The frozen sets (a protected sequence: every set but the newest branch) compute their
        input projections in one GEMM, x [A_1; A0_1; A_2; ...]^T, instead of one each: the
        same products, fewer and larger matrix calls; their routers run as before."""
        sets: list[_Experts] = [
            e for e in (self, *self.branches) if not (e.in_base and e.router is None)
        ]
        for branch in self.branches:
            branch.token_mask = self.token_mask
        folded = [e for e in sets if e.foldable()] if self.fold_frozen else []
        if len(folded) < 2:
            return [e._codes(xf) for e in sets]
        x2 = xf.reshape(-1, self.in_features)  # (N, n)
        rows = [e.input_rows() for e in folded]
        proj = x2 @ torch.cat(rows).t()  # (N, sum q): every frozen set in one GEMM
        codes, start = {}, 0
        for e, a in zip(folded, rows, strict=True):
            codes[id(e)] = e._gate(xf, *e._split(proj[:, start : start + a.shape[0]]))
            start += a.shape[0]
        return [codes[id(e)] if id(e) in codes else e._codes(xf) for e in sets]

    def add_branch(self, branch: Branch) -> Branch:
        self.branches.append(branch.to(self.base_layer.weight.device))
        return branch

    def forward(self, x: Tensor) -> Tensor:
        # W0 x on the flattened tokens: its output is then no view, so accumulating into it in
        # place costs no copy in backward (a view would add a CopySlices clone of (N, m))
        y = self.base_layer(x.reshape(-1, self.in_features))  # (N, m), base dtype
        with torch.autocast(device_type=x.device.type, enabled=False):
            xf = x.float()  # (..., n)
            if len(self.branches):  # each set adds its codes and B columns: still two GEMMs
                parts = self._all_codes(xf)
                codes = torch.cat([c for c, _ in parts], dim=-1)  # (N, sum q)
                b = torch.cat([m for _, m in parts], dim=1)  # (m, sum q)
            else:
                codes, b = self._codes(xf)  # (N, q), (m, q); q = r, or 2r with the residual
            if y.dtype == torch.float32 and type(self.base_layer) is nn.Linear:
                # nn.Linear's backward keeps x and W0, not its output: safe to accumulate in place
                y = y.addmm_(codes, b.t())  # (N, m)
            else:  # bf16 base (or a subclass): adapter sum in float32, cast once
                y = y + (codes @ b.t()).to(y.dtype)  # (N, m)
        return y.view(*x.shape[:-1], self.out_features)
