"""Reading-rule tasks: the same questions and label sets, answered by each modality's own rules.

Continual learning forgets most where a new task asks the old task's questions and wants other
answers. These built-in tasks make that conflict explicit and controllable. Every record states
one lesion in words (size in mm, where it lies in the image) beside a small picture of it, and
asks one closed question with a fixed label set:

    side    "On which side of the patient is it?"      [left, right]
    size    "Is it small or large?"                    [small, large]

The answers follow the modality's reading rules:

    task         modality                           side of the patient         large when
    cxr-rules    chest X-ray (viewed facing you)    mirrored: image left=right  >= 30 mm (mass)
    ct-rules     CT slice (viewed from the feet)    mirrored: image left=right  >= 30 mm
    derm-rules   photograph of the patient's back   as seen: image left=left    >= 6 mm (ABCD rule)

So `cxr-rules` -> `derm-rules` is a conflict pair: every side question and every size question
with 6 <= d < 30 mm (a third of them) gets the opposite answer; `cxr-rules` -> `ct-rules` is its
control: the same rules under another modality's words and look, so no answer changes. Sizes are
drawn from three equally likely bands ([2, 5], [6, 29], [30, 60] mm), side, level and question
kind uniformly. Everything the answer needs is in the text, so a model whose vision tower reads
little (the nano preset's) can still learn the rules; the image is consistent with the text.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from medqwen_cli.data.synthetic.render import RENDERERS, Canvas
from medqwen_cli.data.synthetic.scenes import MODALITIES, Case, Finding

RULE_TRAIN = 400
RULE_EVAL = 160
SIZE_BANDS = ((2, 5), (6, 29), (30, 60))  # mm, inclusive
KINDS = ("side", "size")


@dataclass(frozen=True)
class ReadingRules:
    task: str
    noun: str  # how the question names the image
    look: str  # renderer: a MODALITIES key, or "skin"
    mirrored: bool  # image left is the patient's right
    large_mm: int  # "large" from this size on

    def answer(self, kind: str, image_side: str, size_mm: int) -> str:
        if kind == "side":
            if not self.mirrored:
                return image_side
            return "right" if image_side == "left" else "left"
        return "large" if size_mm >= self.large_mm else "small"


RULES = {
    "cxr-rules": ReadingRules("cxr-rules", "Chest X-ray", "xray", mirrored=True, large_mm=30),
    "ct-rules": ReadingRules("ct-rules", "Axial CT slice", "ct", mirrored=True, large_mm=30),
    "derm-rules": ReadingRules(
        "derm-rules", "Photograph of the patient's back", "skin", mirrored=False, large_mm=6
    ),
}
QUESTIONS = {
    "side": ("On which side of the patient is it?", ["left", "right"]),
    "size": ("Is it small or large?", ["small", "large"]),
}


def rule_split_sizes(size: int | None) -> tuple[int, int]:
    """(train, eval) counts: 400 and 160 by default; `size` sets train, eval is half of it
    (between 8 and 160)."""
    if size is None:
        return RULE_TRAIN, RULE_EVAL
    return size, max(8, min(RULE_EVAL, size // 2))


def rule_record(
    rules: ReadingRules, rng: np.random.Generator, index: int
) -> tuple[dict, dict[str, object]]:
    """(question/answer/labels/meta, the drawn case) of one record; the question kind
    alternates so every split holds both kinds equally."""
    kind = KINDS[index % len(KINDS)]
    lo, hi = SIZE_BANDS[int(rng.integers(len(SIZE_BANDS)))]
    size_mm = int(rng.integers(lo, hi + 1))
    image_side = ("left", "right")[int(rng.integers(2))]
    level = ("upper", "lower")[int(rng.integers(2))]
    question, labels = QUESTIONS[kind]
    text = (
        f"{rules.noun}: a {size_mm} mm lesion in the {level} {image_side} of the image. {question}"
    )
    answer = rules.answer(kind, image_side, size_mm)
    other = RULES["derm-rules" if rules.mirrored else "cxr-rules"]
    meta = {
        "kind": kind,
        "size_mm": size_mm,
        "image_side": image_side,
        "level": level,
        # would a model applying the other convention (mirroring, threshold) answer otherwise?
        "conflicts_with_other_convention": other.answer(kind, image_side, size_mm) != answer,
    }
    case = {"image_side": image_side, "level": level, "large": size_mm >= 30}
    return {"question": text, "answer": answer, "labels": list(labels), "meta": meta}, case


def render_rule_image(
    rules: ReadingRules, case: dict[str, object], size: int, rng: np.random.Generator
) -> Image.Image:
    """The lesion where the text puts it (image side and level), drawn in the modality's look."""
    if rules.look == "skin":
        return _render_skin(case, size, rng)
    modality = MODALITIES[rules.look]
    image_left = case["image_side"] == "left"
    # the built-in renderers take the patient's side and mirror it for radiology themselves
    patient_side = (
        ("right" if image_left else "left") if modality.radiological else case["image_side"]
    )
    name = modality.findings[0]  # nodule (xray), cyst (ct): a round lesion in either look
    finding = Finding(
        name, str(patient_side), str(case["level"]), "large" if case["large"] else "small", 1
    )
    return RENDERERS[rules.look](Case((finding,)), modality, size, rng)


def _render_skin(case: dict[str, object], size: int, rng: np.random.Generator) -> Image.Image:
    """Skin of a back (warm beige, smooth texture, a spine shadow) with one brown mole."""
    tone = np.array([0.86, 0.68, 0.55]) + rng.uniform(-0.05, 0.05, 3)
    c = Canvas(size, 3, tuple(tone))
    c.noise(rng, 8, 0.03)
    c.ellipse(0.5, 0.5, 0.03, 0.48, tuple(tone * 0.9), soft=0.05)  # spine furrow
    cx = (0.3 if case["image_side"] == "left" else 0.7) + rng.uniform(-0.05, 0.05)
    cy = (0.3 if case["level"] == "upper" else 0.7) + rng.uniform(-0.05, 0.05)
    r = 0.09 if case["large"] else 0.045
    c.ellipse(cx, cy, r, r * rng.uniform(0.8, 1.0), (0.35, 0.22, 0.15), soft=0.02)
    return c.image(blur=0.4)
