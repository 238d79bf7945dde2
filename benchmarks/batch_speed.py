"""`imagegen batch` against a plain diffusers loop, on the same pipeline folder, in two regimes.

    python benchmarks/batch_speed.py [--regime overhead|compute|both] [--sizes 1,2,4,8] [--repeats 1]

Each arm runs in its own fresh Python process (one process tree) and times itself after the pipeline is loaded, so
the figure is generation wall time: denoising, decoding, PNG encoding and writing every file.

- plain diffusers, as in diffusers' docs: ``from_pretrained`` once, then one ``pipe(prompt, generator=...)`` call per
  prompt and ``image.save()``.
- imagegen: ``prepare`` + ``run_batch`` (what ``imagegen batch`` runs) with ``--batch-size auto`` and each fixed size
  in --sizes; metadata, sidecars, manifest and atomic writes included.

Regimes (from the issue): overhead-bound, the built-in demo model (a small SDXL-class pipeline) at 64x64 with 64
prompts, target ratio <= 0.65; compute-bound, a reduced SDXL UNet at 256x256 with random weights and 16 prompts,
target <= 1.05 for the default (auto) batch size.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COLOURS = ("red", "orange", "yellow", "green", "blue", "purple", "white", "black")
SHAPES = ("circle", "square", "triangle")


def prompts(count: int) -> list[str]:
    out = []
    for i in range(count):
        colour, shape, background = COLOURS[i % 8], SHAPES[(i // 8) % 3], COLOURS[(i * 3 + 1) % 8]
        if background == colour:
            background = COLOURS[(i * 3 + 2) % 8]
        out.append(f"a {colour} {shape} on a {background} background")
    return out


def build_reduced_sdxl(path: Path) -> Path:
    """An SDXL-layout UNet at reduced width (128/256/512 channels, 1-1-2 transformer layers), random weights."""
    import torch
    from diffusers import UNet2DConditionModel

    from imagegen.testing import _save, _tiny_sdxl

    pipe = _tiny_sdxl(0)
    te_dims = pipe.text_encoder.config.hidden_size + pipe.text_encoder_2.config.hidden_size
    time_dim = pipe.unet.config.addition_time_embed_dim
    proj = pipe.unet.config.projection_class_embeddings_input_dim
    torch.manual_seed(0)
    pipe.unet = UNet2DConditionModel(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(128, 256, 512),
        layers_per_block=2,
        attention_head_dim=(2, 4, 8),
        transformer_layers_per_block=(1, 1, 2),
        use_linear_projection=True,
        cross_attention_dim=te_dims,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=proj,
    )
    pipe.register_modules(unet=pipe.unet)
    return _save(pipe, path, True)


# ---- the two arms, each run in a child process


def arm_plain(folder: str, items: list[str], steps: int, cfg: float, size: int, out: str) -> dict:
    import torch
    from diffusers import StableDiffusionXLPipeline

    start = time.perf_counter()
    pipe = StableDiffusionXLPipeline.from_pretrained(folder, use_safetensors=True)
    pipe.set_progress_bar_config(disable=True)
    loaded = time.perf_counter()
    os.makedirs(out, exist_ok=True)
    for i, prompt in enumerate(items):
        image = pipe(prompt, num_inference_steps=steps, guidance_scale=cfg, width=size, height=size,
                     generator=torch.Generator().manual_seed(1000 + i)).images[0]
        image.save(os.path.join(out, f"{i:05d}.png"))
    return {"load_s": loaded - start, "gen_s": time.perf_counter() - loaded}


def arm_imagegen(folder: str, items: list[str], steps: int, cfg: float, size: int, out: str, batch: str) -> dict:
    from imagegen.batch import prepare, run_batch
    from imagegen.loading import load_model
    from imagegen.request import Request

    start = time.perf_counter()
    prompt_file = Path(out).with_suffix(".txt")
    prompt_file.write_text("\n".join(items) + "\n", encoding="utf-8")
    flags = Request(model=folder, steps=steps, cfg=cfg, size=(size, size), scheduler="Euler", out=out, preset=None)
    plan = prepare(str(prompt_file), flags, base_seed=1)
    req = plan.images[0].req
    load_model(req.model, family=req.family, revision=None, variant=None, dtype="float32", device="cpu")
    loaded = time.perf_counter()
    result = run_batch(plan, batch_size=None if batch == "auto" else int(batch))
    assert result.done == len(items), result
    return {"load_s": loaded - start, "gen_s": time.perf_counter() - loaded, "batch_size": result.batch_size}


def child(args) -> None:
    spec = json.loads(args.child)
    fn = arm_plain if spec.pop("arm") == "plain" else arm_imagegen
    print(json.dumps(fn(**spec)))


def run_arm(spec: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"arm failed: {spec}\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


REGIMES = {
    # name: (model folder builder, prompt count, steps, cfg, size, target for auto)
    "overhead": ("demo", 64, 20, 3.0, 64, 0.65),
    "compute": ("reduced", 16, 6, 5.0, 256, 1.05),
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--regime", choices=["overhead", "compute", "both"], default="both")
    p.add_argument("--sizes", default="1,4,8", help="fixed batch sizes to time besides auto")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args)
        return 0

    import torch

    from imagegen.hub import builtin_models

    work = Path(tempfile.mkdtemp(prefix="imagegen-bench-"))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs; work dir {work}")
    ok = True
    for regime in (["overhead", "compute"] if args.regime == "both" else [args.regime]):
        model, count, steps, cfg, size, target = REGIMES[regime]
        folder = str(builtin_models()["demo"]) if model == "demo" else str(build_reduced_sdxl(work / "reduced-sdxl"))
        items = prompts(count)
        common = {"folder": folder, "items": items, "steps": steps, "cfg": cfg, "size": size}
        arms = [("plain", None)] + [("imagegen", "auto")] + [("imagegen", s) for s in args.sizes.split(",") if s]
        times: dict[tuple, list[float]] = {}
        labels: dict[tuple, str] = {}
        for rep in range(args.repeats):
            for arm, batch in arms:
                spec = {**common, "arm": arm, "out": str(work / f"{regime}-{arm}-{batch}-{rep}")}
                if batch:
                    spec["batch"] = batch
                result = run_arm(spec)
                times.setdefault((arm, batch), []).append(result["gen_s"])
                labels[(arm, batch)] = result.get("batch_size", "")
        plain = statistics.median(times[("plain", None)])
        label = "demo model (built-in)" if model == "demo" else "reduced SDXL UNet (random weights)"
        print(f"\n{regime}: {label}, {count} prompts, {size}x{size}, {steps} steps, CFG {cfg:g}")
        print(f"  {'arm':28} {'wall s':>8} {'ms/image':>9} {'ratio':>6}")
        for key in times:
            wall = statistics.median(times[key])
            name = "plain diffusers loop" if key[0] == "plain" else f"imagegen --batch-size {key[1]}"
            if key[1] == "auto":
                name += f" -> {labels[key].replace('auto ', '').strip('()')}"
            print(f"  {name:28} {wall:8.2f} {1000 * wall / count:9.0f} {wall / plain:6.2f}")
        auto = statistics.median(times[("imagegen", "auto")]) / plain
        verdict = "meets" if auto <= target else "MISSES"
        ok &= auto <= target
        print(f"  auto / plain = {auto:.2f}: {verdict} the target of {target}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
