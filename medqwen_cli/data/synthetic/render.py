"""Pictures of synthetic cases: numpy painting, one function per modality.

Each renderer paints anatomy with soft ellipses, Gaussian blobs and smoothed noise on a
[0, 1] canvas (grey for xray/ct/mri, RGB for fundus/pathology), then the case's findings in
their regions, and returns a PIL image. Only the seeded `rng` and deterministic numpy/PIL
operations are used, so one seed gives byte-identical PNGs.

Looks, in brief: xray = dark lungs in a bright thorax, spine, heart, ribs; ct = axial abdomen
(fat ring, liver, spleen, kidneys, vertebra); mri = T2 axial brain (scalp, dark skull, grey
and white matter, bright ventricles); fundus = orange retina, optic disc, macula, vessels;
pathology = pink stroma with purple nuclei (H&E).
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from medqwen_cli.data.synthetic.scenes import Case, Finding, Modality

Color = float | tuple[float, float, float]


class Canvas:
    def __init__(self, size: int, channels: int, fill: Color = 0.0) -> None:
        self.size = size
        grid = (np.arange(size, dtype=np.float64) + 0.5) / size
        self.y, self.x = np.meshgrid(grid, grid, indexing="ij")  # (S, S) each, in [0, 1]
        self.img = np.empty((size, size, channels), dtype=np.float64)
        self.img[:] = np.asarray(fill, dtype=np.float64)

    def paint(self, mask: np.ndarray, value: Color) -> None:
        """Blend `value` in with weight `mask` (S, S) in [0, 1]."""
        m = np.clip(mask, 0.0, 1.0)[..., None]
        self.img = self.img * (1.0 - m) + np.asarray(value, dtype=np.float64) * m

    def ellipse_mask(
        self, cx: float, cy: float, rx: float, ry: float, *, soft: float = 0.01, angle: float = 0.0
    ) -> np.ndarray:
        dx, dy = self.x - cx, self.y - cy
        c, s = np.cos(angle), np.sin(angle)
        u, v = (dx * c + dy * s) / rx, (-dx * s + dy * c) / ry
        dist = np.sqrt(u * u + v * v)
        return np.clip((1.0 - dist) * min(rx, ry) / max(soft, 1e-6), 0.0, 1.0)

    def ellipse(self, cx, cy, rx, ry, value: Color, *, soft=0.01, angle=0.0, alpha=1.0) -> None:
        """Paint a soft ellipse, computed only inside its bounding box (most are small)."""
        reach = max(rx, ry) + soft
        lo_x, hi_x = _span(cx, reach, self.size)
        lo_y, hi_y = _span(cy, reach, self.size)
        if lo_x >= hi_x or lo_y >= hi_y:
            return
        box = (slice(lo_y, hi_y), slice(lo_x, hi_x))
        dx, dy = self.x[box] - cx, self.y[box] - cy
        c, s = np.cos(angle), np.sin(angle)
        u, v = (dx * c + dy * s) / rx, (-dx * s + dy * c) / ry
        mask = np.clip((1.0 - np.sqrt(u * u + v * v)) * min(rx, ry) / max(soft, 1e-6), 0.0, 1.0)
        m = (alpha * mask)[..., None]
        self.img[box] = self.img[box] * (1.0 - m) + np.asarray(value, dtype=np.float64) * m

    def blob(self, cx: float, cy: float, sigma: float, value: Color, strength: float = 1.0) -> None:
        d2 = (self.x - cx) ** 2 + (self.y - cy) ** 2
        self.paint(strength * np.exp(-d2 / (2 * sigma * sigma)), value)

    def noise(
        self, rng: np.random.Generator, cells: int | tuple[int, int], amplitude: float
    ) -> None:
        """Add smooth noise: a random (cells) grid upsampled bilinearly to the canvas."""
        shape = (cells, cells) if isinstance(cells, int) else cells
        low = rng.standard_normal(shape).astype(np.float32)
        up = Image.fromarray(low, mode="F").resize((self.size, self.size), Image.BILINEAR)
        field = np.asarray(up, dtype=np.float64)[..., None]
        self.img = self.img + amplitude * field

    def image(self, blur: float = 0.5) -> Image.Image:
        pixels = np.clip(np.rint(self.img * 255.0), 0, 255).astype(np.uint8)
        image = (
            Image.fromarray(pixels[..., 0], "L")
            if pixels.shape[-1] == 1
            else Image.fromarray(pixels, "RGB")
        )
        return image.filter(ImageFilter.GaussianBlur(blur)) if blur else image


def _span(c: float, reach: float, size: int) -> tuple[int, int]:
    return max(0, int(np.floor((c - reach) * size))), min(
        size, int(np.ceil((c + reach) * size)) + 1
    )


def center(
    f: Finding, modality: Modality, rng: np.random.Generator, xs=(0.3, 0.7), ys=(0.35, 0.65)
):
    """Region centre of a finding (patient right on the image left for radiology)."""
    image_left = (f.side == "right") if modality.radiological else (f.side == "left")
    x = xs[0] if image_left else xs[1]
    y = ys[0] if f.level == "upper" else ys[1]
    return x + rng.uniform(-0.04, 0.04), y + rng.uniform(-0.04, 0.04)


def spots(f: Finding, cx: float, cy: float, rng: np.random.Generator, spread: float = 0.07):
    """Centres of the `count` instances of a finding around (cx, cy)."""
    if f.count == 1:
        return [(cx, cy)]
    angle0 = rng.uniform(0, 2 * np.pi)
    return [
        (
            cx + spread * np.cos(angle0 + 2 * np.pi * k / f.count),
            cy + spread * np.sin(angle0 + 2 * np.pi * k / f.count),
        )
        for k in range(f.count)
    ]


def near(cx: float, cy: float, sd: float, rng: np.random.Generator) -> tuple[float, float]:
    """A point scattered normally around (cx, cy): x drawn first, then y (the draw order is part
    of what makes a seed reproduce its images)."""
    return cx + rng.normal(0, sd), cy + rng.normal(0, sd)


# --------------------------------------------------------------------------- modalities


def render_xray(case: Case, m: Modality, size: int, rng: np.random.Generator) -> Image.Image:
    c = Canvas(size, 1, 0.04)
    c.ellipse(0.5, 0.56, 0.47, 0.52, 0.55, soft=0.08)  # soft tissue of the thorax
    lungs = {}
    for x in (0.3, 0.7):
        mask = c.ellipse_mask(x, 0.5, 0.165, 0.31, soft=0.05)
        c.paint(mask, 0.15)
        lungs[x] = mask
    ribs = (np.sin((c.y + 0.6 * (c.x - 0.5) ** 2) * 2 * np.pi * 8.0) > 0.75).astype(float)
    c.paint(0.35 * ribs * (lungs[0.3] + lungs[0.7]), 0.45)
    c.ellipse(0.5, 0.5, 0.065, 0.44, 0.72, soft=0.03)  # mediastinum and spine
    c.ellipse(0.58, 0.67, 0.14 + rng.uniform(0, 0.02), 0.12, 0.7, soft=0.04)  # heart
    c.ellipse(0.3, 0.94, 0.2, 0.12, 0.6, soft=0.04)  # diaphragm domes
    c.ellipse(0.7, 0.96, 0.2, 0.12, 0.6, soft=0.04)
    c.noise(rng, 14, 0.03)
    for f in case.findings:
        big = f.size == "large"
        if f.name == "nodule":
            cx, cy = center(f, m, rng)
            for x, y in spots(f, cx, cy, rng):
                r = (0.055 if big else 0.03) * rng.uniform(0.9, 1.1)
                c.ellipse(x, y, r, r, 0.78, soft=0.3 * r)
        elif f.name == "effusion":
            lung_x = 0.3 if f.side == "right" else 0.7
            level = 0.6 if big else 0.72
            fluid = 1.0 / (1.0 + np.exp(-(c.y - level + 0.4 * np.abs(c.x - lung_x)) / 0.01))
            c.paint(fluid * lungs[lung_x] * 1.2, 0.62)
        elif f.name == "consolidation":
            cx, cy = center(f, m, rng)
            c.blob(cx, cy, 0.08 if big else 0.05, 0.58, strength=0.9)
        elif f.name == "pneumothorax":
            lung_x = 0.3 if f.side == "right" else 0.7
            lateral = -1 if lung_x < 0.5 else 1
            r = 0.11 if big else 0.07
            c.ellipse(lung_x + lateral * 0.08, 0.3, r, r * 1.6, 0.02, soft=0.01)
    return c.image()


def render_ct(case: Case, m: Modality, size: int, rng: np.random.Generator) -> Image.Image:
    c = Canvas(size, 1, 0.0)
    body = (0.5, 0.52, 0.45 + rng.uniform(-0.02, 0.02), 0.36)
    c.ellipse(*body, 0.3, soft=0.01)  # subcutaneous fat
    c.ellipse(0.5, 0.52, body[2] - 0.04, 0.32, 0.45, soft=0.02)  # muscle wall and viscera
    c.ellipse(0.33, 0.45, 0.17, 0.15, 0.58, soft=0.02, angle=0.3)  # liver (patient right)
    c.ellipse(0.73, 0.43, 0.08, 0.1, 0.55, soft=0.02)  # spleen
    for x in (0.34, 0.66):
        c.ellipse(x, 0.66, 0.055, 0.08, 0.62, soft=0.02)  # kidneys
    c.ellipse(0.5, 0.74, 0.07, 0.065, 0.95, soft=0.01)  # vertebral body
    c.ellipse(0.5, 0.8, 0.025, 0.02, 0.3, soft=0.01)  # spinal canal
    c.ellipse(0.53, 0.62, 0.03, 0.03, 0.72, soft=0.01)  # aorta
    for _ in range(int(rng.integers(3, 6))):  # bowel loops (bright wall, grey content)
        x, y = rng.uniform(0.44, 0.6), rng.uniform(0.3, 0.48)
        c.ellipse(x, y, 0.035, 0.028, 0.56, soft=0.01)
        c.ellipse(x, y, 0.022, 0.016, 0.47, soft=0.01)
    c.noise(rng, 40, 0.02)
    for f in case.findings:
        big = f.size == "large"
        cx, cy = center(f, m, rng, xs=(0.33, 0.67), ys=(0.42, 0.6))
        if f.name == "ascites":
            ring = c.ellipse_mask(*body, soft=0.01) - c.ellipse_mask(
                0.5, 0.52, body[2] - (0.07 if big else 0.05), 0.3, soft=0.01
            )
            quadrant = np.exp(-((c.x - cx) ** 2 + (c.y - cy) ** 2) / (2 * 0.15**2))
            c.paint(np.clip(ring, 0, 1) * quadrant * 1.5, 0.25)
            continue
        for x, y in spots(f, cx, cy, rng, spread=0.06):
            if f.name == "cyst":
                r = 0.045 if big else 0.025
                c.ellipse(x, y, r, r, 0.2, soft=0.005)
            elif f.name == "lesion":
                r = 0.05 if big else 0.028
                c.ellipse(x, y, r, r * 0.8, 0.36, soft=0.4 * r, angle=rng.uniform(0, 3))
            else:  # calcification
                r = 0.02 if big else 0.012
                c.ellipse(x, y, r, r, 1.0, soft=0.005)
    return c.image(blur=0.4)


def render_mri(case: Case, m: Modality, size: int, rng: np.random.Generator) -> Image.Image:
    c = Canvas(size, 1, 0.0)
    c.ellipse(0.5, 0.5, 0.4, 0.46, 0.72, soft=0.01)  # scalp fat
    c.ellipse(0.5, 0.5, 0.37, 0.43, 0.06, soft=0.01)  # skull (dark on MR)
    brain = c.ellipse_mask(0.5, 0.5, 0.34, 0.4, soft=0.01)
    c.paint(brain, 0.52)  # cortex and CSF
    c.ellipse(0.5, 0.5, 0.26, 0.32, 0.38, soft=0.04)  # white matter
    before = c.img.copy()
    c.noise(rng, 22, 0.06)  # gyral texture, inside the brain only
    c.img = before + (c.img - before) * brain[..., None]
    for sign in (-1, 1):
        c.ellipse(0.5 + sign * 0.045, 0.47, 0.03, 0.1, 0.9, soft=0.01, angle=sign * 0.25)
    c.ellipse(0.5, 0.5, 0.005, 0.38, 0.8, soft=0.004)  # falx
    for f in case.findings:
        big = f.size == "large"
        cx, cy = center(f, m, rng, xs=(0.35, 0.65), ys=(0.3, 0.7))
        if f.name == "tumor":
            r = 0.08 if big else 0.045
            c.ellipse(cx, cy, r * 1.25, r * 1.25, 0.2, soft=0.01)
            c.ellipse(cx, cy, r, r, 0.88, soft=0.3 * r)
        elif f.name == "infarct":
            lateral = -1 if cx < 0.5 else 1
            r = 0.09 if big else 0.055
            c.ellipse(cx + lateral * 0.08, cy, r * 0.6, r, 0.78, soft=0.02)
        elif f.name == "hemorrhage":
            r = 0.06 if big else 0.035
            c.ellipse(cx, cy, r * 1.2, r * 1.2, 0.7, soft=0.01)
            c.ellipse(cx, cy, r, r, 0.1, soft=0.01)
        else:  # white matter lesion
            for x, y in spots(f, cx, cy, rng, spread=0.05):
                r = 0.025 if big else 0.015
                c.ellipse(x, y, r, r, 0.88, soft=0.5 * r)
    return c.image(blur=0.4)


def render_fundus(case: Case, m: Modality, size: int, rng: np.random.Generator) -> Image.Image:
    c = Canvas(size, 3, (0.0, 0.0, 0.0))
    r2 = (c.x - 0.5) ** 2 + (c.y - 0.5) ** 2
    retina = c.ellipse_mask(0.5, 0.5, 0.46, 0.46, soft=0.01)
    shade = np.clip(1.0 - 1.6 * r2, 0.3, 1.0)[..., None]
    base = np.asarray((0.82, 0.36, 0.14)) * shade
    c.img = c.img * (1 - retina[..., None]) + base * retina[..., None]
    disc_x = 0.7
    c.blob(0.38, 0.5, 0.06, (0.5, 0.14, 0.05), strength=0.6)  # macula
    scale = 4 * size  # vessels drawn as polylines at 4x, then averaged down (anti-aliased)
    vessels = Image.new("L", (scale, scale), 0)
    draw = ImageDraw.Draw(vessels)
    for sign in (-1, 1):  # four vessel arcades leaving the disc
        for spread, width in ((0.22, 0.018), (0.12, 0.012)):
            t = np.linspace(0, 1, 48)
            xs = disc_x - t * (0.5 if spread > 0.15 else 0.3)
            ys = 0.5 + sign * spread * np.sin(t * np.pi * 0.85) + rng.uniform(-0.01, 0.01)
            points = [(float(x) * scale, float(y) * scale) for x, y in zip(xs, ys, strict=True)]
            draw.line(points, fill=255, width=max(1, round(width * scale)), joint="curve")
    small = np.asarray(vessels.resize((size, size), Image.BOX), dtype=np.float64) / 255.0
    c.paint(small * retina, (0.5, 0.07, 0.05))
    c.ellipse(disc_x, 0.5, 0.07, 0.075, (0.98, 0.86, 0.58), soft=0.02)  # optic disc
    c.ellipse(disc_x, 0.5, 0.03, 0.03, (1.0, 0.95, 0.8), soft=0.02)  # cup
    c.noise(rng, 30, 0.02)
    for f in case.findings:
        big = f.size == "large"
        cx, cy = center(f, m, rng, xs=(0.3, 0.58), ys=(0.3, 0.7))
        for x, y in spots(f, cx, cy, rng, spread=0.06):
            if f.name == "hemorrhage":
                r = 0.045 if big else 0.025
                c.ellipse(
                    x, y, r, r * 0.7, (0.42, 0.04, 0.03), soft=0.3 * r, angle=rng.uniform(0, 3)
                )
            elif f.name == "exudate":
                r = 0.03 if big else 0.017
                c.ellipse(
                    x, y, r, r * 0.8, (0.98, 0.9, 0.35), soft=0.2 * r, angle=rng.uniform(0, 3)
                )
            elif f.name == "drusen":
                r = 0.022 if big else 0.013
                c.ellipse(x, y, r, r, (0.95, 0.8, 0.5), soft=0.6 * r)
            else:  # microaneurysm
                r = 0.018 if big else 0.012
                c.ellipse(x, y, r, r, (0.68, 0.02, 0.04), soft=0.3 * r)
    return c.image(blur=0.4)


def render_pathology(case: Case, m: Modality, size: int, rng: np.random.Generator) -> Image.Image:
    c = Canvas(size, 3, (0.92, 0.66, 0.8))
    c.noise(rng, (6, 28), 0.05)  # stroma fibres
    for _ in range(int(rng.integers(2, 5))):  # empty spaces (fat, lumina)
        r = rng.uniform(0.03, 0.07)
        c.ellipse(
            rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9), r, r * 0.8, (0.97, 0.93, 0.95), soft=0.01
        )
    for _ in range(140):  # background nuclei
        r = rng.uniform(0.012, 0.019)
        c.ellipse(
            rng.uniform(0, 1),
            rng.uniform(0, 1),
            r,
            r * 0.75,
            (0.4, 0.24, 0.6),
            soft=0.3 * r,
            angle=rng.uniform(0, 3),
        )
    for f in case.findings:
        big = f.size == "large"
        cx, cy = center(f, m, rng, xs=(0.28, 0.72), ys=(0.28, 0.72))
        spread = 0.15 if big else 0.09
        if f.name == "tumor cells":
            for _ in range(26 if big else 12):
                r = rng.uniform(0.02, 0.03)
                x, y = near(cx, cy, spread / 2, rng)
                c.ellipse(
                    x, y, r, r * 0.7, (0.25, 0.1, 0.42), soft=0.2 * r, angle=rng.uniform(0, 3)
                )
        elif f.name == "necrosis":
            r = 0.13 if big else 0.08
            c.ellipse(cx, cy, r, r * 0.85, (0.97, 0.87, 0.92), soft=0.3 * r)
            for _ in range(20):
                x, y = near(cx, cy, r / 2, rng)
                c.ellipse(x, y, 0.006, 0.006, (0.45, 0.22, 0.5), soft=0.003)
        elif f.name == "inflammation":
            for _ in range(45 if big else 22):
                r = rng.uniform(0.008, 0.011)
                x, y = near(cx, cy, spread / 2, rng)
                c.ellipse(x, y, r, r, (0.2, 0.08, 0.4), soft=0.2 * r)
        else:  # mitotic figure
            for x, y in spots(f, cx, cy, rng, spread=0.08):
                r = 0.03 if big else 0.02
                for angle in (0.3, 1.9):
                    c.ellipse(
                        x,
                        y,
                        r,
                        r * 0.35,
                        (0.12, 0.03, 0.25),
                        soft=0.2 * r,
                        angle=angle + rng.uniform(0, 0.5),
                    )
    return c.image(blur=0.3)


RENDERERS = {
    "xray": render_xray,
    "ct": render_ct,
    "mri": render_mri,
    "fundus": render_fundus,
    "pathology": render_pathology,
}
