"""The memory and speed settings on the CPU, against plain diffusers, each arm in its own fresh process.

    python benchmarks/runtime_cpu.py [--repeats 2] [--json OUT.json] [--only sdxl,flux,vae]

Arms are interleaved over --repeats rounds; medians are reported, with ratios against the plain baseline of the same
run. Peak RSS is the arm process's ru_maxrss (the parent never imports torch: Linux carries a parent's peak across
fork and exec); RSS end (and its anonymous part) is read after generating, with the model still held. Weights load
memory-mapped: their pages count once touched, as clean file pages. Seconds per image time the generation call only
(prompt encoding, denoising, decoding); loading is reported apart.

- int8 (--quantize int8): the reduced SDXL of batch_speed.py (an SDXL-layout UNet at 128/256/512 channels, random
  weights, about 476 MB in float32) at --size with --steps, Euler, CFG 5, seed 1: plain diffusers
  (`StableDiffusionXLPipeline.from_pretrained(folder, dtype=float32)` and one call), imagegen float32 and imagegen
  --quantize int8 (`imagegen.generate` on the CPU in float32: resolve, load_model, the session's call). Also the mean
  absolute pixel difference (0-255) of int8 from float32 and of imagegen float32 from plain diffusers.
- First Block Cache (--cache): the tiny random-weight Flux of imagegen.testing at 256x256, --flux-steps steps, seed 1,
  through `imagegen.generate` with --cache none and each of --caches (applied by imagegen.runtime.apply). Forward
  pre-hooks on the attention of every transformer_blocks / single_transformer_blocks block count the blocks that ran
  (a skipped block returns its cached output without running its attention), as tests/test_runtime.py does. Each arm
  generates twice with the pipeline loaded once and reports the second, warm call, on one thread (a tiny model's
  many small parallel regions ran up to 20x slower on 2 threads while another process held a core).
- VAE tiling (--vae-tiling on): a decode of 1x4xS/8xS/8 latents (S = --vae-size, 1024 by default) by an SDXL-layout
  AutoencoderKL built in code with random weights: 4 blocks, layers_per_block 2, latent_channels 4, scaling 0.13025;
  widths --vae-channels and tile size --vae-sample-size. Arms: diffusers untiled, diffusers after enable_tiling(), and
  imagegen's path (imagegen.runtime.apply with vae_tiling on, then the CPU kernels imagegen.loading gives a loaded
  pipeline). SDXL's real VAE (128,256,512,512 and sample_size 1024) takes about 3.5 min per 1024x1024 decode on 2
  cores, and with sample_size 1024 a 128x128 latent is one tile (diffusers tiles only latents above
  tile_latent_min_size = 128), so --vae-tiling on changes nothing for SDXL at 1024x1024. The defaults keep the layout at
  a quarter of the widths and take SD 1.5's VAE sample_size, 512 px tiles, so that tiling engages at 1024x1024.

Defaults: SDXL 384x384, 2 steps; Flux 256x256, 20 steps; VAE 1024x1024; 2 rounds: about 9 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

PROMPT = "a red fox in a snowy forest"
SDXL_ARMS = ("plain", "none", "int8")  # plain diffusers, imagegen float32, imagegen --quantize int8
VAE_ARMS = ("untiled", "tiled", "imagegen")
SECTIONS = ("sdxl", "flux", "vae")


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_now() -> dict:
    """The resident set now (VmRSS, and its anonymous and file-backed parts), to tell memory still held from a
    passing peak."""
    keys = {"VmRSS:": "rss_end_mb", "RssAnon:": "rss_anon_mb", "RssFile:": "rss_file_mb"}
    rows = [line.split() for line in Path("/proc/self/status").read_text().splitlines()]
    return {keys[row[0]]: int(row[1]) / 1024 for row in rows if row and row[0] in keys}


# ---- the arms, each run in a child process; each prints one JSON line


def build(root: str) -> dict:
    from batch_speed import build_reduced_sdxl

    from imagegen.testing import build_tiny_flux

    sdxl = build_reduced_sdxl(Path(root) / "reduced-sdxl")
    unet_mb = sum(f.stat().st_size for f in (sdxl / "unet").iterdir()) / 2**20
    return {"sdxl": str(sdxl), "flux": str(build_tiny_flux(Path(root) / "tiny-flux")), "unet_mb": unet_mb}


class _Marks:
    """An imagegen progress reporter that only notes when generation starts (the model loaded) and finishes."""

    def __init__(self):
        from imagegen.progress import NullProgress

        self.inner, self.marks = NullProgress(), {}

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def start(self, total: int, steps: int) -> None:
        self.marks.update(started=time.perf_counter(), loaded_peak_mb=peak_mb())

    def finish(self) -> None:
        self.marks["finished"] = time.perf_counter()


def run_imagegen(out: str, **fields) -> dict:
    """One image through imagegen.generate on the CPU in float32, timed between load and the last image."""
    import imagegen

    marks = _Marks()
    begun = time.perf_counter()
    result = imagegen.generate(PROMPT, seed=1, device="cpu", dtype="float32", save=False, progress=marks, **fields)
    result.images[0].image.save(out)
    m = marks.marks
    return {"load_s": m["started"] - begun, "gen_s": m["finished"] - m["started"], **rss_now(),
            "loaded_peak_mb": m["loaded_peak_mb"], "runtime": result.images[0].record.get("runtime", {})}


def arm_sdxl(arm: str, folder: str, size: int, steps: int, out: str) -> dict:
    import torch  # with diffusers' pipeline class: imported before either arm's clock starts
    from diffusers import StableDiffusionXLPipeline

    if arm != "plain":
        from imagegen.loading import _LOADED

        res = run_imagegen(out, model=folder, steps=steps, size=f"{size}x{size}", cfg=5.0, scheduler="Euler",
                           quantize=arm)
        unet = next(iter(_LOADED.values())).pipe.unet
        weight = unet.down_blocks[1].attentions[0].proj_in.weight
        linear = sum(m.weight.numel() for m in unet.modules() if isinstance(m, torch.nn.Linear))
        return {**res, "weight_type": f"{type(weight).__module__}.{type(weight).__name__}",
                "quantize": res["runtime"].get("quantize"),
                "linear_share": linear / sum(p.numel() for p in unet.parameters())}
    begun = time.perf_counter()
    pipe = StableDiffusionXLPipeline.from_pretrained(folder, dtype=torch.float32, use_safetensors=True)
    pipe.set_progress_bar_config(disable=True)
    loaded, loaded_peak = time.perf_counter(), peak_mb()
    image = pipe(PROMPT, num_inference_steps=steps, guidance_scale=5.0, width=size, height=size,
                 generator=torch.Generator("cpu").manual_seed(1)).images[0]
    gen = time.perf_counter() - loaded
    image.save(out)
    return {"load_s": loaded - begun, "gen_s": gen, "loaded_peak_mb": loaded_peak, **rss_now()}


def arm_flux(arm: str, folder: str, size: int, steps: int, out: str) -> dict:
    import torch

    from imagegen import loading

    torch.set_num_threads(1)  # see the module docstring

    calls, blocks = [0], []
    real = loading.apply_options

    def hooked(pipe, family, options):  # imagegen's own apply (the cache hooks), then the counting hooks
        real(pipe, family, options)
        found = [*pipe.transformer.transformer_blocks, *pipe.transformer.single_transformer_blocks]
        blocks.extend(found)
        for block in found:  # a block's attention runs only when the block computes
            block.attn.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))

    loading.apply_options = hooked
    fields = {"model": folder, "steps": steps, "size": f"{size}x{size}", "cache": arm}
    cold = run_imagegen(out, **fields)  # a first call pays one-time warm-up, large next to a tiny model's work
    calls[0] = 0
    res = run_imagegen(out, **fields)  # the loaded pipeline again (its cache state is reset after every call)
    assert blocks, "no transformer blocks hooked: imagegen.loading.apply_options was not called"
    return {**res, "load_s": cold["load_s"], "cold_gen_s": cold["gen_s"], "block_calls": calls[0],
            "blocks": len(blocks), "uncached_calls": steps * len(blocks),
            "cache": res["runtime"].get("cache")}


def make_vae(channels: list[int], sample_size: int):
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * len(channels),
                         up_block_types=["UpDecoderBlock2D"] * len(channels), block_out_channels=channels,
                         layers_per_block=2, latent_channels=4, norm_num_groups=32, sample_size=sample_size,
                         scaling_factor=0.13025, force_upcast=True).eval()


def arm_vae(arm: str, size: int, channels: list[int], sample_size: int, out: str) -> dict:
    import numpy as np
    import torch
    from PIL import Image

    vae = make_vae(channels, sample_size)
    if arm == "tiled":
        vae.enable_tiling()
    elif arm == "imagegen":
        from types import SimpleNamespace

        from imagegen.families import FAMILIES
        from imagegen.loading import make_invariant
        from imagegen.runtime import LoadOptions, apply

        pipe = SimpleNamespace(vae=vae, components={"vae": vae})
        apply(pipe, FAMILIES["sdxl"], LoadOptions(vae_tiling="on"))
        assert vae.use_tiling, "imagegen.runtime.apply left vae.use_tiling off"
        make_invariant(pipe, "cpu")  # what load_model gives every module of a pipeline on the CPU
    latents = torch.randn(1, 4, size // 8, size // 8, generator=torch.Generator("cpu").manual_seed(0))
    tiles = vae.use_tiling and latents.shape[-1] > vae.tile_latent_min_size
    before, begun = peak_mb(), time.perf_counter()
    with torch.no_grad():
        sample = vae.decode(latents).sample
    decode_s = time.perf_counter() - begun
    pixels = (sample[0].permute(1, 2, 0) / 2 + 0.5).clamp(0, 1).mul(255).round().to(torch.uint8).numpy()
    Image.fromarray(np.ascontiguousarray(pixels)).save(out)
    with torch.device("meta"):  # SDXL's own VAE config, to read where diffusers starts tiling it (no weights)
        sdxl_tile = make_vae([128, 256, 512, 512], 1024).tile_latent_min_size
    return {"gen_s": decode_s, "before_mb": before, "peak_at_decode_mb": peak_mb(), **rss_now(), "tiled": bool(tiles),
            "tile_latent": vae.tile_latent_min_size, "sdxl_tile_latent": sdxl_tile}


def child(spec: dict) -> dict:
    section = spec.pop("section")
    fn = {"sdxl": arm_sdxl, "flux": arm_flux, "vae": arm_vae}[section]
    result = fn(**spec)
    return {**result, "peak_mb": peak_mb()}  # each arm reads RSS now while its model is still held


def run_child(flag: str, payload: str) -> dict:
    proc = subprocess.run([sys.executable, __file__, flag, payload], check=False, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{flag} {payload} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---- the parent: rounds, pixel differences, medians, the table


def mean_diff(a: str, b: str) -> float:
    import numpy as np
    from PIL import Image

    x, y = (np.asarray(Image.open(p).convert("RGB"), dtype=np.float64) for p in (a, b))
    return float(np.abs(x - y).mean())


def plan(args, folders: dict) -> list[tuple[str, str, dict]]:
    """(section, arm, spec without out) for one round, in order."""
    arms = []
    if "sdxl" in args.only:
        arms += [("sdxl", a, {"folder": folders["sdxl"], "size": args.size, "steps": args.steps}) for a in SDXL_ARMS]
    if "flux" in args.only:
        caches = ["none", *[c for c in args.caches.split(",") if c and c != "none"]]
        arms += [("flux", c, {"folder": folders["flux"], "size": 256, "steps": args.flux_steps}) for c in caches]
    if "vae" in args.only:
        channels = [int(c) for c in args.vae_channels.split(",")]
        arms += [("vae", a, {"size": args.vae_size, "channels": channels, "sample_size": args.vae_sample_size})
                 for a in VAE_ARMS]
    return arms


def measure(args, folders: dict, work: Path) -> dict:
    """Every arm once per round; each arm's runs (with their pixel differences from the reference arm's image)."""
    refs = {"sdxl": "none", "flux": "none", "vae": "untiled"}
    runs: dict[tuple[str, str], list[dict]] = {}
    for rnd in range(args.repeats):
        images = {}
        for section, arm, spec in plan(args, folders):
            out = str(work / f"{section}-{arm.replace(':', '_')}-{rnd}.png")
            started = time.perf_counter()
            result = run_child("--arm", json.dumps({**spec, "section": section, "arm": arm, "out": out}))
            result["wall_s"] = time.perf_counter() - started
            images[(section, arm)] = out
            runs.setdefault((section, arm), []).append(result)
            print(f"  round {rnd + 1}/{args.repeats} {section:4} {arm:12} peak {result['peak_mb']:6.0f} MB  "
                  f"gen {result['gen_s']:7.2f} s  (process {result['wall_s']:.0f} s)", flush=True)
        for (section, arm), out in images.items():
            ref = images.get((section, refs[section]))
            runs[(section, arm)][-1]["diff"] = mean_diff(out, ref) if ref else float("nan")
            if section == "sdxl" and arm == "none" and (section, "plain") in images:
                runs[(section, arm)][-1]["diff_plain"] = mean_diff(out, images[("sdxl", "plain")])
    return runs


def summarize(runs: dict) -> dict:
    """Median of every numeric figure per arm, and ratios against each section's baseline."""
    med: dict[str, dict] = {}
    for (section, arm), results in runs.items():
        keys = [k for k, v in results[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
        row = {k: statistics.median(r[k] for r in results) for k in keys}
        row.update({k: v for k, v in results[-1].items() if k not in row})
        med[f"{section}:{arm}"] = row
    for section, base in (("sdxl", "plain"), ("flux", "none"), ("vae", "untiled")):
        if f"{section}:{base}" not in med:
            continue
        b = med[f"{section}:{base}"]
        for key, row in med.items():
            if key.startswith(section + ":"):
                row["ratio_gen"] = row["gen_s"] / b["gen_s"]
                row["ratio_peak"] = row["peak_mb"] / b["peak_mb"]
                if section == "vae":
                    row["ratio_decode_mb"] = (row["peak_at_decode_mb"] - row["before_mb"]) / max(
                        b["peak_at_decode_mb"] - b["before_mb"], 1e-9)
    return med


def table_sdxl(args, med: dict, folders: dict) -> list[str]:
    lines = [(f"int8 weight-only: reduced SDXL (UNet {folders['unet_mb']:.0f} MB float32, random weights), "
              f"{args.size}x{args.size}, {args.steps} steps, Euler, CFG 5, seed 1, 1 image"),
             (f"  {'arm':24} {'peak MB':>8} {'after load':>10} {'RSS end':>8} {'anon':>6} {'load s':>7} "
              f"{'s/image':>8} {'x plain':>8} {'peak x':>7} {'diff':>7}")]
    names = {"plain": "plain diffusers", "none": "imagegen float32", "int8": "imagegen --quantize int8"}
    for arm in SDXL_ARMS:
        r = med.get(f"sdxl:{arm}")
        if r:
            lines.append(f"  {names[arm]:24} {r['peak_mb']:8.0f} {r['loaded_peak_mb']:10.0f} {r['rss_end_mb']:8.0f} "
                         f"{r['rss_anon_mb']:6.0f} {r['load_s']:7.1f} {r['gen_s']:8.2f} {r['ratio_gen']:8.2f} "
                         f"{r['ratio_peak']:7.2f} {r.get('diff', float('nan')):7.3f}")
    if "sdxl:int8" in med and "sdxl:none" in med:
        i8, f32 = med["sdxl:int8"], med["sdxl:none"]
        lines += [(f"  int8 / float32: s/image {i8['gen_s'] / f32['gen_s']:.2f}, peak RSS "
                   f"{i8['peak_mb'] / f32['peak_mb']:.2f}, RSS at end {i8['rss_end_mb'] / f32['rss_end_mb']:.2f}, "
                   f"load {i8['load_s'] / f32['load_s']:.2f}; mean |int8 - float32| = {i8['diff']:.3f}/255 "
                   f"(imagegen float32 vs plain: {f32.get('diff_plain', float('nan')):.4f}/255)"),
                  (f"  UNet weights in Linear layers (what int8 quantizes): {100 * i8['linear_share']:.0f}%; "
                   f"a quantized weight is a {i8.get('weight_type')}")]
    return lines


def table_flux(args, med: dict) -> list[str]:
    lines = [f"First Block Cache: tiny Flux (random weights), 256x256, {args.flux_steps} steps, seed 1, 1 thread",
             (f"  {'--cache':14} {'block calls':>11} {'uncached':>8} {'ratio':>6} {'s/image':>8} {'x none':>7} "
              f"{'1st call s':>10} {'peak MB':>8} {'diff':>7}")]
    for key, r in med.items():
        if key.startswith("flux:"):
            lines.append(f"  {key[5:]:14} {r['block_calls']:11.0f} {r['uncached_calls']:8.0f} "
                         f"{r['block_calls'] / r['uncached_calls']:6.2f} {r['gen_s']:8.3f} {r['ratio_gen']:7.2f} "
                         f"{r['cold_gen_s']:10.2f} {r['peak_mb']:8.0f} {r['diff']:7.3f}")
    return lines


def table_vae(args, med: dict) -> list[str]:
    lines = [(f"VAE tiling: decode of 1x4x{args.vae_size // 8}x{args.vae_size // 8} latents -> "
              f"{args.vae_size}x{args.vae_size}, SDXL-layout AutoencoderKL, channels {args.vae_channels}, "
              f"sample_size {args.vae_sample_size} (random weights)"),
             (f"  {'arm':30} {'tiles':>5} {'peak MB':>8} {'decode MB':>9} {'x untiled':>9} {'decode s':>9} "
              f"{'x untiled':>9} {'diff':>7}")]
    names = {"untiled": "diffusers, untiled", "tiled": "diffusers, enable_tiling()",
             "imagegen": "imagegen --vae-tiling on"}
    for arm in VAE_ARMS:
        r = med.get(f"vae:{arm}")
        if r:
            lines.append(f"  {names[arm]:30} {'yes' if r['tiled'] else 'no':>5} {r['peak_mb']:8.0f} "
                         f"{r['peak_at_decode_mb'] - r['before_mb']:9.0f} {r['ratio_decode_mb']:9.2f} "
                         f"{r['gen_s']:9.2f} {r['ratio_gen']:9.2f} {r['diff']:7.3f}")
    tile, edge = med["vae:untiled"]["tile_latent"], med["vae:untiled"]["sdxl_tile_latent"]
    return [*lines, f"  decode MB: the peak during the decode over the peak before it; tiles of {tile * 8:.0f} px",
            (f"  SDXL's own VAE config (sample_size 1024) tiles only latents above {edge:.0f}, images above "
             f"{edge * 8:.0f} px: there --vae-tiling on leaves 1024x1024 as it is")]


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=2, help="rounds; every arm runs once per round (default 2)")
    p.add_argument("--json", help="write the runs and medians here")
    p.add_argument("--only", default=",".join(SECTIONS), help="sections to run: sdxl,flux,vae")
    p.add_argument("--size", type=int, default=384, help="SDXL image side (default 384)")
    p.add_argument("--steps", type=int, default=2, help="SDXL steps (default 2)")
    p.add_argument("--flux-steps", type=int, default=20, help="tiny Flux steps (default 20)")
    p.add_argument("--caches", default="fbcache,fbcache:0.2", help="--cache values besides none")
    p.add_argument("--vae-size", type=int, default=1024, help="decoded image side (default 1024)")
    p.add_argument("--vae-channels", default="32,64,128,128", help="block_out_channels (SDXL's: 128,256,512,512)")
    p.add_argument("--vae-sample-size", type=int, default=512, help="VAE sample_size, the tile (SDXL's: 1024)")
    p.add_argument("--arm", help=argparse.SUPPRESS)
    p.add_argument("--build", help=argparse.SUPPRESS)
    args = p.parse_args()
    args.only = [s for s in args.only.split(",") if s]
    unknown = set(args.only) - set(SECTIONS)
    if unknown:
        p.error(f"--only: unknown section(s) {', '.join(sorted(unknown))}; choose from {', '.join(SECTIONS)}")
    return args


def main() -> int:
    args = parse_args()
    if args.arm or args.build:
        print(json.dumps(child(json.loads(args.arm)) if args.arm else build(args.build)))
        return 0
    started, load_before = time.perf_counter(), os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="imagegen-runtime-") as tmp:
        work = Path(tmp)
        # Built in a child: the arms must be started by a parent that never held the weights.
        folders = run_child("--build", tmp) if {"sdxl", "flux"} & set(args.only) else {}
        print(f"{os.cpu_count()} CPUs, load average {load_before:.2f}; sections {', '.join(args.only)}, "
              f"{args.repeats} round(s)", flush=True)
        runs = measure(args, folders, work)
    med = summarize(runs)
    lines = [*(table_sdxl(args, med, folders) + [""] if "sdxl:plain" in med else []),
             *(table_flux(args, med) + [""] if "flux:none" in med else []),
             *(table_vae(args, med) + [""] if "vae:untiled" in med else [])]
    elapsed, load_after = time.perf_counter() - started, os.getloadavg()[0]
    lines += [(f"medians of {args.repeats} round(s); diff: mean |pixel difference| (0-255) from the section's "
                   f"reference (imagegen float32, --cache none, untiled); {elapsed / 60:.1f} min in all, load average "
                   f"{load_before:.2f} -> {load_after:.2f}")]
    print("\n" + "\n".join(lines))
    if args.json:
        data = {"args": {k: v for k, v in vars(args).items() if k not in ("arm", "build", "json")},
                "cpus": os.cpu_count(), "load_average": [load_before, load_after], "elapsed_s": elapsed,
                "medians": med, "runs": {f"{s}:{a}": r for (s, a), r in runs.items()}}
        Path(args.json).write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
