"""Protected branches, the torch side (DESIGN.md §2b): input bases, and the branches they guard.

Bases. Every adapted layer reads an input x (n). Layers that read the same tensor share it
(q/k/v read the attention's input, gate/up the MLP's): a *group*, named by its first layer.
For a task, X (n x tokens) holds the group's inputs over up to K train records (non-padding
tokens), through the Gram matrix C = X X^T (float64, summed over batches). Against the basis M
(n x k, orthonormal; empty at first) kept so far:

    kept = tr(M^T C M) / tr(C)                 the share of the task's energy already in span(M)
    R    = (I - M M^T) C (I - M M^T)           eigenvalues l_1 >= l_2 >= ..., vectors v_i
    M   <- [M, v_1 .. v_j], the fewest j with kept + (l_1 + .. + l_j) / tr(C) >= eps

(GPM's rule, from C instead of an SVD of X: the same vectors, n x n memory whatever the number
of tokens). Bases accumulate over tasks.

Branches. A task trained with `protect` freezes every adapter tensor so far and adds to each
layer a `Branch` whose input side lies in the complement of its group's M. With Q (n x (n-k))
an orthonormal basis of that complement, the branch is the method's own init of the
m x (n-k) weight W0 Q, mapped back by Q^T: sslora gets disjoint segments of the SVD of
W0 (I - M M^T) (its residual from the same factors), pissa the principal segment, lora and
moelora a random A in the complement and B = 0; the scale follows the recipe's rule with the
branch's fan-in n - k. Every A row (and A0 row) is then orthogonal to span(M): for x there, the
branch adds exactly nothing, whatever its router does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from medqwen_cli.adapters.config import AdapterConfig
from medqwen_cli.adapters.inject import adapter_layers
from medqwen_cli.adapters.layer import Branch, RoutedLoRALinear
from medqwen_cli.adapters.router import DEFAULT_ROUTER_INIT_STD
from medqwen_cli.adapters.spectral import init_layer, layer_seed
from medqwen_cli.errors import TrainingError

# --------------------------------------------------------------------------- Gram matrices


GRAM_BUDGET = 2 * 2**30  # bytes of Gram matrices held at once; more groups: more passes


@torch.no_grad()
def input_grams(
    model: nn.Module,
    batches: Callable[[], Iterable[dict[str, Tensor]]],
    device: torch.device | str,
    *,
    budget: int = GRAM_BUDGET,
) -> tuple[dict[str, Tensor], dict[str, str], int]:
    """(group -> C = X X^T (n x n, float64), layer -> group, non-padding tokens seen) over
    the collated records `batches()` yields, run through `model` as it is.

    One forward of the first batch finds the groups (the layers that read one tensor); then
    the groups' Gram matrices are summed over every batch, as many groups per pass as fit in
    `budget` bytes (Qwen2-VL-2B's down_proj input alone is 8960 x 8960 x 8 B = 640 MB, 28 of
    them 18 GB: several passes over the records instead of one that would not fit).
    """
    layers = dict(adapter_layers(model))
    groups = _groups(model, layers, next(iter(batches())), device)
    leaders = list(dict.fromkeys(groups.values()))
    chunks: list[list[str]] = [[]]
    for group in leaders:  # greedy, in model order
        size = layers[group].in_features ** 2 * 8
        used = sum(layers[g].in_features ** 2 * 8 for g in chunks[-1])
        if chunks[-1] and used + size > budget:
            chunks.append([])
        chunks[-1].append(group)
    grams: dict[str, Tensor] = {}
    tokens = 0
    for number, chunk in enumerate(chunks):

        def hook(name: str) -> Callable:
            def capture(layer: RoutedLoRALinear, args: tuple) -> None:
                x = args[0]
                mask = layer.token_mask
                if mask is not None and tuple(mask.shape) == tuple(x.shape[:2]):
                    rows = x[mask.bool()]
                else:
                    rows = x.reshape(-1, x.shape[-1])
                rows = rows.reshape(-1, x.shape[-1]).double()
                gram = rows.t() @ rows
                grams[name] = grams[name] + gram if name in grams else gram

            return capture

        handles = [layers[name].register_forward_pre_hook(hook(name)) for name in chunk]
        try:
            for batch in batches():
                mask = _forward(model, batch, device).get("attention_mask")
                if number == 0:
                    tokens += int(mask.sum()) if isinstance(mask, Tensor) else 0
        finally:
            for handle in handles:
                handle.remove()
    return grams, groups, tokens


def _forward(model: nn.Module, batch: dict[str, Tensor], device: Any) -> dict[str, Tensor]:
    """One eval-mode forward of a collated batch (labels dropped); the batch on `device`."""
    batch = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}
    batch.pop("labels", None)
    was_training = model.training
    model.eval()
    try:
        model(**batch)
    finally:
        model.train(was_training)
    return batch


def _groups(
    model: nn.Module, layers: dict[str, RoutedLoRALinear], batch: dict[str, Tensor], device: Any
) -> dict[str, str]:
    """Layer -> the first layer reading the same input tensor, from one forward."""
    groups: dict[str, str] = {}
    # id(input) -> (input, first layer reading it); holding the tensor keeps its id from being
    # reused by a later layer's input
    readers: dict[int, tuple[Tensor, str]] = {}

    def hook(name: str) -> Callable:
        def capture(layer: RoutedLoRALinear, args: tuple) -> None:
            groups[name] = readers.setdefault(id(args[0]), (args[0], name))[1]

        return capture

    handles = [layer.register_forward_pre_hook(hook(name)) for name, layer in layers.items()]
    try:
        _forward(model, batch, device)
    finally:
        for handle in handles:
            handle.remove()
    return groups


def energy_in(basis: Tensor | None, gram: Tensor) -> float:
    """tr(M^T C M) / tr(C): the share of the inputs' energy inside span(M) (0 without M)."""
    total = float(torch.trace(gram))
    if basis is None or basis.shape[1] == 0 or total <= 0:
        return 0.0
    m = basis.to(gram.dtype)
    return float(torch.trace(m.t() @ gram @ m)) / total


def grow_basis(basis: Tensor | None, gram: Tensor, energy: float) -> Tensor:
    """M extended with the fewest directions outside span(M) that bring the inputs of `gram`
    to `energy` of their total (see the module docstring); float64, orthonormal columns."""
    n = gram.shape[0]
    m = gram.new_zeros(n, 0) if basis is None else basis.to(gram.dtype)
    total = float(torch.trace(gram))
    kept = energy_in(m, gram) * total
    if total <= 0 or kept >= energy * total or m.shape[1] >= n:
        return m
    rest = gram - m @ (m.t() @ gram)  # (I - P) C
    rest = rest - (rest @ m) @ m.t()  # (I - P) C (I - P)
    rest = (rest + rest.t()) / 2
    values, vectors = torch.linalg.eigh(rest)  # ascending
    values, vectors = values.flip(0).clamp_min(0), vectors.flip(1)
    # directions the inputs do not reach (rounding-level eigenvalues) are never added, so
    # energy 1 keeps exactly the span of the inputs
    reached = int((values > values[0] * 1e-12).sum()) if float(values[0]) > 0 else 0
    need = energy * total - kept
    cumulative = torch.cumsum(values[:reached], 0)
    count = int(torch.searchsorted(cumulative, torch.tensor(need, dtype=values.dtype))) + 1
    count = min(count, reached, n - m.shape[1])
    new = vectors[:, :count]
    new = new - m @ (m.t() @ new)  # orthogonal to M up to rounding: make it exact
    grown = torch.cat([m, new], dim=1)
    q, _ = torch.linalg.qr(grown)
    return q


def complement(basis: Tensor) -> Tensor:
    """Q (n x (n - k)): an orthonormal basis of the complement of span(M), float64."""
    n, k = basis.shape
    if k == 0:
        return torch.eye(n, dtype=torch.float64, device=basis.device)
    full, _ = torch.linalg.qr(basis.double(), mode="complete")  # (n, n): first k span M
    return full[:, k:]


# --------------------------------------------------------------------------- branches


def branch_init(
    weight: Tensor, basis: Tensor, cfg: AdapterConfig, name: str, index: int
) -> dict[str, Tensor]:
    """Init tensors of branch `index` of layer `name` (see the module docstring)."""
    q = complement(basis).to(weight.device)  # (n, n - k)
    reduced = (weight.detach().double() @ q).float()  # (m, n - k)
    init = init_layer(
        reduced, method=cfg.method, experts=cfg.num_experts, rank=cfg.rank, scaling=cfg.scaling,
        alpha=cfg.alpha, eta=cfg.eta, rho=cfg.rho, segments=cfg.segments,
        seed=layer_seed(cfg.seed, f"{name}.branches.{index}"),
    )  # fmt: skip
    qt = q.t().float()  # ((n - k), n)
    for key in ("lora_A", "init_A"):
        if key in init:
            init[key] = init[key] @ qt  # (r, n), rows in the complement
    return init


def check_room(name: str, n: int, k: int, rank: int) -> None:
    """A branch of rank r needs r input directions outside the basis."""
    if n - k >= rank:
        return
    raise TrainingError(
        f"layer {name}: the earlier tasks' input basis fills {k} of its {n} input directions "
        f"({k / n:.0%}), leaving {n - k} for a new branch of rank {rank}: this layer could not "
        "learn the new task without moving the old ones",
        "lower continual.protect_energy (e.g. --set continual.protect_energy=0.97), or adapt "
        "fewer layers",
    )


def add_protected_branches(
    model: nn.Module,
    bases: dict[str, Tensor],
    groups: dict[str, str],
    cfg: AdapterConfig,
    *,
    router_init_std: float = DEFAULT_ROUTER_INIT_STD,
) -> list[Branch]:
    """Freeze every adapter tensor of `model` and give each adapted layer a new branch in the
    complement of its group's basis, trainable and kept there (`Branch.set_protect`)."""
    layers = list(adapter_layers(model))
    for name, layer in layers:  # every layer checked before the model changes
        basis = bases.get(groups.get(name, name))
        check_room(name, layer.in_features, 0 if basis is None else basis.shape[1], cfg.rank)
    for _, layer in layers:
        for value in layer.adapter_tensors("trainable").values():
            value.requires_grad_(False)
    experts = cfg.num_experts
    added = []
    for name, layer in layers:
        n = layer.in_features
        basis = bases.get(groups.get(name, name))
        basis = torch.zeros(n, 0, dtype=torch.float64) if basis is None else basis
        index = len(layer.branches)
        init = branch_init(layer.weight, basis, cfg, name, index)
        dropout = layer.dropout.p if isinstance(layer.dropout, nn.Dropout) else 0.0
        branch = Branch(
            n, layer.out_features, init, experts=experts, top_k=min(cfg.top_k, experts),
            dropout=dropout, dropout_masks=layer.dropout_masks, router_init_std=router_init_std,
            router_seed=layer_seed(cfg.seed, f"{name}.branches.{index}.router"),
            device=layer.weight.device,
        )  # fmt: skip
        layer.add_branch(branch)
        for value in branch.own_tensors("trainable").values():
            value.requires_grad_(True)
        branch.set_protect(basis.float())
        added.append(branch)
    return added


def branch_params(model: nn.Module) -> list[int]:
    """Parameters of each branch index, summed over layers (trainable and frozen tensors)."""
    sizes: dict[int, int] = {}
    for _, layer in adapter_layers(model):
        for i, branch in enumerate(layer.branches):
            total = sum(v.numel() for part in ("trainable", "frozen")
                        for v in branch.own_tensors(part).values())  # fmt: skip
            sizes[i] = sizes.get(i, 0) + total
    return [sizes[i] for i in sorted(sizes)]


def max_leak(model: nn.Module) -> float:
    """max over protected branches of ||A M|| / ||A||: how far A has left the complement."""
    worst = 0.0
    for _, layer in adapter_layers(model):
        for branch in layer.branches:
            m = branch.protect
            if m is None or m.shape[1] == 0:
                continue
            a = branch.lora_A.detach()
            worst = max(worst, float((a @ m).norm() / a.norm().clamp_min(1e-12)))
    return worst


def to_file(bases: dict[str, Tensor]) -> dict[str, Tensor]:
    """Bases as stored: float32, contiguous."""
    return {g: b.float().contiguous() for g, b in bases.items()}


def batches_of(records: Sequence[Any], collator: Any, size: int) -> Iterable[dict[str, Tensor]]:
    for start in range(0, len(records), size):
        yield collator(list(records[start : start + size]))


# --------------------------------------------------------------------------- a run's protection


class Protection:
    """One protected run's bases: loaded or computed before training (`prepare`), the new
    branches added to the model, and after training the run's own task added (`finish`)."""

    def __init__(self, plan: Any, recipe: Any, processor: Any, device: Any) -> None:
        from medqwen_cli.data.collate import Collator

        self.plan, self.recipe, self.device = plan, recipe, device
        cfg = recipe.train
        self.collator = Collator(
            processor, max_image_pixels=cfg.max_image_pixels, max_length=cfg.max_length
        )
        self.bases: dict[str, Tensor] = {}
        self.groups: dict[str, str] = {}
        self.tasks: dict[str, dict[str, Any]] = {}  # task -> where its basis came from
        self.new_energy: dict[str, float] = {}  # group -> new task's energy inside old bases
        self.guarded: dict[str, int] = {}  # group -> basis columns guarding the new branch
        self.branches = 0

    def _add(self, model: nn.Module, tasks: list[str], records: Sequence[Any]) -> dict[str, float]:
        """Grow the bases by the inputs of `records` (of `tasks`); the share of their energy
        already inside the bases, per group."""
        size = self.recipe.train.batch_size
        grams, groups, tokens = input_grams(
            model, lambda: batches_of(records, self.collator, size), self.device
        )
        if self.groups and groups != self.groups:
            raise TrainingError(
                "the layers' input groups differ from the stored bases' "
                f"({len(groups)} groups now, {len(self.groups)} stored)",
                "continue with the adapter settings the bases were made with",
            )
        self.groups = groups
        inside = {}
        for group, gram in grams.items():
            inside[group] = energy_in(self.bases.get(group), gram)
            self.bases[group] = grow_basis(self.bases.get(group), gram, self.plan.energy)
        for task in tasks:
            self.tasks[task] = {
                "source": "data", "records": len(records), "tokens": tokens,
                "ids": [r.id for r in records],
            }  # fmt: skip
        return inside

    def prepare(self, model: nn.Module, bundle: Any, cfg: AdapterConfig) -> None:
        """Load or compute the earlier tasks' bases; add the new branches (if there are
        earlier tasks)."""
        from medqwen_cli.bundle import load_tensors
        from medqwen_cli.continual.protect import PROTECT_FILE
        from medqwen_cli.continual.replay import CONTINUAL_FILE

        plan = self.plan
        if plan.stored_from is not None:
            stored = load_tensors(bundle.version_dir(plan.stored_from) / PROTECT_FILE)
            self.bases = {g: t.double() for g, t in stored.items()}
            self.groups = dict(bundle.read_json(CONTINUAL_FILE, plan.stored_from)["groups"])
            for task in plan.stored_tasks:
                self.tasks[task] = {"source": f"version {plan.stored_from}"}
        for task, records, _ in plan.from_data:
            self._add(model, [task], records)
        # the columns guarding this version's branch: the bases keep them first as they grow
        self.guarded = {g: int(b.shape[1]) for g, b in self.bases.items()}
        if plan.earlier:
            add_protected_branches(model, self.bases, self.groups, cfg)
            self.branches = max((len(layer.branches) for _, layer in adapter_layers(model)))

    def finish(self, model: nn.Module, tasks: list[str], records: Sequence[Any]) -> None:
        """Add the run's own tasks (their train records, sampled) on the trained model."""
        from medqwen_cli.continual.protect import sample

        chosen = sample(list(records), self.plan.records, self.plan.seed, len(self.plan.earlier))
        self.new_energy = self._add(model, tasks, chosen)

    def to_json(self, model: nn.Module, protected: list[str]) -> dict[str, Any]:
        """`continual.json` of the version."""
        sizes = {g: [int(b.shape[0]), int(b.shape[1])] for g, b in self.bases.items()}
        return {
            "strategy": "protect",
            "protect_energy": self.plan.energy,
            "protect_records": self.plan.records,
            "protected_tasks": protected,  # the new branch cannot move these tasks' inputs
            "branches": self.branches,
            "branch_params": branch_params(model),
            # sizes: [n, k] per group; guarded: the first columns, the earlier tasks' (the
            # branch of this version lies in their complement)
            "bases": {"tasks": list(self.tasks), "sizes": sizes, "guarded": self.guarded},
            "tasks": self.tasks,
            "groups": self.groups,
            # per group: the share of the new task's input energy inside the earlier bases
            "new_task_energy_in_bases": {g: round(v, 6) for g, v in self.new_energy.items()},
        }

    def summary(self, model: nn.Module) -> dict[str, Any]:
        """For the run's result: settings, sources, sizes (no ids)."""
        ks = [int(b.shape[1]) for b in self.bases.values()]
        ns = [int(b.shape[0]) for b in self.bases.values()]
        return {
            "strategy": "protect",
            "protect_energy": self.plan.energy,
            "protected_tasks": list(self.plan.earlier),
            "bases_from": {t: v["source"] for t, v in self.tasks.items()},
            "branches": self.branches,
            "branch_params": branch_params(model),
            "basis_share": [min(k / n for k, n in zip(ks, ns, strict=True)) if ks else 0.0,
                            max(k / n for k, n in zip(ks, ns, strict=True)) if ks else 0.0],
            "new_task_energy_in_bases": (
                [min(self.new_energy.values()), max(self.new_energy.values())]
                if self.new_energy else None
            ),
        }  # fmt: skip
