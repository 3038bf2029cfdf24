"""What a synthetic case is, per modality: findings vocabulary, where they go, how reports read.

A `Case` holds 0-2 `Finding`s (name, side, level, size, count). Each modality has its own
vocabulary (with sampling priors, which make some findings "popular" for POPE negatives, and a
co-occurrence partner, which makes "adversarial" ones), its own names for regions, and its own
report style, so a model trained on one task and then on the next can visibly forget.

Side is the patient's side in the radiology tasks (xray, ct, mri: patient right is on the image
left, as on a viewer) and the image side in fundus and pathology.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

SIDES = ("left", "right")
LEVELS = ("upper", "lower")
SIZES = ("small", "large")
NUMBERS = {1: "one", 2: "two", 3: "three"}


@dataclass(frozen=True)
class Finding:
    name: str
    side: str  # left | right
    level: str  # upper | lower
    size: str  # small | large
    count: int  # 1..3


@dataclass(frozen=True)
class Case:
    findings: tuple[Finding, ...]

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.findings]

    def get(self, name: str) -> Finding | None:
        return next((f for f in self.findings if f.name == name), None)


@dataclass(frozen=True)
class Modality:
    task: str  # the BUILTIN_TASKS name
    noun: str  # "chest X-ray"
    findings: tuple[str, ...]
    priors: tuple[float, ...]
    partner: dict[str, str]  # co-occurring finding (adversarial POPE negatives)
    countable: frozenset[str]
    plural: dict[str, str]
    region: Callable[[Finding], str]
    report: Callable[[Case, Modality], str]
    classify_question: str
    fixed_level: dict[str, str] = field(default_factory=dict)  # e.g. effusion -> lower
    radiological: bool = True  # patient side shown mirrored

    def plural_of(self, name: str) -> str:
        return self.plural.get(name, name + "s")

    def popular(self) -> list[str]:
        """Findings from the most to the least frequent."""
        order = np.argsort(-np.asarray(self.priors), kind="stable")
        return [self.findings[i] for i in order]


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def describe(f: Finding, modality: Modality) -> str:
    """`one small nodule`, `two large nodules`, `a small focus of necrosis`, `a large tumor`."""
    if f.name in modality.countable:
        noun = f.name if f.count == 1 else modality.plural_of(f.name)
        return f"{NUMBERS[f.count]} {f.size} {noun}"
    if modality.plural_of(f.name) == f.name:  # a mass noun
        return f"{article(f.size)} {f.size} focus of {f.name}"
    return f"{article(f.size)} {f.size} {f.name}"


def sample_case(modality: Modality, rng: np.random.Generator, *, max_findings: int = 2) -> Case:
    """0 findings with p=0.25, else 1 (or 2, when allowed) drawn by the priors; a second
    finding is the first one's partner half of the time and sits in another region."""
    n = (
        int(rng.choice([0, 1, 2], p=[0.25, 0.5, 0.25]))
        if max_findings >= 2
        else int(rng.choice([0, 1], p=[0.3, 0.7]))
    )
    if n == 0:
        return Case(())
    probs = np.asarray(modality.priors) / sum(modality.priors)
    first = modality.findings[int(rng.choice(len(probs), p=probs))]
    names = [first]
    if n == 2:
        partner = modality.partner.get(first)
        if partner and rng.random() < 0.5:
            names.append(partner)
        else:
            rest = [i for i, name in enumerate(modality.findings) if name != first]
            weights = probs[rest] / probs[rest].sum()
            names.append(modality.findings[rest[int(rng.choice(len(rest), p=weights))]])
    findings: list[Finding] = []
    used: set[tuple[str, str]] = set()
    for name in names:
        for _ in range(8):  # look for a free region
            side = SIDES[int(rng.integers(2))]
            level = modality.fixed_level.get(name) or LEVELS[int(rng.integers(2))]
            if (side, level) not in used:
                break
        used.add((side, level))
        count = int(rng.integers(1, 4)) if name in modality.countable else 1
        findings.append(Finding(name, side, level, SIZES[int(rng.integers(2))], count))
    return Case(tuple(findings))


# --------------------------------------------------------------------------- reports


def _xray_report(case: Case, m: Modality) -> str:
    if not case.findings:
        return (
            "FINDINGS: The lungs are clear. No pleural effusion or pneumothorax. Heart size is "
            "normal. IMPRESSION: No acute cardiopulmonary abnormality."
        )
    sentences = []
    for f in case.findings:
        if f.name == "effusion":
            sentences.append(f"There is {article(f.size)} {f.size} {f.side} pleural effusion.")
        elif f.name == "pneumothorax":
            sentences.append(f"There is {article(f.size)} {f.size} {f.side} apical pneumothorax.")
        else:
            verb = "is" if f.count == 1 else "are"
            sentences.append(f"There {verb} {describe(f, m)} in the {m.region(f)}.")
    absent = [n for n in ("effusion", "pneumothorax") if n not in case.names]
    if absent:
        sentences.append(
            "No " + " or ".join("pleural effusion" if a == "effusion" else a for a in absent) + "."
        )
    sentences.append("Heart size is normal.")
    impression = "; ".join(f"{f.side} {f.name}" for f in case.findings)
    return "FINDINGS: " + " ".join(sentences) + f" IMPRESSION: {impression.capitalize()}."


def _ct_report(case: Case, m: Modality) -> str:
    head = "CT ABDOMEN, axial slice. "
    if not case.findings:
        return (
            head
            + "Liver, spleen and kidneys: unremarkable. No free fluid. Conclusion: normal study."
        )
    parts = []
    for f in case.findings:
        if f.name == "ascites":
            parts.append(f"{f.size.capitalize()} volume ascites in the {m.region(f)}.")
        else:
            parts.append(f"{describe(f, m).capitalize()} in the {m.region(f)}.")
    conclusion = ", ".join(m.plural_of(f.name) if f.count > 1 else f.name for f in case.findings)
    return head + "Observations: " + " ".join(parts) + f" Conclusion: {conclusion}."


def _mri_report(case: Case, m: Modality) -> str:
    head = "MRI BRAIN, T2-weighted axial image. "
    if not case.findings:
        return (
            head
            + "Normal grey-white matter differentiation. Ventricles normal in size. Impression: normal brain MRI."
        )
    parts = []
    for f in case.findings:
        signal = "hypointense" if f.name == "hemorrhage" else "hyperintense"
        parts.append(f"{describe(f, m).capitalize()} ({signal}) in the {m.region(f)}.")
    impression = " and ".join(f"{m.region(f)} {f.name}" for f in case.findings)
    return head + " ".join(parts) + f" Impression: {impression}."


def _fundus_report(case: Case, m: Modality) -> str:
    head = "Fundus photograph. Optic disc: sharp margins. "
    if not case.findings:
        return head + "Retina: no lesions. Grade: no retinopathy."
    parts = [f"{describe(f, m).capitalize()} in the {m.region(f)}." for f in case.findings]
    total = sum(f.count for f in case.findings)
    grade = "mild" if total <= 2 else "moderate" if total <= 4 else "severe"
    return head + "Retina: " + " ".join(parts) + f" Grade: {grade} retinopathy."


def _pathology_report(case: Case, m: Modality) -> str:
    head = "Microscopic description: H&E-stained section of tissue. "
    if not case.findings:
        return head + "Benign tissue with normal architecture. Diagnosis: no malignancy identified."
    parts = [
        f"There {'is' if f.count == 1 else 'are'} {describe(f, m)} in the {m.region(f)}."
        for f in case.findings
    ]
    malignant = any(f.name in ("tumor cells", "mitotic figure") for f in case.findings)
    diagnosis = "malignancy present" if malignant else "benign with reactive changes"
    return head + " ".join(parts) + f" Diagnosis: {diagnosis}."


MODALITIES: dict[str, Modality] = {
    "xray": Modality(
        task="xray",
        noun="chest X-ray",
        findings=("nodule", "effusion", "consolidation", "pneumothorax"),
        priors=(0.4, 0.3, 0.2, 0.1),
        partner={
            "effusion": "consolidation",
            "consolidation": "effusion",
            "nodule": "effusion",
            "pneumothorax": "nodule",
        },
        countable=frozenset({"nodule"}),
        plural={},
        region=lambda f: f"{f.side} {f.level} lung zone",
        report=_xray_report,
        classify_question="What is the main finding on this chest X-ray?",
        fixed_level={"effusion": "lower", "pneumothorax": "upper"},
    ),
    "ct": Modality(
        task="ct",
        noun="CT scan",
        findings=("cyst", "lesion", "calcification", "ascites"),
        priors=(0.35, 0.3, 0.2, 0.15),
        partner={"cyst": "lesion", "lesion": "cyst", "calcification": "cyst", "ascites": "lesion"},
        countable=frozenset({"cyst", "lesion", "calcification"}),
        plural={},
        region=lambda f: f"{f.side} {'anterior' if f.level == 'upper' else 'posterior'} abdomen",
        report=_ct_report,
        classify_question="Which abnormality does this abdominal CT slice show?",
    ),
    "mri": Modality(
        task="mri",
        noun="brain MRI",
        findings=("tumor", "infarct", "white matter lesion", "hemorrhage"),
        priors=(0.3, 0.25, 0.3, 0.15),
        partner={
            "tumor": "hemorrhage",
            "hemorrhage": "tumor",
            "infarct": "white matter lesion",
            "white matter lesion": "infarct",
        },
        countable=frozenset({"white matter lesion"}),
        plural={},
        region=lambda f: f"{f.side} {'frontal' if f.level == 'upper' else 'occipital'} lobe",
        report=_mri_report,
        classify_question="What is the diagnosis on this brain MRI?",
    ),
    "fundus": Modality(
        task="fundus",
        noun="fundus photograph",
        findings=("hemorrhage", "exudate", "drusen", "microaneurysm"),
        priors=(0.3, 0.25, 0.2, 0.25),
        partner={
            "hemorrhage": "microaneurysm",
            "microaneurysm": "hemorrhage",
            "exudate": "drusen",
            "drusen": "exudate",
        },
        countable=frozenset({"hemorrhage", "exudate", "drusen", "microaneurysm"}),
        plural={"drusen": "drusen"},
        region=lambda f: (
            f"{'superior' if f.level == 'upper' else 'inferior'} "
            f"{'nasal' if f.side == 'right' else 'temporal'} quadrant"
        ),
        report=_fundus_report,
        classify_question="Which retinal lesion is visible in this fundus photograph?",
        radiological=False,
    ),
    "pathology": Modality(
        task="pathology",
        noun="histology slide",
        findings=("tumor cells", "necrosis", "inflammation", "mitotic figure"),
        priors=(0.35, 0.2, 0.3, 0.15),
        partner={
            "tumor cells": "mitotic figure",
            "mitotic figure": "tumor cells",
            "necrosis": "tumor cells",
            "inflammation": "necrosis",
        },
        countable=frozenset({"mitotic figure"}),
        plural={
            "tumor cells": "tumor cells",
            "necrosis": "necrosis",
            "inflammation": "inflammation",
        },
        region=lambda f: f"{f.level} {f.side} field",
        report=_pathology_report,
        classify_question="What is the main feature of this H&E-stained section?",
        radiological=False,
    ),
}
