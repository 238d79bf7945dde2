"""What img2img and inpaint mean on the built-in demo model, judged by the demo analyzer (imagegen.demo.analyzer).

Init image: a red circle on blue (drawn by imagegen.demo.world). Prompt: "a green circle on a blue background".
For each strength, 20 seeds: how often the shape comes out green (the prompt wins) or stays red (the image wins).
Inpaint: the left half masked; the right half must keep the input's pixels exactly.

    python benchmarks/modes_demo.py [--seeds 20] [--cfg 3,1] [--strengths 0.2,0.3,0.5,0.8] [--model FOLDER]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path


def _init_image(folder: Path) -> tuple[Path, Path]:
    from PIL import Image, ImageDraw

    from imagegen.demo.world import PALETTE

    image = Image.new("RGB", (64, 64), PALETTE["blue"])
    ImageDraw.Draw(image).ellipse((16, 16, 47, 47), fill=PALETTE["red"])
    mask = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(mask).rectangle((0, 0, 31, 63), fill=255)
    image.save(folder / "red-circle.png")
    mask.save(folder / "left-half.png")
    return folder / "red-circle.png", folder / "left-half.png"


def main(argv: list[str] | None = None) -> int:
    import numpy as np
    from PIL import Image

    import imagegen
    from imagegen.demo.analyzer import analyze

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=20)
    p.add_argument("--cfg", default="3,1", help="CFG scales (the demo preset's is 3)")
    p.add_argument("--strengths", default="0.2,0.3,0.5,0.8")
    p.add_argument("--model", default="builtin:demo", help="the demo model, or a retrained copy of it (a folder)")
    args = p.parse_args(argv)
    prompt = "a green circle on a blue background"
    with tempfile.TemporaryDirectory() as tmp:
        image, mask = _init_image(Path(tmp))
        print(f"img2img, {args.seeds} seeds, prompt {prompt!r}, init: a red circle on blue")
        print("| cfg | strength | green (prompt wins) | red (image wins) | other |")
        print("|---:|---:|---:|---:|---:|")
        for cfg in (float(c) for c in args.cfg.split(",")):
            for strength in (float(s) for s in args.strengths.split(",")):
                result = imagegen.generate(prompt, preset="demo", model=args.model, image=str(image), strength=strength, cfg=cfg,
                                           seed=0, n=args.seeds, batch_size=args.seeds, save=False)
                colours = [analyze(i.image).colour for i in result.images]
                green, red = colours.count("green"), colours.count("red")
                print(f"| {cfg:g} | {strength:g} | {green}/{args.seeds} | {red}/{args.seeds} | "
                      f"{args.seeds - green - red}/{args.seeds} |")
        result = imagegen.generate(prompt, preset="demo", model=args.model, image=str(image), mask=str(mask), seed=0, n=args.seeds,
                                   batch_size=args.seeds, save=False)
        source = np.asarray(Image.open(image).convert("RGB")).astype(int)
        kept = [int(np.abs(np.asarray(i.image).astype(int)[:, 32:] - source[:, 32:]).max()) for i in result.images]
        changed = [float(np.abs(np.asarray(i.image).astype(int)[:, :32] - source[:, :32]).mean())
                   for i in result.images]
        print(f"\ninpaint of the left half, {args.seeds} seeds: right half's largest pixel difference from the input "
              f"{max(kept)} (0 = kept exactly); left half's mean difference {np.mean(changed):.1f} (0-255)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
