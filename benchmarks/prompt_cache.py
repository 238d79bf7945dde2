"""Text-encoder calls for a batch of repeated prompts: imagegen (each distinct prompt encoded once per run) against
plain diffusers (the pipeline encodes the prompts of every call it is given).

    python benchmarks/prompt_cache.py [--family qwen-image] [--lines 24] [--distinct 3] [--batch-size 4] [--cfg 4]

Both run the family's tiny random-weight pipeline of imagegen.testing (the same architecture as the real model, at
a tiny size) on the CPU: --lines prompts cycling over --distinct different ones, --batch-size images per pipeline
call, 2 steps at 64x64. Forward hooks on `text_encoder` count its calls and time them. diffusers: one
`pipe(prompt=[...], negative_prompt=[...])` per micro-batch of consecutive lines. imagegen: `imagegen batch` on the
same lines (in-process, the real command). With CFG on, each encode runs the prompt and the negative.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

PROMPTS = ["a fox in snow", "a shop sign that says OPEN, photo", "an old lighthouse on a rocky coast at dusk",
           "a bowl of ramen, studio light", "a red bicycle against a yellow wall"]


def counted(module, stats: dict | None = None) -> dict:
    """Count and time `module`'s forward calls, and the prompts (rows) they encode."""
    stats = stats if stats is not None else {}
    stats.update(calls=0, rows=0, seconds=0.0)

    def before(_module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        stats["rows"] += int(ids.shape[0]) if ids is not None else 0
        stats["start"] = time.perf_counter()

    def after(*_):
        stats["calls"] += 1
        stats["seconds"] += time.perf_counter() - stats.pop("start")

    module.register_forward_pre_hook(before, with_kwargs=True)
    module.register_forward_hook(after)
    return stats


def diffusers_arm(folder: Path, lines: list[str], batch: int, cfg: float) -> dict:
    import diffusers
    import torch

    pipe = diffusers.DiffusionPipeline.from_pretrained(folder, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    stats = counted(pipe.text_encoder)
    extra = {"true_cfg_scale": cfg} if "true_cfg_scale" in pipe.__call__.__code__.co_varnames else {}
    for i in range(0, len(lines), batch):
        prompts = lines[i:i + batch]
        pipe(prompt=prompts, negative_prompt=["blurry"] * len(prompts), num_inference_steps=2, height=64, width=64,
             guidance_scale=cfg, generator=torch.Generator().manual_seed(i), **extra)
    return stats


def imagegen_arm(folder: Path, lines: list[str], batch: int, cfg: float, out: Path) -> dict:
    import imagegen.loading as loading
    from imagegen.cli import main

    stats: dict = {}
    real = loading.load_model

    def counting(*args, **kwargs):
        loaded = real(*args, **kwargs)
        if not stats:
            counted(loaded.pipe.text_encoder, stats)
        return loaded

    loading.load_model = counting
    prompt_file = out / "lines.txt"
    prompt_file.write_text("\n".join(lines) + "\n")
    code = main(["batch", str(prompt_file), "--model", str(folder), "--steps", "2", "--size", "64x64", "--cfg",
                 str(cfg), "--negative", "blurry", "--batch-size", str(batch), "--seed", "1", "--out",
                 str(out / "run"), "-q"])
    loading.load_model = real
    assert code == 0, f"imagegen batch exited {code}"
    return stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="qwen-image")
    parser.add_argument("--lines", type=int, default=24)
    parser.add_argument("--distinct", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--cfg", type=float, default=4.0)
    args = parser.parse_args()
    from imagegen.testing import build_tiny

    lines = [PROMPTS[i % args.distinct] for i in range(args.lines)]
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_tiny(args.family, Path(tmp) / "model")
        plain = diffusers_arm(folder, lines, args.batch_size, args.cfg)
        ours = imagegen_arm(folder, lines, args.batch_size, args.cfg, Path(tmp))
    print(json.dumps({"family": args.family, "lines": args.lines, "distinct_prompts": args.distinct,
                      "batch_size": args.batch_size, "cfg": args.cfg,
                      "diffusers": {k: round(v, 3) for k, v in plain.items()},
                      "imagegen": {k: round(v, 3) for k, v in ours.items()}}, indent=1))


if __name__ == "__main__":
    main()
