"""The forgetting study's measures and statistics (no torch; imported by the report and tests).

A cell is one (method, seed, strategy, pair): A trained from the init (its "A version"), then
the pair's second task B from that version. Per cell, from the per-record rows kept in the
results file ([id, correct, p(reference)] per eval record):

    A after A, A after B, B after B     accuracies (absolute)
    kept   = A after B / A after A      a ratio: gains on A's wrong answers lift it above 1
    lost   = #{records right after A and wrong after B} / n
    gained = #{records wrong after A and right after B} / n     (drop = lost - gained)

Across seeds: the mean with a 95 % Student t interval, and for two configurations on the same
seeds the paired difference with its t interval and an exact sign-flip test. Two cells pair
only when their A versions are the same: the A digest (`a_digest`) fingerprints a version by
its final loss and every score it was given right after A.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import statistics

METHODS = ("lora", "moelora", "sslora", "pissa")
TASK_A, TASK_B, TASK_C = "cxr-rules", "derm-rules", "ct-rules"
PAIRS = {"conflict": TASK_B, "control": TASK_C}
COMPARISONS = (("sslora", "lora"), ("sslora", "moelora"), ("sslora", "pissa"), ("moelora", "lora"))


def a_digest(run: dict) -> str:
    """16 hex digits of sha256 over the A version's final loss and its scores right after A
    (accuracy, NLL and every per-record row, on every task scored). A version retrained on
    another CPU differs in its float rounding, so it gets another digest."""
    payload = {"loss": run["loss_A"], "after_A": run["after_A"]}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def t_interval(values: list[float]) -> tuple[float, float, float]:
    """(mean, lower, upper) of a 95% Student t interval; the bounds are the mean for n = 1."""
    n, mean = len(values), statistics.mean(values)
    if n < 2:
        return mean, mean, mean
    from scipy.stats import t

    half = t.ppf(0.975, n - 1) * statistics.stdev(values) / math.sqrt(n)
    return mean, mean - half, mean + half


def sign_flip_p(diffs: list[float]) -> float:
    """Exact two-sided sign-flip (paired permutation) test of mean difference 0: the share of
    the 2^n sign assignments whose |mean| is at least the observed |mean|."""
    observed = abs(sum(diffs))
    hits = sum(
        abs(sum(s * d for s, d in zip(signs, diffs, strict=True))) >= observed - 1e-12
        for signs in itertools.product((1, -1), repeat=len(diffs))
    )
    return hits / 2 ** len(diffs)


def fmt_ci(values: list[float], digits: int = 3) -> str:
    mean, lo, hi = t_interval(values)
    if len(values) < 2:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


_CONFLICTING: set[str] = set()


def conflicting_ids() -> set[str]:
    """Ids of A's eval records whose answer B's rules contradict (the records' meta says so)."""
    if not _CONFLICTING:
        from medqwen_cli.data.readers import load_records
        from medqwen_cli.modeling import data_cache_dir
        from medqwen_cli.recipe import DatasetSpec

        spec = DatasetSpec(path=f"builtin:{TASK_A}")
        for record in load_records(spec, "eval", cache_dir=data_cache_dir()):
            if record.meta.get("conflicts_with_other_convention"):
                _CONFLICTING.add(record.id)
    return _CONFLICTING


def kept_accuracy(records: list[list]) -> float:
    """Accuracy on the records B does not contradict ([id, correct, p_ref] rows)."""
    kept = [correct for rid, correct, _ in records if rid not in conflicting_ids()]
    return sum(kept) / len(kept)


def record_changes(run: dict, pair: str) -> tuple[int, int, int]:
    """(gained, lost, n): A's eval records wrong after A and right after B, right after A and
    wrong after B, and how many records both scored."""
    before = {rid: correct for rid, correct, _ in run["after_A"][TASK_A]["records"]}
    after = {rid: correct for rid, correct, _ in run["pairs"][pair]["scores"][TASK_A]["records"]}
    common = before.keys() & after.keys()
    gained = sum(1 for rid in common if not before[rid] and after[rid])
    lost = sum(1 for rid in common if before[rid] and not after[rid])
    return gained, lost, len(common)


def _share(run: dict, pair: str, which: int) -> float:
    counts = record_changes(run, pair)
    return counts[which] / counts[2]


def _acc(run: dict, pair: str, task: str, phase: str) -> float:
    return (
        run["after_A"][task]["acc"] if phase == "A" else run["pairs"][pair]["scores"][task]["acc"]
    )


MEASURES = {  # name -> (definition, function of one run and pair)
    "A after A": ("accuracy on A right after training A (plasticity)",
                  lambda r, p: _acc(r, p, TASK_A, "A")),
    "A after B": ("accuracy on A after training the pair's second task (absolute)",
                  lambda r, p: _acc(r, p, TASK_A, "B")),
    "drop of A": ("A after A - A after B (forgetting, absolute; = lost - gained)",
                  lambda r, p: _acc(r, p, TASK_A, "A") - _acc(r, p, TASK_A, "B")),
    "A lost": ("share of A's records right after A and wrong after the second task (retention)",
               lambda r, p: _share(r, p, 1)),
    "A gained": ("share of A's records wrong after A and right after the second task",
                 lambda r, p: _share(r, p, 0)),
    "kept": ("A after B / A after A (a ratio: gains lift it above 1, so it does not judge "
             "retention)", lambda r, p: _acc(r, p, TASK_A, "B") / _acc(r, p, TASK_A, "A")),
    "A during B": ("mean accuracy on A over the curve's points after step 0 (area under the "
                   "forgetting curve: how fast A is lost)",
                   lambda r, p: statistics.mean(c[1] for c in r["pairs"][p]["curve"] if c[0] > 0)),
    "A after B, uncontradicted": (
        "accuracy after the second task on A's records whose answers B does not contradict",
        lambda r, p: kept_accuracy(r["pairs"][p]["scores"][TASK_A]["records"])),
    "B after B": ("accuracy on the second task after training it (plasticity)",
                  lambda r, p: _acc(r, p, PAIRS[p], "B")),
    "NLL A after A": ("answer NLL on A right after training A",
                      lambda r, p: r["after_A"][TASK_A]["nll"]),
    "NLL rise of A": ("answer NLL on A after the second task - right after A",
                      lambda r, p: r["pairs"][p]["scores"][TASK_A]["nll"] - r["after_A"][TASK_A]["nll"]),
}  # fmt: skip

# the measures a paired difference is reported for
DIFFERENCES = ("A after B", "A lost", "A during B", "drop of A", "A after A", "B after B",
               "NLL rise of A")  # fmt: skip
