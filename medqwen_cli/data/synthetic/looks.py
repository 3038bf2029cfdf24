"""Pictures of the clinical sequence's records: one lesion drawn in each modality's own look.

Every sequence record states one lesion (size in mm, image side, image level); its picture puts
that lesion there, sized by its millimetres, in the look of the task's modality:

    xray      chest radiograph (the rule tasks' look: `rules.render_rule_image`)
    skin      photograph of a back with one mole (the rule tasks' look)
    chest-ct  axial chest CT: body outline, two black lungs, mediastinum, vertebra
    mammo     both breasts hung back to back (chest walls meet in the middle), dense tissue
    thyroid   transverse neck ultrasound: speckle, two thyroid lobes beside a shadowing trachea,
              black carotid circles; the nodule is hypoechoic (darker than the gland)

Image side and level are positions in the picture; which side of the patient they are is the
task's reading rule (`sequence`), not the picture's. Only the seeded `rng` and deterministic
numpy/PIL operations are used, so a seed gives byte-identical PNGs.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from medqwen_cli.data.synthetic.render import Canvas
from medqwen_cli.data.synthetic.rules import RULES, render_rule_image

LOOKS = ("xray", "skin", "chest-ct", "mammo", "thyroid")


def radius(size_mm: int) -> float:
    """Lesion radius on the unit canvas: 2 mm -> 0.017, 60 mm -> 0.087 (grows with size)."""
    return 0.015 + 0.0012 * size_mm


def _place(image_side: str, level: str, rng: np.random.Generator, xs, ys) -> tuple[float, float]:
    x = xs[0] if image_side == "left" else xs[1]
    y = ys[0] if level == "upper" else ys[1]
    return x + rng.uniform(-0.03, 0.03), y + rng.uniform(-0.03, 0.03)


def render_look(
    look: str,
    *,
    image_side: str,
    level: str,
    size_mm: int,
    large: bool,
    size: int,
    rng: np.random.Generator,
) -> Image.Image:
    """The picture of one record (`size` px square); `large` is the task's own reading of the
    size (the rule tasks' looks draw two lesion sizes, the others scale with `size_mm`)."""
    if look in ("xray", "skin"):
        rules = RULES["cxr-rules" if look == "xray" else "derm-rules"]  # only its look is read
        case = {"image_side": image_side, "level": level, "large": large}
        return render_rule_image(rules, case, size, rng)
    draw = {"chest-ct": _chest_ct, "mammo": _mammo, "thyroid": _thyroid}[look]
    return draw(image_side, level, radius(size_mm), size, rng)


def _chest_ct(image_side: str, level: str, r: float, size: int, rng) -> Image.Image:
    c = Canvas(size, 1, 0.0)
    c.ellipse(0.5, 0.52, 0.46 + rng.uniform(-0.02, 0.02), 0.34, 0.42, soft=0.01)  # chest wall
    for x in (0.3, 0.7):
        c.ellipse(x, 0.48, 0.17, 0.26, 0.04, soft=0.02)  # lungs (air: black)
        for _ in range(6):  # vessels in the lung
            vx, vy = x + rng.uniform(-0.1, 0.1), 0.48 + rng.uniform(-0.18, 0.18)
            c.ellipse(vx, vy, 0.008, 0.008, 0.35, soft=0.004)
    c.ellipse(0.5, 0.45, 0.09, 0.14, 0.5, soft=0.02)  # mediastinum
    c.ellipse(0.53, 0.42, 0.035, 0.035, 0.62, soft=0.01)  # aorta
    c.ellipse(0.5, 0.78, 0.06, 0.055, 0.95, soft=0.01)  # vertebral body
    c.noise(rng, 40, 0.015)
    cx, cy = _place(image_side, level, rng, (0.28, 0.72), (0.36, 0.6))
    c.ellipse(cx, cy, r, r * rng.uniform(0.85, 1.0), 0.6, soft=0.25 * r)
    return c.image(blur=0.4)


def _mammo(image_side: str, level: str, r: float, size: int, rng) -> Image.Image:
    c = Canvas(size, 1, 0.02)
    for sign in (-1, 1):  # each breast: a half-dome from its chest wall (the middle) outwards
        wall = 0.5 + sign * 0.04
        breast = c.ellipse_mask(wall, 0.5, 0.42, 0.36, soft=0.03) * (sign * (c.x - wall) > 0)
        c.paint(breast, 0.35)
        c.paint(breast * c.ellipse_mask(wall + sign * 0.16, 0.5, 0.2, 0.22, soft=0.12), 0.55)
        c.paint(breast * (np.abs(c.x - wall) < 0.07 - 0.12 * c.y), 0.7)  # pectoral muscle
    c.noise(rng, 24, 0.04)
    cx, cy = _place(image_side, level, rng, (0.27, 0.73), (0.33, 0.64))
    c.ellipse(cx, cy, r, r * rng.uniform(0.8, 1.0), 0.85, soft=0.2 * r, angle=rng.uniform(0, 3))
    return c.image(blur=0.5)


def _thyroid(image_side: str, level: str, r: float, size: int, rng) -> Image.Image:
    c = Canvas(size, 1, 0.0)
    c.paint(np.ones((size, size)), 0.22)  # soft tissue under a linear probe
    speckle = rng.random((size, size)) * 0.18
    c.img = c.img + speckle[..., None]
    for x in (0.27, 0.73):
        c.ellipse(x, 0.5, 0.18, 0.22, 0.5, soft=0.03)  # thyroid lobes (brighter, homogeneous)
    c.ellipse(0.5, 0.42, 0.09, 0.08, 0.85, soft=0.01)  # trachea's bright front wall
    c.paint(c.ellipse_mask(0.5, 0.62, 0.09, 0.2, soft=0.04), 0.02)  # its acoustic shadow
    for x in (0.06, 0.94):
        c.ellipse(x, 0.55, 0.05, 0.05, 0.0, soft=0.01)  # common carotid arteries
    cx, cy = _place(image_side, level, rng, (0.27, 0.73), (0.38, 0.62))
    c.ellipse(cx, cy, r, r * rng.uniform(0.7, 0.9), 0.12, soft=0.15 * r)  # hypoechoic nodule
    return c.image(blur=0.6)
