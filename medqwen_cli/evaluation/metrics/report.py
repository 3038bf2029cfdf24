"""Report-generation metrics: BLEU-1..4, ROUGE-L, and a negation-aware clinical-finding F1.

BLEU-n is sacrebleu's corpus BLEU with `max_ngram_order=n` (13a tokenisation, lowercased,
exponential smoothing, brevity penalty over the corpus), divided by 100 to lie in [0, 1].
ROUGE-L is rouge_score's sentence-level LCS F-measure with Porter stemming, the best over an
item's references, averaged over items.

Finding F1: the caller gives the findings (keywords or phrases, e.g. "effusion",
"pleural effusion", "pneumothorax"). A text is split into clauses at . ; : ! ? and line breaks and
at "but" / "however" / "although" / "except"; a mention of a finding is negated when "no", "not",
"without", "negative for", "free of", "absence of", "neither" or "nor" comes before it in its
clause, or "absent", "resolved", "excluded", "not seen", "not present", "not identified" or
"not visualized" comes after it. A finding is positive in a text when it has at least one mention
that is not negated ("no effusion or pneumothorax" is positive for neither; "small effusion
without pneumothorax" is positive for effusion only). Commas do not split clauses, so a negation
covers a list ("no consolidation, effusion or pneumothorax"). Counts are micro-averaged over
(item, finding) pairs: F1 = 2TP / (2TP + FP + FN). Known limits of so simple a rule: "no change
in the effusion" reads as negated, and a hedge ("possible effusion") as asserted.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from medqwen_cli.evaluation.metrics._base import (
    InMemoryMetric,
    backend,
    metric_info,
    string_features,
)
from medqwen_cli.evaluation.metrics._text import contains, phrase_positions, tokens

BLEU_ORDERS = (1, 2, 3, 4)


def as_reference_lists(references: Sequence[str | Sequence[str]]) -> list[list[str]]:
    return [[r] if isinstance(r, str) else list(r) for r in references]


class ReportBleu(InMemoryMetric):
    """Corpus BLEU-1..4 (sacrebleu, lowercased), in [0, 1]; one or several references per item."""

    def _info(self):
        return metric_info(type(self).__doc__, string_features(multi_reference=True))

    def _compute(self, predictions, references):
        bleu = backend("sacrebleu.metrics").BLEU

        refs = as_reference_lists(references)
        width = max(len(r) for r in refs)
        # sacrebleu takes reference streams: stream k holds every item's k-th reference (None pads)
        streams = [[r[k] if k < len(r) else None for r in refs] for k in range(width)]
        hyps = [p or "" for p in predictions]
        return {
            f"bleu_{n}": bleu(max_ngram_order=n, lowercase=True).corpus_score(hyps, streams).score
            / 100.0
            for n in BLEU_ORDERS
        }


class ReportRougeL(InMemoryMetric):
    """Mean sentence-level ROUGE-L F-measure (rouge_score, Porter stemming), in [0, 1]."""

    def _info(self):
        return metric_info(type(self).__doc__, string_features(multi_reference=True))

    def _compute(self, predictions, references):
        # the default tokenizer, given explicitly: otherwise rouge_score logs "Using default
        # tokenizer." at INFO on every call, which the CLI's stderr shows
        tokenizer = backend("rouge_score.tokenizers").DefaultTokenizer(use_stemmer=True)
        scorer = backend("rouge_score.rouge_scorer").RougeScorer(
            ["rougeL"], use_stemmer=True, tokenizer=tokenizer
        )
        refs = as_reference_lists(references)
        scores = [
            scorer.score_multi(r, p or "")["rougeL"].fmeasure
            for p, r in zip(predictions, refs, strict=True)
        ]
        return {"rouge_l": sum(scores) / len(scores)}


_CLAUSE = re.compile(r"[.;:!?\n]|\b(?:but|however|although|except)\b", re.IGNORECASE)
_PRE_NEGATION: tuple[tuple[str, ...], ...] = (
    ("no",),
    ("not",),
    ("without",),
    ("negative", "for"),
    ("free", "of"),
    ("absence", "of"),
    ("neither",),
    ("nor",),
)
_POST_NEGATION: tuple[tuple[str, ...], ...] = (
    ("absent",),
    ("resolved",),
    ("excluded",),
    ("not", "seen"),
    ("not", "present"),
    ("not", "identified"),
    ("not", "visualized"),
    ("not", "visualised"),
)


def _negated(clause: list[str], start: int, end: int) -> bool:
    before, after = clause[:start], clause[end:]
    return any(contains(before, cue) for cue in _PRE_NEGATION) or any(
        contains(after, cue) for cue in _POST_NEGATION
    )


def positive_findings(text: str | None, findings: Sequence[str]) -> set[str]:
    """The findings that `text` asserts (mentioned at least once without negation)."""
    found: set[str] = set()
    for raw_clause in _CLAUSE.split(text or ""):
        clause = tokens(raw_clause)
        for finding in findings:
            phrase = tokens(finding)
            for i in phrase_positions(clause, phrase):
                if not _negated(clause, i, i + len(phrase)):
                    found.add(finding)
                    break
    return found


class FindingF1(InMemoryMetric):
    """Micro F1 / precision / recall of asserted findings; `findings`: the caller's keywords."""

    def _info(self):
        return metric_info(type(self).__doc__, string_features())

    def _compute(self, predictions, references, findings=()):
        tp = fp = fn = 0
        for pred, ref in zip(predictions, references, strict=True):
            p, r = positive_findings(pred, findings), positive_findings(ref, findings)
            tp, fp, fn = tp + len(p & r), fp + len(p - r), fn + len(r - p)
        return {
            "finding_f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None,
            "finding_precision": tp / (tp + fp) if tp + fp else None,
            "finding_recall": tp / (tp + fn) if tp + fn else None,
        }
