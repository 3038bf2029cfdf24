"""Runners: answer evaluation records with a (possibly adapted) Qwen2-VL, batched, no grads.

Every record is rendered by the training collator (`medqwen_cli.data.collate.Collator`), so the
model sees the chat format it was tuned on. Two ways to answer:

**Likelihood** (closed VQA with candidates, POPE, classification). A record with candidate
answers c_1..c_K (its `labels`: yes/no, the options, or the class set) is answered by

    ll(c) = sum_{t=1..|c|} log p(y_t | prompt, y_<t),   y = tokens(c) + end-of-turn
    prediction = argmax_c ll(c)          p(c | one of the candidates) = softmax_c ll(c)

The sum is the log-probability that the model answers exactly `c` and stops: it includes the
end-of-turn token, so a prefix of a longer answer ("left" vs "left lung") is not favoured, and
it is not length-normalised, so softmax over the candidates is the model's own distribution
restricted to them (the per-class scores classification AUC needs). Length normalisation
(mean log-probability) would break that reading and reward long candidates whose later tokens
are easy; candidate sets here are short labels, where the summed score is the standard choice.
Nothing is parsed, so no answer is unparseable.

Cost: the prompt (image included) runs once per record; its KV cache is then copied to one row
per candidate and only the candidate tokens run on top (`_score_batch`). The prompt's M-RoPE
positions are computed once (`get_rope_index`) and the candidate tokens continue them.

**Generate** (open VQA, reports, anything without candidates, and every type under
`scoring="generate"`): greedy decoding with the KV cache (`model.generate`, `do_sample=False`),
prompts left-padded so the new tokens of every row start at the same column; decoding stops at
the template's end-of-turn token or EOS. Closed and POPE answers are then parsed by the metrics;
a classification answer is mapped to the one label it names (`match_choice`), else kept as is
(invalid).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from medqwen_cli.data.records import YES_NO, Record, is_yes_no
from medqwen_cli.evaluation.metrics._text import match_choice
from medqwen_cli.recipe import Scoring

LIKELIHOOD_TYPES = ("vqa_closed", "pope", "classification")
IGNORE_INDEX = -100
# Candidate rows per likelihood forward: bounds the (rows, answer tokens, vocabulary) logits,
# ~150k words wide for Qwen2-VL, when a label set is large.
MAX_ROWS = 64


@dataclass
class Prediction:
    """One record's answer. `candidates`/`probabilities` only for likelihood scoring."""

    id: str
    task: str
    type: str
    prediction: str
    reference: str
    method: Scoring
    candidates: list[str] | None = None
    log_likelihoods: list[float] | None = None
    probabilities: list[float] | None = None  # softmax over log_likelihoods

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "task": self.task,
            "type": self.type,
            "prediction": self.prediction,
            "reference": self.reference,
            "scoring": self.method,
        }
        if self.candidates is not None and self.probabilities is not None:
            out["scores"] = dict(zip(self.candidates, self.probabilities, strict=True))
        return out


def candidates_for(record: Record, scoring: Scoring) -> list[str] | None:
    """The answers to score for `record`, or None when it must be generated."""
    if scoring != "likelihood" or record.type not in LIKELIHOOD_TYPES:
        return None
    if record.labels:
        return list(record.labels)
    if record.type == "pope" or is_yes_no(record.answer):
        return list(YES_NO)
    return None


class Runner:
    """Answers records with `model` (put in eval mode here); see the module docstring."""

    def __init__(
        self,
        model: Any,
        processor: Any,
        *,
        batch_size: int = 8,
        max_new_tokens: int = 64,
        max_image_pixels: int = 224 * 224,
        max_length: int = 2048,
    ) -> None:
        from medqwen_cli.data.collate import Collator

        self.model = model.eval()
        # the KV-cache argument was renamed `cache` (the old name warns on every call)
        forward = inspect.signature(type(model).forward).parameters
        self._cache_kw = "cache" if "cache" in forward else "past_key_values"
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.prompts = Collator(
            processor, max_image_pixels=max_image_pixels, max_length=max_length,
            for_generation=True,
        )  # fmt: skip
        self.answers = Collator(processor, max_image_pixels=max_image_pixels, max_length=max_length)
        self.tokenizer = processor.tokenizer
        self._end_id: int | None = None

    # ------------------------------------------------------------------ public

    def run(
        self,
        records: Sequence[Record],
        scoring: Scoring = "likelihood",
        advance: Callable[[int, Record], None] | None = None,
    ) -> list[Prediction]:
        """One Prediction per record, in order. `advance(n, last)` after each batch of n."""
        import torch

        cands = [candidates_for(r, scoring) for r in records]
        scored = [i for i, c in enumerate(cands) if c is not None]
        generated = [i for i, c in enumerate(cands) if c is None]
        out: list[Prediction | None] = [None] * len(records)
        with torch.no_grad():
            for chunk in _chunks(scored, self.batch_size, [len(cands[i]) for i in scored]):
                batch = [records[i] for i in chunk]
                lls = self.score_candidates(batch, [cands[i] for i in chunk])
                for i, ll in zip(chunk, lls, strict=True):
                    out[i] = _chosen(records[i], cands[i], ll)
                if advance:
                    advance(len(chunk), batch[-1])
            for chunk in _chunks(generated, self.batch_size):
                batch = [records[i] for i in chunk]
                for i, text in zip(chunk, self.generate(batch), strict=True):
                    out[i] = _generated(records[i], text)
                if advance:
                    advance(len(chunk), batch[-1])
        return [p for p in out if p is not None]

    def generate(self, records: Sequence[Record]) -> list[str]:
        """Greedy answers of one batch (left-padded prompts, KV cache)."""
        import torch
        from transformers import GenerationConfig

        batch = self._to_model(self.prompts(records))
        # A fresh config, not the checkpoint's: Qwen2-VL-Instruct ships sampling settings and a
        # repetition penalty, and greedy decoding here means plain argmax at every step.
        config = GenerationConfig(
            do_sample=False,
            num_beams=1,
            max_new_tokens=self.max_new_tokens,
            pad_token_id=self.prompts.pad_id,
            eos_token_id=self._stop_ids(),
        )
        with torch.no_grad():
            out = self.model.generate(**batch, generation_config=config)
        new = out[:, batch["input_ids"].shape[1] :]  # (B, new tokens)
        texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
        return [t.strip() for t in texts]

    def score_candidates(
        self, records: Sequence[Record], candidates: Sequence[Sequence[str]]
    ) -> list[list[float]]:
        """Total log-likelihood of each candidate answer (end-of-turn included), per record."""
        import torch

        tokens = [
            [self._answer_tokens(r, c) for c in cs]
            for r, cs in zip(records, candidates, strict=True)
        ]
        with torch.no_grad():
            flat = self._score_batch(records, tokens)
        out, k = [], 0
        for cs in candidates:
            out.append(flat[k : k + len(cs)])
            k += len(cs)
        return out

    # ------------------------------------------------------------------ internals

    def _score_batch(self, records: Sequence[Record], tokens: list[list[list[int]]]) -> list[float]:
        import torch

        batch = self._to_model(self.prompts(records))
        ids, mask = batch["input_ids"], batch["attention_mask"]  # (B, P), left-padded
        positions = self._positions(batch)  # (3, B, P)
        prefill = self.model(**batch, position_ids=positions, use_cache=True, logits_to_keep=1)
        first = prefill.logits[:, -1].float().log_softmax(-1)  # (B, V): p(y_1 | prompt)

        rows = torch.tensor([b for b, cs in enumerate(tokens) for _ in cs], device=ids.device)
        seqs = [seq for cs in tokens for seq in cs]
        width = max(len(s) for s in seqs)
        cont = torch.full((len(seqs), width), self.prompts.pad_id, dtype=torch.long)
        cont_mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for r, seq in enumerate(seqs):  # right-padded: padding only ever follows real tokens
            cont[r, : len(seq)] = torch.tensor(seq)
            cont_mask[r, : len(seq)] = 1
        cont, cont_mask = cont.to(ids.device), cont_mask.to(ids.device)

        cache = getattr(prefill, "cache", None)  # transformers >= 5.2x; `past_key_values` before
        if cache is None:
            cache = prefill.past_key_values
        cache.reorder_cache(rows)  # (R, ...) one copy of the prompt's cache per candidate
        start = positions[:, :, -1].amax(0)[rows] + 1  # (R,) next text position after the prompt
        cont_pos = (start[:, None] + torch.arange(width, device=ids.device)).expand(3, -1, -1)
        logits = self.model(
            input_ids=cont,
            attention_mask=torch.cat([mask[rows], cont_mask], dim=1),  # (R, P + W)
            position_ids=cont_pos,  # (3, R, W)
            use_cache=True,
            **{self._cache_kw: cache},
        ).logits.float()  # (R, W, V): position t predicts token t + 1

        ll = first[rows, cont[:, 0]]  # (R,)
        if width > 1:
            rest = logits[:, :-1].log_softmax(-1).gather(-1, cont[:, 1:, None])[..., 0]  # (R, W-1)
            ll = ll + (rest * cont_mask[:, 1:]).sum(1)
        return ll.tolist()

    def _positions(self, batch: dict[str, Any]) -> Any:
        """M-RoPE positions (3, B, P) of a left-padded prompt batch, as the model computes them."""
        import torch

        inner = self.model.model
        kwargs = {
            "input_ids": batch["input_ids"],
            "image_grid_thw": batch.get("image_grid_thw"),
            "attention_mask": batch["attention_mask"],
        }
        if "mm_token_type_ids" in inspect.signature(inner.get_rope_index).parameters:
            kwargs["mm_token_type_ids"] = batch.get(
                "mm_token_type_ids", torch.zeros_like(batch["input_ids"])
            )
        positions, _ = inner.get_rope_index(**kwargs)
        return positions

    def _answer_tokens(self, record: Record, answer: str) -> list[int]:
        """Tokens the collator trains on for `answer` (the answer and the end-of-turn token)."""
        probe = record.model_copy(update={"answer": answer, "images": [], "labels": None})
        encoded = self.answers.encode(probe)
        return [t for t in encoded.labels if t != IGNORE_INDEX]

    def _stop_ids(self) -> list[int]:
        if self._end_id is None:
            probe = Record(
                id="probe", type="vqa_open", question="q", answer="a", source="-", line=0
            )
            self._end_id = self._answer_tokens(probe, "a")[-1]
        eos = self.tokenizer.eos_token_id
        return [self._end_id] + ([int(eos)] if eos is not None and eos != self._end_id else [])

    def _to_model(self, batch: dict[str, Any]) -> dict[str, Any]:
        device, dtype = self.model.device, self.model.dtype
        return {
            k: v.to(device, dtype) if k == "pixel_values" else v.to(device)
            for k, v in batch.items()
        }


def _chunks(
    items: list[int], size: int, rows: list[int] | None = None, max_rows: int = MAX_ROWS
) -> list[list[int]]:
    """Batches of at most `size` items and, when `rows` (candidates per item) is given, at most
    `max_rows` candidate rows (a lone item with more candidates still gets its own batch)."""
    rows = rows or [1] * len(items)
    chunks: list[list[int]] = []
    current: list[int] = []
    used = 0
    for item, n in zip(items, rows, strict=True):
        if current and (len(current) == size or used + n > max(max_rows, size)):
            chunks.append(current)
            current, used = [], 0
        current.append(item)
        used += n
    return chunks + ([current] if current else [])


def _chosen(record: Record, candidates: list[str], ll: list[float]) -> Prediction:
    import math

    top = max(ll)
    weights = [math.exp(v - top) for v in ll]
    total = sum(weights)
    best = max(range(len(ll)), key=ll.__getitem__)  # first of ties: the label order decides
    return Prediction(
        id=record.id,
        task=record.task or "",
        type=record.type,
        prediction=candidates[best],
        reference=record.answer,
        method="likelihood",
        candidates=candidates,
        log_likelihoods=ll,
        probabilities=[w / total for w in weights],
    )


def _generated(record: Record, text: str) -> Prediction:
    prediction = text
    if record.type == "classification" and record.labels:
        prediction = match_choice(text, record.labels) or text
    return Prediction(
        id=record.id,
        task=record.task or "",
        type=record.type,
        prediction=prediction,
        reference=record.answer,
        method="generate",
    )
