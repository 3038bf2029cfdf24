"""CIDEr-D (Vedantam, Zitnick and Parikh, CVPR 2015), as in the coco-caption reference code.

Texts are lowercased and split into alphanumeric words. For each item i with hypothesis c_i and
references S_i, and each n-gram order n = 1..4:

    g_n(s)[w] = tf(w, s) * (log N - log max(1, df(w)))

where tf is the n-gram's count in sentence s, N the number of items in the corpus and df(w) the
number of items whose references contain w (document frequency over the *reference* corpus only).
Between the hypothesis and one reference s:

    sim_n(c, s) = sum_w min(g_n(c)[w], g_n(s)[w]) * g_n(s)[w] / (|g_n(c)| * |g_n(s)|)   (clipping)
                  * exp(-(len(c) - len(s))^2 / (2 * sigma^2))                       (sigma = 6)

(a zero norm leaves the numerator, itself 0, undivided). Then

    CIDEr-D(c_i, S_i) = 10 / |S_i| * sum_{s in S_i} mean_n sim_n(c_i, s)

and the corpus score is the mean over items. Because the idf comes from the evaluated corpus, a
corpus of one item scores 0 (log N = 0), and n-grams found in every item's references weigh 0.
Lengths are word counts (the reference code counts bigrams; the two differ by one on each side,
so the penalty is the same, except for an empty text, which scores 0 either way).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

from medqwen_cli.evaluation.metrics._base import InMemoryMetric, metric_info, string_features
from medqwen_cli.evaluation.metrics.report import as_reference_lists

_WORD = re.compile(r"[a-z0-9]+")
NGRAM_ORDER = 4
SIGMA = 6.0

Ngram = tuple[str, ...]


def cider_words(text: str | None) -> list[str]:
    return _WORD.findall((text or "").lower())


def ngram_counts(words: Sequence[str], order: int = NGRAM_ORDER) -> list[Counter[Ngram]]:
    """counts[n-1][ngram] for n = 1..order."""
    return [
        Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
        for n in range(1, order + 1)
    ]


def _tfidf(counts: list[Counter[Ngram]], df: Counter[Ngram], log_n: float):
    vectors = [{g: tf * (log_n - math.log(max(1.0, df[g]))) for g, tf in c.items()} for c in counts]
    norms = [math.sqrt(sum(v * v for v in vec.values())) for vec in vectors]
    return vectors, norms


def cider_d_scores(
    predictions: Sequence[str | None],
    references: Sequence[Sequence[str]],
    sigma: float = SIGMA,
    order: int = NGRAM_ORDER,
) -> list[float]:
    """Per-item CIDEr-D scores (the corpus score is their mean)."""
    hyp_words = [cider_words(p) for p in predictions]
    ref_words = [[cider_words(r) for r in refs] for refs in references]
    hyp_counts = [ngram_counts(w, order) for w in hyp_words]
    ref_counts = [[ngram_counts(w, order) for w in refs] for refs in ref_words]

    df: Counter[Ngram] = Counter()
    for refs in ref_counts:  # each item counts once per n-gram, whatever its number of references
        df.update({g for counts in refs for c in counts for g in c})
    log_n = math.log(len(references))

    scores = []
    for words, counts, refs_w, refs_c in zip(
        hyp_words, hyp_counts, ref_words, ref_counts, strict=True
    ):
        vec_h, norm_h = _tfidf(counts, df, log_n)
        total = 0.0
        for words_r, counts_r in zip(refs_w, refs_c, strict=True):
            vec_r, norm_r = _tfidf(counts_r, df, log_n)
            penalty = math.exp(-((len(words) - len(words_r)) ** 2) / (2 * sigma**2))
            sims = []
            for n in range(order):
                dot = sum(
                    min(v, vec_r[n].get(g, 0.0)) * vec_r[n].get(g, 0.0) for g, v in vec_h[n].items()
                )
                if norm_h[n] and norm_r[n]:
                    dot /= norm_h[n] * norm_r[n]
                sims.append(dot * penalty)
            total += sum(sims) / order
        scores.append(10.0 * total / len(refs_w))
    return scores


class CiderD(InMemoryMetric):
    """Corpus CIDEr-D (n = 1..4, sigma = 6, clipped, x10); one or several references per item."""

    def _info(self):
        return metric_info(type(self).__doc__, string_features(multi_reference=True))

    def _compute(self, predictions, references):
        scores = cider_d_scores(predictions, as_reference_lists(references))
        return {"cider": sum(scores) / len(scores)}
