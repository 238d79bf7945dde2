"""`imagegen batch --engine ray` against the local engine, on the same prompts and model, in one run.

    python benchmarks/ray_speed.py [--regime overhead|compute|both] [--repeats 3] [--writes 40]

Each arm is the real command (`python -m imagegen batch ... --json`) in a fresh process, the arms interleaved within
each repetition, medians over the repetitions:

- local: `--engine local` (this process makes and writes everything);
- ray x1: `--engine ray --workers 1` (a local Ray started by the command, one worker with both CPUs);
- ray x2: `--engine ray --workers 2` (two workers, one CPU each).

Two figures per arm:
- end to end: the command's wall time, Python start, Ray start-up, model load and shutdown included;
- steady: milliseconds per image once images flow: the time from the end of the first micro-batch's writes to the
  last write (PNG modification times), over the images after the first micro-batch. This is the per-image cost a long
  batch pays; the difference in the end-to-end time is Ray's one-time start-up.

Also measured: the driver's CPU time per image written (from --json's driver_cpu_s), and the driver's write capacity:
how many 1024x1024 images per second the one writer can place (atomic PNG + sidecar + manifest line, three fsyncs)
when the workers send them already encoded, as they do.

Regimes (as in batch_speed.py): overhead-bound, the built-in demo model at 64x64, 20 steps, 64 prompts; compute-bound,
the reduced SDXL UNet at 256x256, 6 steps, 32 prompts. Target (issue 19): ray x1 / local <= 1.15 on the compute-bound
model.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from batch_speed import build_reduced_sdxl, prompts  # noqa: E402 - the same model and prompts as batch_speed

REGIMES = {
    # name: (model, prompt count, steps, cfg, size)
    "overhead": ("demo", 64, 20, 3.0, 64),
    "compute": ("reduced", 32, 6, 5.0, 256),
}
ARMS = {"local": ["--engine", "local"], "ray x1": ["--engine", "ray", "--workers", "1"],
        "ray x2": ["--engine", "ray", "--workers", "2"]}
TARGET = 1.15


def run_arm(name: str, folder: str, prompt_file: Path, steps: int, cfg: float, size: int, out: Path) -> dict:
    cmd = [sys.executable, "-m", "imagegen", "batch", str(prompt_file), "--model", folder, "--steps", str(steps),
           "--cfg", str(cfg), "--size", f"{size}x{size}", "--scheduler", "Euler", "--seed", "1", "--out", str(out),
           "--json", "-q", *ARMS[name]]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
    summary = json.loads(proc.stdout)
    size_first = int("".join(c for c in summary["batch_size"] if c.isdigit()) or 1)
    times = sorted(p.stat().st_mtime for p in out.glob("*.png"))
    count = len(times) - size_first
    steady = (times[-1] - times[size_first - 1]) / count if count > 0 else float("nan")
    return {"e2e_s": wall, "steady_ms": 1000 * steady, "batch": summary["batch_size"],
            "driver_cpu_ms": 1000 * summary["driver_cpu_s"] / max(1, summary["done"]),
            "workers": [(w["worker"], w["images"]) for w in summary["workers"]], "retries": summary["retries"]}


def write_capacity(work: Path, count: int) -> tuple[float, float]:
    """(images per second, MB per PNG): the driver placing pre-encoded 1024x1024 images and their manifest lines."""
    import numpy as np
    from PIL import Image

    from imagegen.batch.manifest import ManifestWriter
    from imagegen.output import encode_image, place_image

    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 200, 1024, dtype=np.float32)
    pixels = (ramp[None, :, None] + ramp[:, None, None] / 4 + rng.integers(0, 24, (1024, 1024, 3))).clip(0, 255)
    image = Image.fromarray(pixels.astype(np.uint8))
    record = {"schema": "bench", "prompt": "x" * 200, "output": {"pixels_sha256": "0" * 64}}
    encoded = [encode_image(image, parameters="x" * 300, record={**record, "seed": i}) for i in range(4)]
    out = work / "writes"
    manifest = ManifestWriter(out)
    start = time.perf_counter()
    for i in range(count):
        written = place_image(encoded[i % 4], out, f"{i:05d}")
        manifest.append({"type": "done", "key": f"{i}/0", "png": written.png.name, "sha256": written.sha256})
    elapsed = time.perf_counter() - start
    manifest.close()
    return count / elapsed, len(encoded[0].png) / 1e6


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--regime", choices=["overhead", "compute", "both"], default="both")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--writes", type=int, default=40, help="images placed by the write-capacity measurement")
    args = p.parse_args()

    import ray
    import torch

    from imagegen.hub import builtin_models

    work = Path(tempfile.mkdtemp(prefix="imagegen-ray-bench-"))
    print(f"torch {torch.__version__}, ray {ray.__version__}, {os.cpu_count()} CPUs; work dir {work}")
    ok = True
    for regime in (["overhead", "compute"] if args.regime == "both" else [args.regime]):
        model, count, steps, cfg, size = REGIMES[regime]
        folder = str(builtin_models()["demo"]) if model == "demo" else str(build_reduced_sdxl(work / "reduced-sdxl"))
        prompt_file = work / f"{regime}.txt"
        prompt_file.write_text("\n".join(prompts(count)) + "\n", encoding="utf-8")
        results: dict[str, list[dict]] = {name: [] for name in ARMS}
        for rep in range(args.repeats):
            for name in ARMS:  # interleaved: each repetition runs every arm once
                out = work / f"{regime}-{name.replace(' ', '')}-{rep}"
                results[name].append(run_arm(name, folder, prompt_file, steps, cfg, size, out))
        label = "demo model (built-in)" if model == "demo" else "reduced SDXL UNet (random weights)"
        print(f"\n{regime}: {label}, {count} prompts, {size}x{size}, {steps} steps, CFG {cfg:g}, "
              f"median of {args.repeats}")
        print(f"  {'arm':8} {'batch':>9} {'e2e s':>7} {'ratio':>6} {'steady ms/img':>14} {'ratio':>6} "
              f"{'driver CPU ms/img':>18}  images per worker")
        base_e2e = statistics.median(r["e2e_s"] for r in results["local"])
        base_steady = statistics.median(r["steady_ms"] for r in results["local"])
        for name, runs in results.items():
            e2e, steady = statistics.median(r["e2e_s"] for r in runs), statistics.median(r["steady_ms"] for r in runs)
            cpu = statistics.median(r["driver_cpu_ms"] for r in runs)
            split = "/".join(str(n) for _, n in runs[-1]["workers"]) or "-"
            print(f"  {name:8} {runs[-1]['batch']:>9} {e2e:7.1f} {e2e / base_e2e:6.2f} {steady:14.0f} "
                  f"{steady / base_steady:6.2f} {cpu:18.0f}  {split}")
        if regime == "compute":
            ratios = [r["e2e_s"] / l["e2e_s"] for r, l in zip(results["ray x1"], results["local"])]
            steady_ratios = [r["steady_ms"] / l["steady_ms"] for r, l in zip(results["ray x1"], results["local"])]
            ratio, steady_ratio = statistics.median(ratios), statistics.median(steady_ratios)
            ok &= steady_ratio <= TARGET
            print(f"  ray x1 / local: steady {steady_ratio:.2f} ({'meets' if steady_ratio <= TARGET else 'MISSES'} "
                  f"the target of {TARGET}), end to end {ratio:.2f} (Ray's start-up and shutdown included)")
    rate, megabytes = write_capacity(work, args.writes)
    print(f"\ndriver write capacity: {rate:.0f} images/s of 1024x1024 ({megabytes:.1f} MB PNG each, sidecar and "
          f"manifest line, three fsyncs), i.e. {1000 / rate:.1f} ms per image on the writer thread")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
