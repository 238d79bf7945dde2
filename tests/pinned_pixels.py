"""Make a few tiny images through the CLI and print their pixel hashes; tests/test_pinned_pixels.py runs it in a
subprocess with CPU kernels pinned (one thread, baseline instruction sets), so the hashes hold on any x86-64 machine."""

import contextlib
import io
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from imagegen.cli import main
from imagegen.testing import build_tiny, build_tiny_controlnet, build_tiny_flux, build_tiny_ip_adapter, build_tiny_sd3, build_tiny_sdxl

root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="imagegen-pinned-"))
models = {"sdxl": build_tiny_sdxl(root / "sdxl"), "sd3": build_tiny_sd3(root / "sd3"), "flux": build_tiny_flux(root / "flux")}
models["sd15"] = build_tiny("sd15", root / "sd15")  # pinned after the architecture change, with the family
rng = np.random.default_rng(0)
Image.fromarray((rng.random((48, 80, 3)) * 255).astype("uint8")).save(root / "input.png")
nets = {f: build_tiny_controlnet(root / f"cn-{f}", f) for f in ("sdxl", "sd3")}
ip = build_tiny_ip_adapter(root / "ip-flux", "flux")
CASES = {
    "sdxl": ["--model", models["sdxl"], "-s", "DPM++ 2M Karras", "--steps", "3", "--cfg", "4", "--negative", "blurry",
             "--size", "64x48"],
    "sd3": ["--model", models["sd3"], "-s", "Euler", "--steps", "3", "--cfg", "4", "--size", "64x64"],
    "flux": ["--model", models["flux"], "--steps", "2", "--size", "64x64"],
    "sd15": ["--model", models["sd15"], "-s", "Euler a", "--steps", "3", "--cfg", "5", "--negative", "blurry",
             "--size", "64x64"],
    "sdxl-controlnet": ["--model", models["sdxl"], "--steps", "2", "--size", "64x64", "--control",
                        f"canny:{root / 'input.png'}", "--controlnet-model", nets["sdxl"]],
    "sd3-controlnet": ["--model", models["sd3"], "--steps", "2", "--size", "64x64", "--control",
                       f"depth:{root / 'input.png'}", "--controlnet-model", nets["sd3"]],
    "flux-ip-adapter": ["--model", models["flux"], "--steps", "2", "--size", "64x64", "--ip-adapter", root / "input.png",
                        "--ip-adapter-model", ip, "--image-encoder", ip / "image_encoder"],
}
hashes = {}
for name, args in CASES.items():
    out = root / "out" / name
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(["txt2img", "a red fox in the snow", "--seed", "1234", "--out", str(out), "-q", "--json",
                     *[str(a) for a in args]])
    assert code == 0, (name, code)
    hashes[name] = json.loads(buf.getvalue())["images"][0]["pixels_sha256"]
print(json.dumps(hashes))
