"""Judge a generated demo image: the shape's colour, the background colour, and the shape.

Deterministic and independent of the model: it only looks at pixels.

1. Background: the median colour of the 2-pixel border, named by the nearest palette colour.
2. Shape pixels: those far (more than half the way to the shape's colour) from the background colour; the
   largest connected region of them is the shape.
3. Shape colour: the median colour of the region's core (the pixels farthest from the background).
4. Shape: intersection-over-union of the region with an ideal circle, square and upright triangle fitted to its
   bounding box; the best fit wins. The fill ratio (area / bounding box; circle 0.79, square 1, triangle 0.5)
   is reported too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .world import PALETTE, SHAPES

_NAMES = list(PALETTE)
_RGB = np.array([PALETTE[n] for n in _NAMES], dtype=np.float64)
MIN_PIXELS = 12  # fewer shape pixels than this: no shape found


@dataclass(frozen=True)
class Verdict:
    colour: str | None
    background: str
    shape: str | None
    fill: float
    iou: dict[str, float]
    pixels: int


def nearest_colour(rgb) -> str:
    d = ((_RGB - np.asarray(rgb, dtype=np.float64)) ** 2).sum(axis=1)
    return _NAMES[int(np.argmin(d))]


def _largest_region(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    labels, n = ndimage.label(mask)
    if n <= 1:
        return mask
    sizes = ndimage.sum(mask, labels, index=range(1, n + 1))
    return labels == (1 + int(np.argmax(sizes)))


def _templates(h: int, w: int) -> dict[str, np.ndarray]:
    """Ideal shapes filling an h x w box, sampled at pixel centres."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64) + 0.5
    u, v = x / w, y / h  # 0..1 across the box
    circle = (u - 0.5) ** 2 + (v - 0.5) ** 2 <= 0.25
    square = np.ones((h, w), dtype=bool)
    triangle = np.abs(u - 0.5) <= v / 2  # apex at the top centre, base along the bottom
    return {"circle": circle, "square": square, "triangle": triangle}


def analyze(image) -> Verdict:
    """Judge one image (a PIL image or an HxWx3 array)."""
    a = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image, dtype=np.float64)
    border = np.concatenate([a[:2].reshape(-1, 3), a[-2:].reshape(-1, 3), a[:, :2].reshape(-1, 3), a[:, -2:].reshape(-1, 3)])
    bg_rgb = np.median(border, axis=0)
    background = nearest_colour(bg_rgb)

    dist = np.sqrt(((a - bg_rgb) ** 2).sum(axis=2))
    far = dist > 40.0
    if far.sum() < MIN_PIXELS:
        return Verdict(None, background, None, 0.0, {}, int(far.sum()))
    core = far & (dist >= np.percentile(dist[far], 50))
    fg_rgb = np.median(a[core], axis=0)
    colour = nearest_colour(fg_rgb)

    mask = _largest_region(dist > 0.5 * np.sqrt(((fg_rgb - bg_rgb) ** 2).sum()))
    pixels = int(mask.sum())
    if pixels < MIN_PIXELS:
        return Verdict(colour, background, None, 0.0, {}, pixels)
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    box = mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    fill = float(box.mean())
    iou = {}
    for name, ideal in _templates(*box.shape).items():
        iou[name] = float((box & ideal).sum() / (box | ideal).sum())
    shape = max(SHAPES, key=lambda s: iou[s])
    return Verdict(colour, background, shape, fill, iou, pixels)
