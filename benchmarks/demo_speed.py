"""Cold-start speed of `imagegen txt2img --preset demo`, against plain diffusers doing the same in the same run.

    python benchmarks/demo_speed.py [--runs 5]

Each measurement is a fresh Python process (imports included), timed from launch to exit, median of --runs:

- ``python -c "import torch"``: the floor any torch program pays;
- plain diffusers: import, ``StableDiffusionXLPipeline.from_pretrained`` of the demo folder, one 64x64 image at
  the demo preset's defaults, PNG saved;
- ``imagegen txt2img ... --preset demo``: the same image, with metadata, sidecar and atomic write.

It also prints imagegen's own split of one run (``--json`` timings): load (imports of the model code included),
denoise, decode, save.
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

PROMPT = "a red circle on a blue background"


def _wall(cmd: list[str], cwd: str, env: dict) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    return elapsed


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=5)
    args = p.parse_args()

    from imagegen.hub import builtin_models
    from imagegen.presets import load_preset

    preset = load_preset("demo")
    folder = str(builtin_models()["demo"])
    steps, cfg = preset.defaults.steps, preset.defaults.cfg
    work = tempfile.mkdtemp(prefix="imagegen-bench-")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "IMAGEGEN_HOME": os.path.join(work, "home")}

    baseline = (
        "import torch\n"
        "from diffusers import StableDiffusionXLPipeline\n"
        f"pipe = StableDiffusionXLPipeline.from_pretrained({folder!r}, use_safetensors=True)\n"
        "pipe.set_progress_bar_config(disable=True)\n"
        f"image = pipe({PROMPT!r}, height=64, width=64, num_inference_steps={steps}, guidance_scale={cfg},\n"
        "             generator=torch.Generator().manual_seed(1)).images[0]\n"
        "image.save('baseline.png')\n"
    )
    commands = {
        "python -c 'import torch'": [sys.executable, "-c", "import torch"],
        "plain diffusers (same image)": [sys.executable, "-c", baseline],
        "imagegen txt2img --preset demo": [
            sys.executable, "-m", "imagegen", "txt2img", PROMPT, "--preset", "demo", "--seed", "1", "-q",
            "--out", "out",
        ],
    }
    _wall(commands["python -c 'import torch'"], work, env)  # warm the page cache
    print(f"{args.runs} runs each, median wall time of a fresh process (imports included):")
    for label, cmd in commands.items():
        times = [_wall(cmd, work, env) for _ in range(args.runs)]
        print(f"  {label:34s} {statistics.median(times):6.2f} s   (min {min(times):.2f}, max {max(times):.2f})")

    proc = subprocess.run(
        [sys.executable, "-m", "imagegen", "txt2img", PROMPT, "--preset", "demo", "--seed", "1", "-q", "--json",
         "--out", "out"],
        cwd=work, env=env, capture_output=True, text=True, check=True,
    )
    timings = json.loads(proc.stdout)["timings"]
    print("imagegen's own split of one run: " + ", ".join(f"{k} {v:.2f} s" for k, v in timings.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
