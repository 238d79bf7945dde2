"""Memory of a batch mixing plain and ControlNet lines: imagegen (from_pipe) against two plain diffusers loads.

    python benchmarks/controlnet_memory.py [--size 128] [--steps 2]

A reduced SDXL (the compute regime of batch_speed.py: an SDXL-layout UNet at 128/256/512 channels, random weights)
and a ControlNet made from its UNet (`ControlNetModel.from_unet`) are saved once. Each arm then runs in its own fresh
process, makes two plain and two ControlNet images, and reports its peak resident memory (ru_maxrss):

- imagegen plain: `imagegen batch` with the two plain lines only (the floor);
- imagegen mixed: `imagegen batch` with all four lines (plain and ControlNet share the base modules via from_pipe);
- diffusers, two pipelines: `StableDiffusionXLPipeline.from_pretrained` for the plain lines and
  `StableDiffusionXLControlNetPipeline.from_pretrained(..., controlnet=...)` for the others, as diffusers' docs load
  each pipeline.

The extra memory of "mixed" over "plain" should be about the net's size; that of the two-pipeline baseline, the base
model's size again plus the net's.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

PLAIN = ["a red circle on a blue background", "a green square on a white background"]
CONTROLLED = ["a glass tower at dusk", "a brick house in fog"]


def build(root: Path) -> tuple[Path, Path, Path, dict]:
    import numpy as np
    import torch
    from diffusers import ControlNetModel, UNet2DConditionModel
    from PIL import Image

    from batch_speed import build_reduced_sdxl

    model = build_reduced_sdxl(root / "model")
    unet = UNet2DConditionModel.from_pretrained(model / "unet")
    torch.manual_seed(0)
    net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 32, 96, 256))
    net.save_pretrained(root / "net")
    image = np.zeros((256, 256, 3), dtype="uint8")
    image[64:192, 64:192] = 255
    Image.fromarray(image).save(root / "edges.png")
    sizes = {
        "unet_mb": sum(p.numel() * 4 for p in unet.parameters()) / 2**20,
        "net_mb": sum(p.numel() * 4 for p in net.parameters()) / 2**20,
    }
    return model, root / "net", root / "edges.png", sizes


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def arm_imagegen(model: str, net: str, edges: str, out: str, size: int, steps: int, mixed: bool) -> dict:
    from imagegen.batch import prepare, run_batch
    from imagegen.request import Request

    lines = [{"prompt": p} for p in PLAIN]
    if mixed:
        lines += [{"prompt": p, "control": f"canny:{edges}", "controlnet_model": net} for p in CONTROLLED]
    prompt_file = Path(out) / "prompts.jsonl"
    prompt_file.parent.mkdir(parents=True, exist_ok=True)
    prompt_file.write_text("".join(json.dumps(line) + "\n" for line in lines))
    flags = Request(model=model, steps=steps, size=(size, size), out=str(Path(out) / "images"))
    result = run_batch(prepare(str(prompt_file), flags, base_seed=1))
    return {"images": result.done, "peak_mb": peak_mb()}


def arm_diffusers(model: str, net: str, edges: str, out: str, size: int, steps: int, mixed: bool) -> dict:
    import torch
    from diffusers import ControlNetModel, StableDiffusionXLControlNetPipeline, StableDiffusionXLPipeline
    from PIL import Image

    plain = StableDiffusionXLPipeline.from_pretrained(model, use_safetensors=True)
    controlled = StableDiffusionXLControlNetPipeline.from_pretrained(
        model, controlnet=ControlNetModel.from_pretrained(net, use_safetensors=True), use_safetensors=True)
    for pipe in (plain, controlled):
        pipe.set_progress_bar_config(disable=True)
    made = 0
    for i, prompt in enumerate(PLAIN):
        plain(prompt, num_inference_steps=steps, width=size, height=size,
              generator=torch.Generator().manual_seed(i)).images[0].save(Path(out) / f"plain-{i}.png")
        made += 1
    edge_map = Image.open(edges).convert("RGB").resize((size, size))
    for i, prompt in enumerate(CONTROLLED):
        controlled(prompt, image=edge_map, num_inference_steps=steps, width=size, height=size,
                   generator=torch.Generator().manual_seed(i)).images[0].save(Path(out) / f"cn-{i}.png")
        made += 1
    return {"images": made, "peak_mb": peak_mb()}


def child(spec: dict) -> None:
    fn = arm_imagegen if spec.pop("arm") == "imagegen" else arm_diffusers
    Path(spec["out"]).mkdir(parents=True, exist_ok=True)
    print(json.dumps(fn(**spec)))


def run_arm(spec: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"arm failed: {spec['arm']}\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--child")
    args = p.parse_args()
    if args.child:
        child(json.loads(args.child))
        return 0
    with tempfile.TemporaryDirectory(prefix="imagegen-cn-mem-") as tmp:
        root = Path(tmp)
        model, net, edges, sizes = build(root)
        common = {"model": str(model), "net": str(net), "edges": str(edges), "size": args.size, "steps": args.steps}
        arms = {
            "imagegen plain (2 images)": {"arm": "imagegen", "mixed": False},
            "imagegen mixed (2 plain + 2 ControlNet)": {"arm": "imagegen", "mixed": True},
            "diffusers, two pipelines (2 + 2)": {"arm": "diffusers", "mixed": True},
        }
        results = {name: run_arm({**spec, **common, "out": str(root / f"out-{i}")}) for i, (name, spec) in enumerate(arms.items())}
    floor = results["imagegen plain (2 images)"]["peak_mb"]
    print(f"reduced SDXL UNet {sizes['unet_mb']:.0f} MB, ControlNet {sizes['net_mb']:.0f} MB (fp32), "
          f"{args.size}x{args.size}, {args.steps} steps")
    for name, r in results.items():
        print(f"{name:42s} peak RSS {r['peak_mb']:8.0f} MB  (+{r['peak_mb'] - floor:6.0f} MB over plain)  images {r['images']}")
    print(json.dumps({"sizes": sizes, "results": results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
