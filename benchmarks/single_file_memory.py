"""Peak memory of loading one model from a single-file checkpoint against loading the same model from its diffusers
folder, each arm in its own fresh process.

    python benchmarks/single_file_memory.py [--repeats 3]

A reduced SDXL (batch_speed.py's: an SDXL-layout UNet at 128/256/512 channels, random weights, about 476 MB in
float32) is saved once as a diffusers folder and once as one .safetensors file in the original (LDM) layout, written
by imagegen.testing.write_checkpoint. Each arm loads the pipeline on the CPU in float32 and reports its peak resident
memory (ru_maxrss) after reading every weight once; arms are interleaved over --repeats rounds and the median is reported:

- diffusers folder: `StableDiffusionXLPipeline.from_pretrained(folder)` (the plain baseline);
- diffusers file: `StableDiffusionXLPipeline.from_single_file(file, config=folder)`;
- imagegen folder / imagegen file: `imagegen.loading.load_model` on the folder, and on the file (the path
  `imagegen txt2img --model FILE --config FOLDER` takes).

A second copy of the weights would show as the weights' size again over the folder load.
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

ARMS = ("diffusers-folder", "diffusers-file", "imagegen-folder", "imagegen-file")


def build(root: Path) -> tuple[Path, Path, float]:
    from batch_speed import build_reduced_sdxl

    from imagegen.testing import write_checkpoint

    folder = build_reduced_sdxl(root / "model")
    file = write_checkpoint(folder, root / "model.safetensors")
    return folder, file, file.stat().st_size / 2**20


def arm(name: str, folder: str, file: str) -> dict:
    import torch

    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if name.startswith("diffusers"):
        from diffusers import StableDiffusionXLPipeline

        if name == "diffusers-folder":
            pipe = StableDiffusionXLPipeline.from_pretrained(folder, dtype=torch.float32)
        else:
            pipe = StableDiffusionXLPipeline.from_single_file(file, config=folder, local_files_only=True,
                                                              dtype=torch.float32)
    else:
        from imagegen.families import FAMILIES
        from imagegen.loading import load_model

        single = name == "imagegen-file"
        pipe = load_model(file if single else folder, family=FAMILIES["sdxl"], revision=None, variant=None,
                          dtype="float32", device="cpu", config_folder=folder if single else None).pipe
    weights = sum(p.numel() * p.element_size() for p in pipe.unet.parameters()) / 2**20
    with torch.no_grad():  # read every weight, as a generation would: memory-mapped pages count once touched
        for module in pipe.components.values():
            for param in getattr(module, "parameters", lambda: [])():
                param.sum()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"arm": name, "peak_mb": peak, "import_mb": baseline, "unet_mb": weights}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--arm", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--file", help=argparse.SUPPRESS)
    parser.add_argument("--build", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.arm:
        print(json.dumps(arm(args.arm, args.folder, args.file)))
        return
    if args.build:
        folder, file, file_mb = build(Path(args.build))
        print(json.dumps([str(folder), str(file), file_mb]))
        return
    with tempfile.TemporaryDirectory() as tmp:
        # Built in a child: Linux keeps a process's peak RSS across fork and exec, so the arms must be started by a
        # parent that never held the weights.
        out = subprocess.run([sys.executable, __file__, "--build", tmp], capture_output=True, text=True, check=True)
        folder, file, file_mb = json.loads(out.stdout.strip().splitlines()[-1])
        runs: dict[str, list[float]] = {a: [] for a in ARMS}
        for _ in range(args.repeats):
            for name in ARMS:
                out = subprocess.run([sys.executable, __file__, "--arm", name, "--folder", str(folder), "--file",
                                      str(file)], capture_output=True, text=True, check=True)
                runs[name].append(json.loads(out.stdout.strip().splitlines()[-1])["peak_mb"])
    medians = {name: statistics.median(values) for name, values in runs.items()}
    print(f"checkpoint file: {file_mb:.0f} MB; peak RSS of a fresh process that loads the pipeline, median of "
          f"{args.repeats} (MB):")
    for name in ARMS:
        print(f"  {name:17s} {medians[name]:7.0f}   runs {', '.join(f'{v:.0f}' for v in runs[name])}")
    print(f"file over folder: diffusers {medians['diffusers-file'] - medians['diffusers-folder']:+.0f} MB, imagegen "
          f"{medians['imagegen-file'] - medians['imagegen-folder']:+.0f} MB "
          f"(a second copy of the weights would be about +{file_mb:.0f} MB)")


if __name__ == "__main__":
    main()
