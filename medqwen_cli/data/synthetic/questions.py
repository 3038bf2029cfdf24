"""Questions and answers about a synthetic case, one record type at a time.

- vqa_closed: yes/no presence ("Is there a nodule in this chest X-ray?") or a choice between
  two words (left/right, small/large, upper/lower), with the candidate set in `labels`;
- vqa_open: what ("What abnormality is seen ...?" -> "nodule and effusion" / "none"),
  where (-> the modality's region phrase), how many (-> "two");
- report: the modality's own report style (see `scenes`);
- classification: the main finding or "normal", over ["normal", *findings];
- pope: "Is there a X in the image?" with yes for a present finding and, for no, a negative
  drawn by the POPE strategies: random, popular (most frequent absent finding), adversarial
  (the absent partner of a present finding); `meta.pope_split` tells which.

Every record's `meta.findings` lists the case's findings (handy for report keyword metrics).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medqwen_cli.data.synthetic.scenes import NUMBERS, Case, Finding, Modality, article, sample_case
from medqwen_cli.recipe import TASK_TYPES

TYPES = TASK_TYPES  # one record of each type in turn, in this order
POPE_SPLITS = ("random", "popular", "adversarial")

REPORT_PROMPTS = {
    "xray": "Write the findings and impression for this chest X-ray.",
    "ct": "Write a structured report for this abdominal CT slice.",
    "mri": "Write the radiology report for this brain MRI.",
    "fundus": "Describe this fundus photograph and grade the retinopathy.",
    "pathology": "Write the microscopic description and diagnosis for this slide.",
}


def _is_mass(name: str, m: Modality) -> bool:
    return name not in m.countable and m.plural_of(name) == name


def there_is(name: str, m: Modality) -> str:
    """`Is there a nodule` / `Is there necrosis` / `Are there drusen`."""
    if _is_mass(name, m):
        return f"Is there {name}"
    if m.plural_of(name) == name:
        return f"Are there {name}"
    return f"Is there {article(name)} {name}"


def _the(f: Finding, m: Modality) -> tuple[str, str]:
    """(verb, noun phrase): ("Is", "the nodule") / ("Are", "the nodules")."""
    if f.count > 1 or (m.plural_of(f.name) == f.name and not _is_mass(f.name, m)):
        return "Are", f"the {m.plural_of(f.name)}"
    return "Is", f"the {f.name}"


def case_for(kind: str, m: Modality, rng: np.random.Generator, positive: bool) -> Case:
    """A case suited to the record type (classification: at most one finding; a positive
    POPE probe: at least one)."""
    if kind == "classification":
        return sample_case(m, rng, max_findings=1)
    case = sample_case(m, rng)
    for _ in range(32):
        if not (kind == "pope" and positive) or case.findings:
            break
        case = sample_case(m, rng)
    return case


def build(
    kind: str, case: Case, m: Modality, rng: np.random.Generator, *, pope_split: str, positive: bool
) -> dict[str, Any]:
    """question, answer, optional labels and meta for one record."""
    meta: dict[str, Any] = {"findings": case.names}
    if kind == "vqa_closed":
        question, answer, labels = _closed(case, m, rng)
    elif kind == "vqa_open":
        question, answer, labels = _open(case, m, rng)
    elif kind == "report":
        question, answer, labels = REPORT_PROMPTS[m.task], m.report(case, m), None
    elif kind == "classification":
        labels = ["normal", *m.findings]
        question, answer = m.classify_question, case.names[0] if case.findings else "normal"
    else:
        name = _pope_object(case, m, rng, pope_split, positive)
        question = f"{there_is(name, m)} in the image?"
        answer, labels = ("yes" if name in case.names else "no"), ["yes", "no"]
        meta["pope_split"] = pope_split
        meta["object"] = name
    out: dict[str, Any] = {"question": question, "answer": answer}
    if labels is not None:
        out["labels"] = labels
    out["meta"] = meta
    return out


def _closed(case: Case, m: Modality, rng: np.random.Generator):
    yes_no = ["yes", "no"]
    choice = int(rng.integers(4)) if case.findings else 0
    if choice == 0:
        present = bool(case.findings) and rng.random() < 0.5
        pool = case.names if present else [n for n in m.findings if n not in case.names]
        name = pool[int(rng.integers(len(pool)))]
        answer = "yes" if name in case.names else "no"
        return f"{there_is(name, m)} in this {m.noun}?", answer, yes_no
    f = case.findings[int(rng.integers(len(case.findings)))]
    verb, noun = _the(f, m)
    if choice == 3 and f.name in m.fixed_level:
        choice = 2  # a fixed level (effusion: lower) would be a giveaway
    if choice == 1:
        whose = "the patient's " if m.radiological else "the "
        return f"{verb} {noun} on {whose}left or right side?", f.side, ["left", "right"]
    if choice == 2:
        return f"{verb} {noun} small or large?", f.size, ["small", "large"]
    return f"{verb} {noun} in the upper or the lower part?", f.level, ["upper", "lower"]


def _open(case: Case, m: Modality, rng: np.random.Generator):
    choice = int(rng.integers(3)) if case.findings else 0
    if choice == 0:
        answer = " and ".join(case.names) if case.findings else "none"
        return f"What abnormality is seen in this {m.noun}?", answer, None
    countable = [f for f in case.findings if f.name in m.countable]
    if choice == 2 and countable:
        f = countable[int(rng.integers(len(countable)))]
        return f"How many {m.plural_of(f.name)} are there?", NUMBERS[f.count], None
    f = case.findings[int(rng.integers(len(case.findings)))]
    verb, noun = _the(f, m)
    return f"Where {verb.lower()} {noun}?", m.region(f), None


def _pope_object(
    case: Case, m: Modality, rng: np.random.Generator, split: str, positive: bool
) -> str:
    if positive and case.findings:
        return case.names[int(rng.integers(len(case.names)))]
    absent = [n for n in m.findings if n not in case.names]
    if split == "popular":
        return next(n for n in m.popular() if n in absent)
    if split == "adversarial":
        partners = [m.partner[n] for n in case.names if m.partner.get(n) in absent]
        if partners:
            return partners[0]
        return next(n for n in m.popular() if n in absent)
    return absent[int(rng.integers(len(absent)))]
