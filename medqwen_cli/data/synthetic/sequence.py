"""The clinical sequence: five built-in tasks in a fixed order, each read by its own rules.

A hospital meets these modalities one after another; a model adapted to them in `SEQUENCE`
order must keep every earlier task. Every record states one lesion in words (size in mm, where
it lies in the image) beside a picture of it (`looks`), and asks one closed question:

    side   which side of the patient is it on?   [left, right]
    size   small or large by this modality's cut-off?   [small, large]

    task          modality                     side of the patient      large from
    seq-cxr       PA chest radiograph          mirrored (radiological)  31 mm (mass: > 3 cm)
    seq-ct        axial chest CT               mirrored (radiological)  31 mm (mass: > 3 cm)
    seq-derm      photograph of the back       as seen (anatomical)     6 mm (ABCD: diameter)
    seq-mammo     both MLO views back to back  mirrored (hanging)       21 mm (T2: > 20 mm)
    seq-thyroid   transverse neck ultrasound   mirrored (radiological)  10 mm (TI-RADS TR5 FNA)

So `seq-ct` is the control inside the sequence (it contradicts no earlier task), every other
task after the first contradicts an earlier one on at least a third of its records;
`contradiction_fractions` measures it from the records (docs/sequence.md has the table).

**Three splits.** `train` and `eval-template` use the train phrase family: description
templates, question wordings, modality nouns and sizes from `TRAIN_MM`. `eval` (the default
evaluation split) uses the eval family: other templates, wordings and nouns, and sizes from
`EVAL_MM`, none of which train uses, so no eval text appears among the train texts
(`text_overlap` measures it; dataset.json reports both eval splits). Each task's cut-off
(and every other task's) is pinned by train sizes on both sides of it (T - 1 and T), so
every eval size has one answer a model that learned the rule can give.

**Sizes.** Half the records are small and half large by the task's own cut-off; within each
half the size band is uniform over the task's bands (`BANDS`, cut at every cut-off of the
sequence), so the sizes between two tasks' cut-offs, where their answers differ, are frequent.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from medqwen_cli.data.synthetic.rules import ReadingRules

SEQUENCE_VERSION = "2"  # the sequence's generator; the rule pair keeps its own version
SPLITS = ("train", "eval", "eval-template")
FAMILY = {"train": "train", "eval": "eval", "eval-template": "train"}  # split -> phrase family
KINDS = ("side", "size")
LABELS = {"side": ["left", "right"], "size": ["small", "large"]}
BANDS = ((2, 5), (6, 9), (10, 20), (21, 30), (31, 60))  # mm, inclusive; cut at 6, 10, 21, 31
CUTS = tuple(lo for lo, _ in BANDS[1:])
# train: even sizes and both neighbours of every cut-off (T - 1 small, T large), so each
# cut-off is pinned; eval: the other odd sizes (absent from train)
TRAIN_MM = tuple(sorted(set(range(2, 61, 2)) | {c - 1 for c in CUTS} | set(CUTS)))
EVAL_MM = tuple(v for v in range(3, 60, 2) if v not in TRAIN_MM)


@dataclass(frozen=True)
class SequenceTask:
    """A task of the sequence: the rule tasks' `ReadingRules` (side mirrored or not, the size
    cut-off; its look is a `looks.LOOKS` name), the finding's word and the modality nouns."""

    rules: ReadingRules
    lesion: str  # the modality's word for the finding (both families)
    nouns: Mapping[str, tuple[str, ...]]  # phrase family -> how the text names the image

    @property
    def name(self) -> str:
        return self.rules.task

    @property
    def look(self) -> str:
        return self.rules.look

    @property
    def mirrored(self) -> bool:
        return self.rules.mirrored

    @property
    def large_mm(self) -> int:
        return self.rules.large_mm

    def answer(self, kind: str, image_side: str, size_mm: int) -> str:
        return self.rules.answer(kind, image_side, size_mm)


def _task(name, look, lesion, train, eval_, *, mirrored, large_mm) -> SequenceTask:
    rules = ReadingRules(name, train[0], look, mirrored=mirrored, large_mm=large_mm)
    return SequenceTask(rules, lesion, {"train": train, "eval": eval_})


TASKS = {
    t.name: t
    for t in (
        _task("seq-cxr", "xray", "pulmonary opacity", ("Chest X-ray", "PA chest radiograph"),
              ("Frontal chest film", "Posteroanterior radiograph of the thorax"),
              mirrored=True, large_mm=31),
        _task("seq-ct", "chest-ct", "lung lesion", ("Axial chest CT slice", "Chest CT"),
              ("Transverse computed tomography image of the thorax",
               "Computed tomogram of the lungs, axial plane"),
              mirrored=True, large_mm=31),
        _task("seq-derm", "skin", "mole", ("Photograph of the patient's back",
                                           "Clinical photo of the skin of the back"),
              ("Dermatology picture of the back", "Close-up snapshot of the patient's dorsal skin"),
              mirrored=False, large_mm=6),
        _task("seq-mammo", "mammo", "breast mass", ("Bilateral mammogram, MLO views",
                                                   "Screening mammogram of both breasts"),
              ("Mammographic pair, oblique projections", "Both-breast mammography study"),
              mirrored=True, large_mm=21),
        _task("seq-thyroid", "thyroid", "thyroid nodule", ("Transverse thyroid ultrasound",
                                                           "Thyroid sonogram, transverse"),
              ("Neck sonography across the thyroid gland",
               "Ultrasound image of the thyroid in the axial plane"),
              mirrored=True, large_mm=10),
    )
}  # fmt: skip
SEQUENCE: tuple[str, ...] = tuple(TASKS)  # the fixed clinical order

# Description templates and question wordings: the train family (train, eval-template) and the
# eval family (eval) share none. {side} and {level} are positions in the image. The train
# family is the larger (5 templates, 5 + 4 wordings): a rule learned from varied phrasing
# carries over to new phrasing; from one or two wordings nano learns the wording instead (the
# side answers fell to 0.65 on unseen wordings that add "left or right?", docs/sequence.md).
TEMPLATES = {
    "train": (
        "{noun}: {a} {size} mm {lesion} in the {level} {side} of the image.",
        "{noun} shows {a} {size} mm {lesion}, {level} {side} part of the image.",
        "On this image ({noun}), a {lesion} of {size} mm lies in the {side} {level} area.",
        "Image {side}, {level}: {a} {size} mm {lesion} ({noun}).",
        "{noun}, {lesion} of {size} mm; position in the image: {level}, {side}.",
    ),
    "eval": (
        "There is a {lesion} measuring {size} mm toward the image's {side} {level} corner ({noun}).",
        "{noun}. Finding: {lesion}, {size} millimetres across, {level} half, {side} as displayed.",
        "Seen on the {side} of the picture, {level} portion: {a} {size}-mm {lesion} ({noun}).",
    ),
}
WORDINGS = {
    ("train", "side"): ("On which side of the patient is it?", "Which side of the patient is it on?",
                        "Is it on the patient's left or right?", "Patient's right or left side?",
                        "Which side of the body is affected?"),
    ("train", "size"): ("Is it small or large?", "Small or large, by this modality's cut-off?",
                        "Is it large or small?", "Classify its size: small or large."),
    ("eval", "side"): ("Is the finding in the patient's left or right?",
                       "Which of the patient's sides holds it, right or left?",
                       "Name the side of the patient where it lies."),
    ("eval", "size"): ("Would you call it large or small?",
                       "Does it count as small or as large here?",
                       "By the size rule of this modality, small or large?"),
}  # fmt: skip


def _pick(options: Sequence[str], rng: np.random.Generator) -> str:
    return options[int(rng.integers(len(options)))]


def draw_size(task: SequenceTask, family: str, rng: np.random.Generator) -> int:
    """A size: small or large (by the task's cut-off) with equal chance, then one of that
    half's bands, then a value of the family's set in the band."""
    large = bool(rng.random() < 0.5)
    bands = [b for b in BANDS if (b[0] >= task.large_mm) == large]
    lo, hi = bands[int(rng.integers(len(bands)))]
    values = [v for v in (TRAIN_MM if family == "train" else EVAL_MM) if lo <= v <= hi]
    return values[int(rng.integers(len(values)))]


def sequence_record(name: str, split: str, rng: np.random.Generator, index: int) -> dict:
    """question, answer, labels and meta of one record of task `name` in `split`; the question
    kind alternates so every split holds both kinds equally."""
    task, family = TASKS[name], FAMILY[split]
    kind = KINDS[index % len(KINDS)]
    size_mm = draw_size(task, family, rng)
    image_side = ("left", "right")[int(rng.integers(2))]
    level = ("upper", "lower")[int(rng.integers(2))]
    template, noun = _pick(TEMPLATES[family], rng), _pick(task.nouns[family], rng)
    wording = _pick(WORDINGS[family, kind], rng)
    a = "an" if str(size_mm).startswith("8") or size_mm in (11, 18) else "a"  # an 8, an 11
    text = template.format(noun=noun, a=a, size=size_mm, lesion=task.lesion, level=level,
                           side=image_side)  # fmt: skip
    answer = task.answer(kind, image_side, size_mm)
    earlier = SEQUENCE[: SEQUENCE.index(name)]
    meta = {
        "kind": kind, "size_mm": size_mm, "image_side": image_side, "level": level,
        "family": family, "template": template, "wording": wording, "noun": noun,
        # the earlier tasks of the sequence whose rules give this record another answer
        "contradicts": [e for e in earlier if TASKS[e].answer(kind, image_side, size_mm) != answer],
    }  # fmt: skip
    return {
        "question": f"{text} {wording}",
        "answer": answer,
        "labels": list(LABELS[kind]),
        "meta": meta,
    }


def contradiction_fractions(name: str, metas: Iterable[Mapping]) -> dict[str, float]:
    """For each task before `name` in the sequence: the share of these records (their meta:
    kind, image_side, size_mm) whose answer that task's rules would give otherwise."""
    task, metas = TASKS[name], list(metas)
    if not metas:
        return {}
    out = {}
    for earlier in SEQUENCE[: SEQUENCE.index(name)]:
        other = TASKS[earlier]
        flips = sum(
            other.answer(m["kind"], m["image_side"], m["size_mm"])
            != task.answer(m["kind"], m["image_side"], m["size_mm"])
            for m in metas
        )
        out[earlier] = round(flips / len(metas), 4)
    return out


def text_overlap(texts: Iterable[str], train_texts: Iterable[str]) -> int:
    """How many of `texts` appear word for word among `train_texts`."""
    seen = set(train_texts)
    return sum(t in seen for t in texts)
