"""Subspaces of layer inputs, the maths of protect (docs/continual.md): pure torch, no I/O.

Every adapted layer reads an input x (n). Layers that read the same tensor share it (q/k/v read
the attention's input, gate/up the MLP's): a *group*, named by its first layer. For a task,
X (n x tokens) holds the group's inputs over a sample of its train records (non-padding tokens),
through the Gram matrix C = X X^T (float64, summed over batches). Against the basis M (n x k,
orthonormal; empty at first) kept so far:

    kept = tr(M^T C M) / tr(C)                 the share of the task's energy already in span(M)
    R    = (I - M M^T) C (I - M M^T)           eigenvalues l_1 >= l_2 >= ..., vectors v_i
    M   <- [M, v_1 .. v_j], the fewest j with kept + (l_1 + .. + l_j) / tr(C) >= eps

(GPM's rule, from C instead of an SVD of X: the same vectors, n x n memory whatever the number
of tokens). Bases accumulate over tasks; `complement` gives Q (n x (n - k)), an orthonormal
basis of what is left, in which a protected branch's input side lives.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from medqwen_cli.adapters.inject import adapter_layers
from medqwen_cli.adapters.layer import RoutedLoRALinear

GRAM_BUDGET = 2 * 2**30  # bytes of Gram matrices held at once; more groups: more passes


@torch.no_grad()
def input_grams(
    model: nn.Module,
    batches: Callable[[], Iterable[dict[str, Tensor]]],
    device: torch.device | str,
    *,
    budget: int = GRAM_BUDGET,
    only: set[str] | None = None,
) -> tuple[dict[str, Tensor], dict[str, str], int]:
    """(group -> C = X X^T (n x n, float64), layer -> group, non-padding tokens seen) over
    the collated records `batches()` yields, run through `model` as it is.

    One forward of the first batch finds the groups (the layers that read one tensor); then
    the groups' Gram matrices are summed over every batch, as many groups per pass as fit in
    `budget` bytes (Qwen2-VL-2B's down_proj input alone is 8960 x 8960 x 8 B = 640 MB, 28 of
    them 18 GB: several passes over the records instead of one that would not fit).
    `only`: layer names; only the groups that one of them reads are computed (default all).
    """
    layers = dict(adapter_layers(model))
    groups = _groups(model, layers, next(iter(batches())), device)
    wanted = None if only is None else {groups.get(name, name) for name in only}
    leaders = [g for g in dict.fromkeys(groups.values()) if wanted is None or g in wanted]
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


def new_directions(basis: Tensor | None, gram: Tensor, energy: float) -> Tensor:
    """The fewest directions outside span(M) that bring the inputs of `gram` to `energy` of
    their total (see the module docstring): n x j, float64, orthonormal, orthogonal to M, in
    decreasing order of the energy they carry; j = 0 when M already holds enough."""
    return candidate_directions(basis, gram, energy)[0]


def candidate_directions(
    basis: Tensor | None, gram: Tensor, energy: float, spare: float = 0.0
) -> tuple[Tensor, int]:
    """(block, count): `new_directions`' `count` columns (the fewest for `energy`), then, with
    `spare` > 0, up to ceil(spare * count) + 1 next ones. Any first j columns of the block are
    what the fewest-for-some-energy rule gives for j (Gram-Schmidt keeps prefixes), so a caller
    may take more than `count` without another eigendecomposition."""
    n = gram.shape[0]
    m = gram.new_zeros(n, 0) if basis is None else basis.to(gram.dtype)
    total = float(torch.trace(gram))
    kept = energy_in(m, gram) * total
    if total <= 0 or kept >= energy * total or m.shape[1] >= n:
        return gram.new_zeros(n, 0), 0
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
    room = min(reached, n - m.shape[1])
    count = min(count, room)
    extra = math.ceil(spare * count) + 1 if spare > 0 else 0
    new = vectors[:, : min(count + extra, room)]
    for _ in range(2):  # orthogonal to M up to rounding: make it exact (twice is enough)
        new = new - m @ (m.t() @ new)
    q, _ = torch.linalg.qr(new)  # orthonormal among themselves, their order (and span) kept
    return q, count


def quantize(directions: Tensor) -> tuple[Tensor, Tensor]:
    """Directions (n x j) as 8-bit codes and one float32 scale per column: column c stands for
    codes[:, c] * scale[c] (`dequantize`), every entry within scale[c] / 2 of it."""
    scale = (directions.abs().amax(dim=0) / 127).float().clamp_min(torch.finfo(torch.float32).tiny)
    codes = (directions / scale.double()).round().clamp(-127, 127).to(torch.int8)
    return codes.contiguous(), scale.contiguous()


def dequantize(codes: Tensor, scale: Tensor) -> Tensor:
    """The float64 block 8-bit codes and their column scales stand for (exact: an int8 times a
    float32 is a float64 without rounding, so every run gets the same numbers)."""
    return codes.double() * scale.double()[None, :]


def settle(basis: Tensor | None, stored: Tensor) -> Tensor:
    """The orthonormal directions a stored block (8-bit codes dequantized, or 16 bits) stands
    for: its columns, in order, made orthogonal to M (n x K, orthonormal) and to each other,
    float64. The run that adds a basis and every later run that reads its file compute this
    from the same stored numbers, so the directions a later run guards are exactly those the
    adding run measured (module docstring of continual/bases.py)."""
    new = stored.double().contiguous()  # one memory layout, so the rounding is the same
    if basis is not None and basis.shape[1]:
        m = basis.to(new.dtype).contiguous()
        for _ in range(2):  # twice: orthogonal to M up to rounding
            new = new - m @ (m.t() @ new)
    q, r = torch.linalg.qr(new)
    signs = torch.sign(torch.diagonal(r))
    return q * torch.where(signs == 0, 1.0, signs)  # each column kept pointing its own way


def grow_basis(basis: Tensor | None, gram: Tensor, energy: float) -> Tensor:
    """M extended by `new_directions` (M's columns first, unchanged)."""
    n = gram.shape[0]
    m = gram.new_zeros(n, 0) if basis is None else basis.to(gram.dtype)
    return torch.cat([m, new_directions(m, gram, energy)], dim=1)


def column_energies(columns: Tensor, gram: Tensor) -> Tensor:
    """u_c^T C u_c / tr(C) for every column u_c of `columns` (orthonormal, n x K): the share of
    the inputs' energy along each; over any subset of the columns they add up to the energy in
    its span. float64, (K,)."""
    total = torch.trace(gram)
    if columns.shape[1] == 0 or float(total) <= 0:
        return gram.new_zeros(columns.shape[1])
    u = columns.to(gram.dtype)
    return ((gram @ u) * u).sum(0) / total


def choose_columns(
    owner: Sequence[int], energies: Sequence[Tensor | None], energy: float, room: int
) -> tuple[Tensor, list[float | None]]:
    """Which of a group's stored columns guard a new branch, and how much each task keeps.

    Column c was added for task `owner[c]`; `energies[t]` is task t's energy along columns
    0 .. len - 1 (`column_energies` when it was added: its own columns and every earlier one),
    or None when unknown (bases of an older medqwen: all its columns are kept). Per task, in
    order, its own columns are taken in their order (decreasing energy) until the columns
    taken so far hold `energy` of it. When more are taken than `room` (the directions the
    branch can leave to the old tasks: n - rank), the `room` columns worth most to some task
    stay. Returns (a boolean mask over the columns, per task the energy of it the mask holds,
    counted on the columns its record covers: a lower bound; None when unknown).
    """
    count = len(owner)
    keep = torch.zeros(count, dtype=torch.bool)
    owners = torch.tensor(list(owner), dtype=torch.long)
    for task, e in enumerate(energies):
        own = (owners == task).nonzero().flatten().tolist()
        if e is None:
            keep[own] = True
            continue
        have = float(e[keep[: len(e)]].sum())
        for c in own:
            if have >= energy - 1e-12:
                break
            keep[c] = True
            have += float(e[c])
    if int(keep.sum()) > room:
        worth = torch.zeros(count, dtype=torch.float64)
        for task, e in enumerate(energies):
            if e is None:  # unknown: earlier columns of the task first, as they were added
                own = (owners == task).nonzero().flatten()
                worth[own] = torch.maximum(
                    worth[own], 1.0 - torch.arange(len(own)) / max(len(own), 1)
                )
            else:
                worth[: len(e)] = torch.maximum(worth[: len(e)], e.double())
        worth[~keep] = -1.0
        chosen = torch.argsort(worth, descending=True, stable=True)[: max(room, 0)]
        keep = torch.zeros(count, dtype=torch.bool)
        keep[chosen] = True
    held = [None if e is None else float(e[keep[: len(e)]].sum()) for e in energies]
    return keep, held


def complement(basis: Tensor) -> Tensor:
    """Q (n x (n - k)): an orthonormal basis of the complement of span(M), float64."""
    n, k = basis.shape
    if k == 0:
        return torch.eye(n, dtype=torch.float64, device=basis.device)
    full, _ = torch.linalg.qr(basis.double(), mode="complete")  # (n, n): first k span M
    return full[:, k:]
