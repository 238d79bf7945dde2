"""Peak memory with and without one LoRA: imagegen against plain diffusers, each arm in its own fresh process.

    python benchmarks/lora_memory.py [--size 128] [--steps 2] [--rank 16] [--repeats 3]

A reduced SDXL (batch_speed.py's: an SDXL-layout UNet at 128/256/512 channels, random weights) and a rank-16 LoRA on
its attention projections (built with peft, saved with diffusers' save_lora_weights) are saved once. Each arm makes
two images and reports its peak resident memory (ru_maxrss); arms are interleaved over --repeats rounds and the
median is reported:

- imagegen: `imagegen.generate` without and with `lora=` (diffusers' load_lora_weights into the loaded pipeline);
- diffusers: `StableDiffusionXLPipeline.from_pretrained`, then `load_lora_weights` for the LoRA arm.

A second copy of the base weights would show as the UNet's size again in the LoRA arm; the LoRA's own size (and
peft's wrappers) is what it should cost.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

PROMPTS = ["a red circle on a blue background", "a green square on a white background"]


def build(root: Path, rank: int) -> tuple[Path, Path, dict]:
    import torch
    from diffusers import StableDiffusionXLPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from batch_speed import build_reduced_sdxl

    model = build_reduced_sdxl(root / "model")
    pipe = StableDiffusionXLPipeline.from_pretrained(model)
    unet_mb = sum(p.numel() * p.element_size() for p in pipe.unet.parameters()) / 2**20
    pipe.unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in pipe.unet.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.02)
    layers = get_peft_model_state_dict(pipe.unet)
    StableDiffusionXLPipeline.save_lora_weights(root / "lora", unet_lora_layers=layers, safe_serialization=True)
    lora = root / "lora" / "pytorch_lora_weights.safetensors"
    return model, lora, {"unet_mb": unet_mb, "lora_mb": lora.stat().st_size / 2**20}


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def arm_imagegen(model: str, lora: str | None, size: int, steps: int) -> dict:
    import imagegen

    extra = {"lora": [lora]} if lora else {}
    for i, prompt in enumerate(PROMPTS):
        imagegen.generate(prompt, model=model, preset="sdxl", size=(size, size), steps=steps, seed=i, save=False,
                          **extra)
    return {"peak_mb": peak_mb()}


def arm_diffusers(model: str, lora: str | None, size: int, steps: int) -> dict:
    import torch
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(model, use_safetensors=True)
    pipe.set_progress_bar_config(disable=True)
    if lora:
        pipe.load_lora_weights(str(Path(lora).parent), weight_name=Path(lora).name)
    for i, prompt in enumerate(PROMPTS):
        pipe(prompt, num_inference_steps=steps, width=size, height=size, generator=torch.Generator().manual_seed(i))
    return {"peak_mb": peak_mb()}


def run_arm(spec: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"arm failed: {spec}\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--child")
    args = p.parse_args()
    if args.child:
        spec = json.loads(args.child)
        fn = arm_imagegen if spec.pop("arm") == "imagegen" else arm_diffusers
        print(json.dumps(fn(**spec)))
        return 0
    with tempfile.TemporaryDirectory(prefix="imagegen-lora-mem-") as tmp:
        model, lora, sizes = build(Path(tmp), args.rank)
        arms = {f"{arm} {'with' if with_lora else 'without'} LoRA": {"arm": arm, "lora": str(lora) if with_lora else None}
                for arm in ("imagegen", "diffusers") for with_lora in (False, True)}
        peaks: dict[str, list[float]] = {name: [] for name in arms}
        for _ in range(args.repeats):  # interleaved rounds
            for name, spec in arms.items():
                peaks[name].append(run_arm({**spec, "model": str(model), "size": args.size, "steps": args.steps})["peak_mb"])
    median = {name: statistics.median(v) for name, v in peaks.items()}
    print(f"reduced SDXL UNet {sizes['unet_mb']:.0f} MB, LoRA file {sizes['lora_mb']:.1f} MB (fp32), "
          f"{args.size}x{args.size}, {args.steps} steps, median of {args.repeats}")
    for tool in ("imagegen", "diffusers"):
        without, with_ = median[f"{tool} without LoRA"], median[f"{tool} with LoRA"]
        print(f"{tool:10s} peak RSS without {without:7.0f} MB, with one LoRA {with_:7.0f} MB  (+{with_ - without:.0f} MB)")
    print(json.dumps({"sizes": sizes, "peaks": peaks}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
