"""Pixels pinned across refactors: a few tiny images (one per family, and the ControlNet and IP-Adapter paths) keep the
exact pixel hashes they had before the architecture change (made on f34b4c8; SD 1.5's when the family was added), so a
refactor that moves a pixel fails."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

# CPU kernels pinned so the hashes do not depend on the machine: one thread (reductions split by thread count),
# ATen's baseline kernels, MKL's conditional numerical reproducibility, and oneDNN capped at SSE4.1.
PINNED_ENV = {"OMP_NUM_THREADS": "1", "ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE",
              "ONEDNN_MAX_CPU_ISA": "SSE41"}
PINNED = {
    "sdxl": "3069c06c7b9890d4baad70ee604b965537057eb07d82fc8e9539eb96a4335b29",
    "sd3": "f4b93ee2d49c5d6ba608976091a68b306852f2cfdce5941de9b55133f23034c0",
    "flux": "5bcd2c08959e836ad64497a65617c2dbd78ca908467f1197b9aeb484241c46c1",
    "sd15": "14d4de84152998271d13dad34533aa6ce6930ed2e7f3b7100ec94aceb781fc51",  # pinned when the family came
    "sdxl-controlnet": "8a5a37fefdd74d4a428585114ec446a8f5fc5d4c0fe595af386304a993823f61",
    "sd3-controlnet": "e12994500ded95f32adda8ae1d6695c5e1e936cfafc33a4a96f1e223fe85476a",
    "flux-ip-adapter": "4aa2981e7fb21d488cab730bec5f5fdc37d3e27b4fa4bf9ca8929e742efd613f",
}


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="hashes pinned on x86-64 kernels")
def test_tiny_images_keep_their_pinned_pixels(tmp_path):
    script = Path(__file__).with_name("pinned_pixels.py")
    proc = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True,
                          env={**os.environ, **PINNED_ENV, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    made = json.loads(proc.stdout.strip().splitlines()[-1])
    assert made == PINNED
