"""The demo model's synthetic world: coloured shapes on plain backgrounds, and the captions that describe them.

Everything here is pure Python + Pillow + numpy and deterministic for a given ``random.Random``: the training
script draws its data from it, and the evaluation grid and the tests read the same palette and grammar.

Caption grammar (case-insensitive; ``[...]`` optional)::

    [a|an] [small|large|big] <colour> <shape> [on a|an <colour> background]

    <colour> = red | orange | yellow | green | blue | purple | white | black
    <shape>  = circle | square | triangle

The shape and the background always differ in colour. Without a background phrase the background is any other
colour; without a size word the size is anything from small to large.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

# Saturated, well-separated colours: every pair is at least 85 apart in RGB, and the hues of the chromatic ones
# are 0, 28, 54, 120, 225 and 280 degrees.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (245, 135, 20),
    "yellow": (245, 220, 30),
    "green": (40, 170, 50),
    "blue": (35, 70, 220),
    "purple": (140, 50, 180),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}
COLOURS: tuple[str, ...] = tuple(PALETTE)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
SIZE_WORDS: dict[str, str] = {"small": "small", "large": "large", "big": "large"}

IMAGE_SIZE = 64
# Side of the shape's bounding box, as a fraction of the image side, per size class.
SIZE_RANGES: dict[str, tuple[float, float]] = {
    "small": (0.28, 0.40),
    "medium": (0.40, 0.55),
    "large": (0.55, 0.72),
}
_SUPERSAMPLE = 4


@dataclass(frozen=True)
class Scene:
    """One picture: a ``shape`` of ``colour`` on a ``background``, ``size`` px wide, centred at (cx, cy)."""

    shape: str
    colour: str
    background: str
    size_class: str
    size: float
    cx: float
    cy: float


@dataclass(frozen=True)
class Description:
    """What a prompt asks for; ``None`` where the prompt leaves it open."""

    shape: str
    colour: str
    background: str | None = None
    size_class: str | None = None

    def prompt(self) -> str:
        words = [self.size_class] if self.size_class else []
        words += [self.colour, self.shape]
        text = f"{_article(words[0])} {' '.join(words)}"
        if self.background:
            text += f" on {_article(self.background)} {self.background} background"
        return text


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def sample_scene(rng: random.Random, description: Description | None = None) -> Scene:
    """A random scene, matching ``description`` where it says something."""
    shape = description.shape if description else rng.choice(SHAPES)
    colour = description.colour if description else rng.choice(COLOURS)
    background = description.background if description and description.background else None
    if background is None:
        background = rng.choice([c for c in COLOURS if c != colour])
    size_class = description.size_class if description and description.size_class else None
    if size_class is None:
        size_class = rng.choice(tuple(SIZE_RANGES))
    lo, hi = SIZE_RANGES[size_class]
    size = rng.uniform(lo, hi) * IMAGE_SIZE
    margin = 3 + size / 2
    cx = rng.uniform(margin, IMAGE_SIZE - margin)
    cy = rng.uniform(margin, IMAGE_SIZE - margin)
    return Scene(shape, colour, background, size_class, size, cx, cy)


def shape_polygon(shape: str, size: float, cx: float, cy: float) -> list[tuple[float, float]] | None:
    """Corner points of a square or an upright isosceles triangle filling a ``size`` box; None for a circle."""
    h = size / 2
    if shape == "square":
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "triangle":
        return [(cx, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    return None


def render(scene: Scene):
    """The scene as a 64x64 RGB ``PIL.Image``, anti-aliased by drawing at 4x and downsampling."""
    from PIL import Image, ImageDraw

    s = _SUPERSAMPLE
    big = Image.new("RGB", (IMAGE_SIZE * s, IMAGE_SIZE * s), PALETTE[scene.background])
    draw = ImageDraw.Draw(big)
    fill = PALETTE[scene.colour]
    polygon = shape_polygon(scene.shape, scene.size * s, scene.cx * s, scene.cy * s)
    if polygon is None:
        r = scene.size * s / 2
        draw.ellipse([scene.cx * s - r, scene.cy * s - r, scene.cx * s + r, scene.cy * s + r], fill=fill)
    else:
        draw.polygon(polygon, fill=fill)
    return big.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX)


def caption(scene: Scene, rng: random.Random) -> str:
    """A random caption of the grammar that is true of ``scene`` (size and background words are optional)."""
    words: list[str] = []
    if scene.size_class == "small" and rng.random() < 0.7:
        words.append("small")
    elif scene.size_class == "large" and rng.random() < 0.7:
        words.append(rng.choice(("large", "big")))
    words += [scene.colour, scene.shape]
    text = " ".join(words)
    if rng.random() < 0.9:
        text = f"{_article(words[0])} {text}"
    if rng.random() < 0.85:
        text += f" on {_article(scene.background)} {scene.background} background"
    return text


_COLOUR_RE = "|".join(COLOURS)
_PROMPT_RE = re.compile(
    rf"^\s*(?:an?\s+)?(?:(?P<size>small|large|big)\s+)?(?P<colour>{_COLOUR_RE})\s+(?P<shape>{'|'.join(SHAPES)})"
    rf"(?:\s+on\s+(?:an?\s+)?(?P<background>{_COLOUR_RE})\s+background)?\s*$",
    re.IGNORECASE,
)


def parse_prompt(prompt: str) -> Description | None:
    """The description a prompt of the grammar asks for, or None if it is not of the grammar."""
    m = _PROMPT_RE.match(prompt)
    if not m:
        return None
    background = m["background"].lower() if m["background"] else None
    colour = m["colour"].lower()
    if background == colour:
        return None
    size = SIZE_WORDS[m["size"].lower()] if m["size"] else None
    return Description(m["shape"].lower(), colour, background, size)


def grid() -> list[Description]:
    """Every colour x shape x background combination (8 x 3 x 7 = 168), in a fixed order."""
    return [
        Description(shape, colour, background)
        for colour in COLOURS
        for shape in SHAPES
        for background in COLOURS
        if background != colour
    ]


def vocabulary() -> list[str]:
    """The grammar's words, each of which the demo tokenizer keeps as one token."""
    return ["a", "an", "on", "background", *SIZE_WORDS, *COLOURS, *SHAPES]
