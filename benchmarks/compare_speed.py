"""`imagegen compare` (3 schedulers x 3 step counts) against 9 separate `imagegen txt2img` runs of the same cells.

    python benchmarks/compare_speed.py [--preset demo] [--steps 10,20,30] [--schedulers "Euler,DPM++ 2M,DDIM"]

Both sides are timed from process launch to exit, in the same run, on the same pipeline (the built-in demo model by
default: its load, imports included, takes about 300 denoising steps, as a real SDXL load does on a GPU). It also
prints the comparison's own overhead, measured inside the run: the wall time after the load that is not denoising
(encode, scheduler swaps, decode, writes, grid and reports) over the summed denoising time of the cells.
Targets: at least 3x faster overall; overhead at most 10%.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def timed(cmd: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    return time.perf_counter() - start, proc.stdout


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="demo")
    p.add_argument("--schedulers", default="Euler,DPM++ 2M,DDIM")
    p.add_argument("--steps", default="10,20,30")
    p.add_argument("--prompt", default="a red circle on a blue background")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="imagegen-compare-bench-"))
    imagegen = [sys.executable, "-m", "imagegen"]

    compare_s, out = timed([*imagegen, "compare", args.prompt, "--preset", args.preset, "--schedulers",
                            args.schedulers, "--steps", args.steps, "--seed", "7", "--out", str(work / "cmp"),
                            "--json", "-q"])
    summary = json.loads(out)
    separate_s = 0.0
    for scheduler in args.schedulers.split(","):
        for steps in args.steps.split(","):
            elapsed, _ = timed([*imagegen, "txt2img", args.prompt, "--preset", args.preset, "--scheduler", scheduler,
                                "--steps", steps, "--seed", "7", "--out", str(work / "single"), "-q"])
            separate_s += elapsed
    cells = len(summary["cells"])
    print(f"{args.preset}: {cells} cells ({args.schedulers} x {args.steps} steps)")
    print(f"  imagegen compare:           {compare_s:7.2f} s")
    print(f"  {cells} separate txt2img runs:  {separate_s:7.2f} s")
    print(f"  speed-up: {separate_s / compare_s:.1f}x (target >= 3)")
    print(f"  inside the compare run: load {summary['load_s']:.2f} s, encode {summary['encode_s']:.3f} s, "
          f"denoising {summary['denoise_total_s']:.2f} s, after-load wall {summary['wall_s'] - summary['load_s']:.2f} s")
    print(f"  overhead over denoising: {100 * summary['overhead']:.1f}% (target <= 10%)")
    return 0 if separate_s / compare_s >= 3 and summary["overhead"] <= 0.10 else 1


if __name__ == "__main__":
    sys.exit(main())
