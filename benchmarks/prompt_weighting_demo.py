"""What A1111 prompt weights mean on the built-in demo model, judged by the demo analyzer (imagegen.demo.analyzer).

A prompt that names two colours for one shape, "a red green circle on a blue background", is a close call for the
demo model; weighting one colour word up or down should tip it. For each prompt, 20 seeds: how often the analyzer
calls the shape red or green, and the mean share of pixels nearest to the palette's red and green (a continuous
colour score). --prompt-syntax plain is the control: there the brackets are only text.

    python benchmarks/prompt_weighting_demo.py [--seeds 20] [--syntax a1111,plain]
"""

from __future__ import annotations

import argparse
import sys


def colour_share(image, colour: str) -> float:
    """The share of pixels whose nearest palette colour is `colour`."""
    import numpy as np

    from imagegen.demo.world import PALETTE

    names = list(PALETTE)
    rgb = np.array([PALETTE[n] for n in names], dtype=np.float64)
    pixels = np.asarray(image.convert("RGB"), dtype=np.float64).reshape(-1, 1, 3)
    nearest = ((pixels - rgb[None]) ** 2).sum(axis=2).argmin(axis=1)
    return float((nearest == names.index(colour)).mean())


PROMPTS = (
    "a red green circle on a blue background",
    "a (red:1.5) green circle on a blue background",
    "a (red:0.5) green circle on a blue background",
    "a red (green:1.5) circle on a blue background",
    "a [red] green circle on a blue background",
    "a (red) green circle on a blue background",
)


def main(argv: list[str] | None = None) -> int:
    import statistics

    import imagegen
    from imagegen.demo.analyzer import analyze

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=20)
    p.add_argument("--syntax", default="a1111,plain")
    p.add_argument("--model", default="builtin:demo")
    args = p.parse_args(argv)
    print(f"{args.seeds} seeds each (seed 0 on); share: mean share of pixels nearest to the palette colour")
    print("| prompt | syntax | shape red | shape green | red share | green share |")
    print("|---|---|---:|---:|---:|---:|")
    for syntax in args.syntax.split(","):
        for prompt in PROMPTS:
            result = imagegen.generate(prompt, preset="demo", model=args.model, seed=0, n=args.seeds,
                                       batch_size=args.seeds, save=False, prompt_syntax=syntax)
            colours = [analyze(i.image).colour for i in result.images]
            red = statistics.mean(colour_share(i.image, "red") for i in result.images)
            green = statistics.mean(colour_share(i.image, "green") for i in result.images)
            print(f"| {prompt} | {syntax} | {colours.count('red')}/{args.seeds} | {colours.count('green')}/{args.seeds} "
                  f"| {red:.3f} | {green:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
