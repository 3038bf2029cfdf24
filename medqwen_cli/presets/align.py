"""Stage-1 alignment: train a fresh vision tower + merger against a frozen language model.

As in stage 1 of the paper (and of LLaVA / Qwen-VL), only the vision side learns; the LM is
frozen, so its text abilities are exactly the source model's. The data are the `report`
records of the five synthetic built-in tasks (xray, ct, mri, fundus, pathology), drawn with a
data seed of their own (`DATA_SEED_OFFSET + seed`) so the images differ from the seed-0 tasks
that users train and evaluate on. The objective is the answer-token cross-entropy

    L = -1/|A| sum_{t in A} log p_LM(y_t | y_<t, merger(ViT(image)))

over the answer tokens A (labels from `data.collate.Collator`, the same chat format as
training). Logits are computed only at the answer positions (the 49k-wide lm_head on every
position would cost as much as a third of the LM). AdamW, linear warm-up then cosine decay,
gradient norm clipped at 1; batches drawn by a generator seeded with `seed`, so a seed gives the
same weights on the same machine. The held-out loss (eval split, same tasks) is measured before
and after, and after once more with every report paired with another case's image: the gap
between the two is what the tower reads from the image itself (findings, sides, sizes) rather
than the modality's report style.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from medqwen_cli.data.synthetic.scenes import MODALITIES as SCENES

DATA_SEED_OFFSET = 1000
MODALITIES = tuple(SCENES)  # xray, ct, mri, fundus, pathology: the synthetic image tasks
TRAIN_SIZE = 150  # records per task and split `train` (a fifth are reports)


@dataclass
class AlignmentResult:
    """What `align` did; written to the preset's `alignment.json`."""

    steps: int
    batch_size: int
    lr: float
    seed: int
    data_seed: int
    train_records: int
    eval_records: int
    eval_before: float
    eval_after: float
    eval_after_mismatched: float  # each held-out report scored against another case's image
    seconds: float
    losses: list[float] = field(default_factory=list)  # training loss per step

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def report_records(seed: int = 0, cache_dir: Path | None = None) -> tuple[list[Any], list[Any]]:
    """(train, eval) report records of the five synthetic built-in tasks for `seed`, generated
    under `cache_dir` (default: `Settings.from_env().cache_dir`)."""
    from medqwen_cli.data import load_records
    from medqwen_cli.recipe import DatasetSpec
    from medqwen_cli.settings import Settings

    cache = cache_dir if cache_dir is not None else Settings.from_env().cache_dir

    splits: tuple[list[Any], list[Any]] = ([], [])
    for task in MODALITIES:
        spec = DatasetSpec(path=f"builtin:{task}")
        for split, into in zip(("train", "eval"), splits, strict=True):
            records = load_records(
                spec,
                split,
                cache_dir=cache,
                builtin_seed=DATA_SEED_OFFSET + seed,
                builtin_size=TRAIN_SIZE,
            )
            into.extend(r for r in records if r.type == "report")
    return splits


def answer_loss(model: Any, batch: dict[str, Any]) -> Any:
    """Mean cross-entropy over the answer tokens of a Collator batch."""
    import torch.nn.functional as F

    labels = batch["labels"][:, 1:]  # (B, L-1): token t+1 is predicted at position t
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    hidden = model.model(**inputs).last_hidden_state[:, :-1]  # (B, L-1, H)
    keep = labels != -100
    logits = model.lm_head(hidden[keep])  # (N, V): answer positions only
    return F.cross_entropy(logits.float(), labels[keep])


def swap_images(records: Sequence[Any]) -> list[Any]:
    """Each record with the images of the next record of the same task (cyclically): the loss
    on these tells how much the aligned tower reads the image beyond the modality's style."""
    by_task: dict[Any, list[int]] = {}
    for i, r in enumerate(records):
        by_task.setdefault(r.task, []).append(i)
    out = list(records)
    for idx in by_task.values():
        for j, i in enumerate(idx):
            out[i] = records[i].model_copy(
                update={"images": records[idx[(j + 1) % len(idx)]].images}
            )
    return out


def evaluate(model: Any, collator: Any, records: Sequence[Any], batch_size: int) -> float:
    """Token-weighted mean answer loss over `records` (no grad)."""
    import torch

    total, tokens = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(records), batch_size):
            batch = collator(records[i : i + batch_size])
            n = int((batch["labels"][:, 1:] != -100).sum())
            total += float(answer_loss(model, batch)) * n
            tokens += n
    return total / max(tokens, 1)


def align(
    model: Any,
    processor: Any,
    *,
    steps: int,
    seed: int = 0,
    batch_size: int = 4,
    lr: float = 3e-3,
    warmup: float = 0.1,
    on_step: Callable[[int, int, float], None] | None = None,
    records: tuple[Sequence[Any], Sequence[Any]] | None = None,
    cache_dir: Path | None = None,
) -> AlignmentResult:
    """Train `model.model.visual` (ViT + merger) for `steps` steps; the rest stays frozen.
    The model is left in eval mode with no grads."""
    import torch

    from medqwen_cli.data.collate import Collator

    start = time.perf_counter()
    train, held_out = records if records is not None else report_records(seed, cache_dir)
    collator = Collator(processor)
    visual = model.model.visual
    model.eval().requires_grad_(False)
    visual.requires_grad_(True)
    params = [p for p in visual.parameters() if p.requires_grad]
    eval_before = evaluate(model, collator, held_out, batch_size)

    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    warm = max(1, int(warmup * steps))

    def schedule(step: int) -> float:  # step counts from 0
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, steps - warm)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    order: list[int] = []
    losses: list[float] = []
    for step in range(steps):
        if len(order) < batch_size:  # a fresh permutation per epoch
            order += torch.randperm(len(train), generator=generator).tolist()
        batch = collator([train[i] for i in order[:batch_size]])
        del order[:batch_size]
        loss = answer_loss(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(round(loss.item(), 5))
        if on_step is not None:
            on_step(step + 1, steps, losses[-1])

    model.eval().requires_grad_(False)
    eval_after = evaluate(model, collator, held_out, batch_size)
    mismatched = evaluate(model, collator, swap_images(held_out), batch_size)
    return AlignmentResult(
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        data_seed=DATA_SEED_OFFSET + seed,
        train_records=len(train),
        eval_records=len(held_out),
        eval_before=round(eval_before, 5),
        eval_after=round(eval_after, 5),
        eval_after_mismatched=round(mismatched, 5),
        seconds=round(time.perf_counter() - start, 1),
        losses=losses,
    )
