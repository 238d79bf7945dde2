"""Seconds per image and peak VRAM of full-size SDXL and FLUX.1-schnell on one NVIDIA GPU, per speed/memory arm.

    python benchmarks/gpu.py [--only sdxl|flux] [--arms bf16,fbcache,offload,group,compile,fp8] [--budget-s 450]
                             [--floor-scale 1.0] [--out gpu-results.json]
    python benchmarks/gpu.py --tiny        # the same logic on CPU, tiny models, 64x64, 2 steps

Both pipelines are built on the GPU from the configs shipped in imagegen/configs (random bf16 weights, which cost
the same compute as real ones; offline byte-level tokenizers), so nothing is downloaded. At 1024x1024, batch 1,
SDXL runs 30 steps with CFG 5 and Flux-schnell 4 steps without CFG. Each arm reports the median of --runs timed
calls after one warm-up (its time is reported too: for compile it is the compile cost) and
torch.cuda.max_memory_allocated, reset per arm. One build serves all arms of a family, in this order:

- bf16: the plain pipeline;
- fbcache: First Block Cache (threshold 0.08) on the denoiser, where diffusers supports it (Flux), then disabled;
- offload: enable_model_cpu_offload, then the hooks are removed and the pipeline moved back;
- group: imagegen's --offload group (enable_group_offload, one block at a time, side stream), what --memory auto
  picks for Flux-dev on a 12 GiB card: its peak is checked against 12 GiB; then removed and moved back;
- compile: regional compilation (compile_repeated_blocks, fullgraph), else torch.compile of the whole denoiser;
- fp8: torchao float8 weight-only (e4m3) on the denoiser, on top of compile when that arm ran.

s/image is compared with the FLOP floor on an H100 (SDXL 0.42 s, Flux-schnell 0.29 s), times --floor-scale.
Results go to --out as JSON after every arm, so a run cut short still leaves what it measured.
Needs torch, diffusers and transformers where it runs; without torchao the fp8 arm is skipped with the reason.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the GPU machine runs the checkout without installing imagegen

CONFIGS = ROOT / "imagegen" / "configs"
PROMPT = "a photo of an astronaut riding a horse on the moon, detailed, golden hour"
ARMS = ("bf16", "fbcache", "offload", "group", "compile", "fp8")
FAMILIES = {
    "sdxl": {"folder": "stabilityai--stable-diffusion-xl-base-1.0", "denoiser": "unet", "floor_s": 0.42,
             "call": {"num_inference_steps": 30, "guidance_scale": 5.0}},
    "flux": {"folder": "black-forest-labs--FLUX.1-schnell", "denoiser": "transformer", "floor_s": 0.29,
             "call": {"num_inference_steps": 4, "guidance_scale": 0.0, "max_sequence_length": 256}},
}
# Seconds an arm needs besides its calls, to decide whether it still fits the budget (compile: tracing + inductor).
EXTRA_S = {"compile": 90.0, "fp8": 60.0, "offload": 10.0, "group": 10.0}
OFFLOAD_GB_S = 5.0  # pageable host<->GPU copies; offload moves every model in and out on each call


class Skip(Exception):
    """An arm that cannot run here; its message is the reason shown in the table."""


# ---- building


def tokenizer_for(cls_name: str, name: str):
    from imagegen.testing.parts import EOS, _clip_tokenizer, _t5_tokenizer

    if cls_name.startswith("T5"):
        return _t5_tokenizer()
    return _clip_tokenizer(pad_token="!" if name == "tokenizer_2" else EOS)  # SDXL's tokenizer_2 pads with "!"


def full_pipeline(family: str, device: str, dtype):
    """The family's full-size pipeline from its shipped configs, weights created directly on ``device``."""
    import importlib

    import diffusers
    import torch

    folder = CONFIGS / FAMILIES[family]["folder"]
    index = json.loads((folder / "model_index.json").read_text())
    parts = {}
    for name, spec in index.items():
        if name.startswith("_") or not isinstance(spec, list) or spec[0] is None:
            continue
        lib, cls_name = spec
        cls = getattr(importlib.import_module(lib), cls_name)
        if name.startswith("tokenizer"):
            parts[name] = tokenizer_for(cls_name, name)
        elif name == "scheduler":
            parts[name] = cls.from_config(cls.load_config(folder, subfolder=name))
        else:
            # fp32 init then cast, one module at a time: the peak is one module in fp32, never the whole pipeline.
            with torch.device(device):
                if lib == "diffusers":
                    module = cls.from_config(cls.load_config(folder, subfolder=name))
                else:
                    module = cls(cls.config_class.from_pretrained(folder / name))
            parts[name] = module.to(dtype).eval()  # eval: a fresh T5 has dropout on
    return getattr(diffusers, index["_class_name"])(**parts)


def tiny_pipeline(family: str, dtype):
    from imagegen.testing import TINY

    pipe = TINY[family](0)
    for module in pipe.components.values():
        if hasattr(module, "eval"):
            module.eval()
    return pipe.to(dtype=dtype)


def build(family: str, ctx: dict):
    """A fresh pipeline on ctx's device, its build time recorded in ctx."""
    import torch

    start = time.perf_counter()
    if ctx["tiny"]:
        pipe = tiny_pipeline(family, torch.bfloat16)
    else:
        pipe = full_pipeline(family, ctx["device"], torch.bfloat16)
    pipe.set_progress_bar_config(disable=True)
    sync(ctx)
    ctx["build_s"].setdefault(family, []).append(round(time.perf_counter() - start, 2))
    print(f"{family}: built in {ctx['build_s'][family][-1]:.1f} s", flush=True)
    return pipe


def check_full_configs() -> None:
    """Build both full-size pipelines on the meta device: the config path works and the sizes are the real ones."""
    import torch

    for family, spec in FAMILIES.items():
        pipe = full_pipeline(family, "meta", torch.bfloat16)
        sizes = {name: sum(p.numel() for p in m.parameters()) / 1e9
                 for name, m in pipe.components.items() if isinstance(m, torch.nn.Module)}
        print(f"{family} full-size build (meta): " + ", ".join(f"{n} {b:.2f} B" for n, b in sizes.items()))
        assert sizes[spec["denoiser"]] > 2.5, sizes  # SDXL UNet 2.57 B, Flux transformer 11.9 B


# ---- measuring


def sync(ctx: dict) -> None:
    import torch

    if ctx["cuda"]:
        torch.cuda.synchronize()


def one_image(pipe, family: str, ctx: dict) -> float:
    import torch

    call = {**FAMILIES[family]["call"], "height": ctx["size"], "width": ctx["size"]}
    if ctx["tiny"]:
        call["num_inference_steps"] = 2
    generator = torch.Generator(device=ctx["device"]).manual_seed(0)
    sync(ctx)
    start = time.perf_counter()
    pipe(PROMPT, generator=generator, **call)
    sync(ctx)
    return time.perf_counter() - start


def measure(pipe, family: str, ctx: dict) -> dict:
    """One warm-up call, then ctx['runs'] timed calls; peak memory counts from here (weights already resident)."""
    import torch

    if ctx["cuda"]:
        torch.cuda.reset_peak_memory_stats()
    warmup = one_image(pipe, family, ctx)
    runs = [one_image(pipe, family, ctx) for _ in range(ctx["runs"])]
    peak = torch.cuda.max_memory_allocated() / 2**30 if ctx["cuda"] else None
    return {"warmup_s": warmup, "runs_s": runs, "s_per_image": statistics.median(runs), "peak_gib": peak}


# ---- the arms: each takes the shared pipeline, runs measure(), and leaves the pipeline usable for the next arm


def arm_bf16(pipe, family: str, ctx: dict) -> dict:
    return measure(pipe, family, ctx)


def arm_fbcache(pipe, family: str, ctx: dict) -> dict:
    from diffusers.hooks import FirstBlockCacheConfig

    denoiser = getattr(pipe, FAMILIES[family]["denoiser"])
    if not hasattr(denoiser, "enable_cache"):
        raise Skip(f"{type(denoiser).__name__} has no enable_cache (diffusers' caches are for transformers)")
    denoiser.enable_cache(FirstBlockCacheConfig(threshold=0.08))
    try:
        result = measure(pipe, family, ctx)
    finally:
        denoiser.disable_cache()
    # Whether a step is skipped depends on the weights: random ones may never fall under the threshold.
    return {**result, "note": "threshold 0.08; skips depend on real weights"}


def arm_offload(pipe, family: str, ctx: dict) -> dict:
    import torch

    if not ctx["cuda"]:
        raise Skip("needs a GPU")
    pipe.to("cpu")
    torch.cuda.empty_cache()
    pipe.enable_model_cpu_offload()
    try:
        return measure(pipe, family, ctx)
    finally:
        # Moving back (seconds) is cheaper than rebuilding 12 B parameters for the arms after this one.
        pipe.remove_all_hooks()
        pipe.to(ctx["device"])


def arm_group(pipe, family: str, ctx: dict) -> dict:
    """imagegen's own placement (imagegen.runtime.place) with --offload group."""
    import torch

    from imagegen.runtime import LoadOptions, place

    pipe.to("cpu")
    if ctx["cuda"]:
        torch.cuda.empty_cache()
    place(pipe, LoadOptions(offload="group"), ctx["device"])
    try:
        result = measure(pipe, family, ctx)
    finally:
        for module in pipe.components.values():
            registry = getattr(module, "_diffusers_hook", None)
            for name in ("group_offloading", "layer_execution_tracker", "lazy_prefetch_group_offloading"):
                if registry is not None and registry.get_hook(name) is not None:
                    registry.remove_hook(name, recurse=True)
        pipe.to(ctx["device"])
    fits = result["peak_gib"] is not None and result["peak_gib"] <= 12
    return {**result, "note": f"--memory auto's plan for Flux-dev at 12 GiB: {'fits' if fits else 'over'} 12 GiB"
            if ctx["cuda"] else "hooks only on the CPU"}


def arm_compile(pipe, family: str, ctx: dict) -> dict:
    denoiser = getattr(pipe, FAMILIES[family]["denoiser"])
    kwargs = {"fullgraph": True}
    if ctx["tiny"]:
        kwargs["backend"] = "eager"  # dynamo's tracing (and fullgraph's graph-break check) without inductor's C++ build
    if getattr(denoiser, "_repeated_blocks", None):
        denoiser.compile_repeated_blocks(**kwargs)
        how = f"regional: {', '.join(denoiser._repeated_blocks)}"
    else:
        denoiser.compile(**kwargs)
        how = "whole denoiser"
    ctx["compiled"].add(family)
    note = how + (", backend eager" if ctx["tiny"] else "")
    return {**measure(pipe, family, ctx), "note": note + "; warm-up = compile"}


def arm_fp8(pipe, family: str, ctx: dict) -> dict:
    import torch

    try:
        import torchao
        from torchao import quantization
    except ImportError:
        raise Skip("torchao is not installed") from None
    if ctx["cuda"] and torch.cuda.get_device_capability() < (8, 9):
        raise Skip(f"no fp8 on compute capability {torch.cuda.get_device_capability()} (needs 8.9+)")
    if hasattr(quantization, "Float8WeightOnlyConfig"):
        # set_inductor_config=True turns on coordinate-descent tuning: minutes of extra compile for the budget.
        config = quantization.Float8WeightOnlyConfig(set_inductor_config=False)
    else:
        config = quantization.float8_weight_only()
    quantization.quantize_(getattr(pipe, FAMILIES[family]["denoiser"]), config)
    stacked = family in ctx["compiled"]
    note = f"torchao {torchao.__version__} float8 e4m3 weight-only" + (" + compile" if stacked else "")
    return {**measure(pipe, family, ctx), "note": note, "arm": "fp8+compile" if stacked else "fp8"}


ARM_FUNCS = {"bf16": arm_bf16, "fbcache": arm_fbcache, "offload": arm_offload, "group": arm_group,
             "compile": arm_compile, "fp8": arm_fp8}
MUTATING = {"compile", "fp8", "offload", "group"}  # a failure there can leave the pipeline half changed: rebuild after it


def run_family(family: str, arms: list[str], ctx: dict) -> None:
    """Every selected arm of one family on one build; a failed arm is recorded and the rest go on."""
    pipe = None
    for arm in arms:
        row = {"family": family, "arm": arm}
        left = ctx["deadline"] - time.monotonic()
        if pipe is None and left > 0:
            try:
                pipe = build(family, ctx)
            except Exception as e:  # noqa: BLE001 - report it, measure the other family
                record(ctx, {**row, "error": f"build failed: {type(e).__name__}: {e}"})
                return
            left = ctx["deadline"] - time.monotonic()
        need = estimate_s(arm, family, pipe, ctx)
        if left < need or left <= 0:
            record(ctx, {**row, "skipped": f"time budget: {left:.0f} s left, about {need:.0f} s needed"})
            continue
        try:
            result = ARM_FUNCS[arm](pipe, family, ctx)
        except Skip as e:
            result = {"skipped": str(e)}
        except Exception as e:  # noqa: BLE001 - one arm's failure (OOM, graph break) must not end the run
            result = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
        if "s_per_image" in result:
            ctx["image_s"].setdefault(family, result["s_per_image"])
        record(ctx, {**row, **result})
        if "error" in result and arm in MUTATING:
            pipe = None  # dropped outside the except block, whose traceback still held it
            release(ctx)
    pipe = None
    release(ctx)


def estimate_s(arm: str, family: str, pipe, ctx: dict) -> float:
    """About how long `arm` will take, from the family's first measured s/image (0 before the first arm)."""
    per_call = ctx["image_s"].get(family, 0.0)
    if arm in ("offload", "group") and pipe is not None:
        gb = sum(p.numel() * p.element_size() for m in pipe.components.values() if hasattr(m, "parameters")
                 for p in m.parameters()) / 1e9
        per_call += 2 * gb / OFFLOAD_GB_S
    return (ctx["runs"] + 1) * per_call + EXTRA_S.get(arm, 0.0)


def release(ctx: dict) -> None:
    """Free what a dropped pipeline held, compiled graphs included."""
    import torch

    gc.collect()
    torch._dynamo.reset()
    if ctx["cuda"]:
        torch.cuda.empty_cache()


# ---- reporting


def record(ctx: dict, row: dict) -> None:
    family = FAMILIES[row["family"]]
    if row.get("s_per_image") is not None and not ctx["tiny"]:
        row["floor_s"] = family["floor_s"] * ctx["floor_scale"]
        row["x_floor"] = row["s_per_image"] / row["floor_s"]
    ctx["results"].append(row)
    print(format_row(row), flush=True)
    ctx["out"].write_text(json.dumps({**ctx["env"], "build_s": ctx["build_s"], "results": ctx["results"]}, indent=2))


def fmt(value, spec: str) -> str:
    return format("-", ">" + spec.split(".")[0]) if value is None else format(value, spec)


HEADER = f"{'family':6} {'arm':12} {'s/image':>8} {'warm-up s':>9} {'peak GiB':>8} {'x floor':>7}  note"


def format_row(row: dict) -> str:
    note = row.get("note", "")
    if "skipped" in row:
        note = "skipped: " + row["skipped"]
    elif "error" in row:
        note = "FAILED: " + row["error"]
    return (f"{row['family']:6} {row['arm']:12} {fmt(row.get('s_per_image'), '8.3f')} "
            f"{fmt(row.get('warmup_s'), '9.2f')} {fmt(row.get('peak_gib'), '8.2f')} "
            f"{fmt(row.get('x_floor'), '7.2f')}  {note}")


def environment(ctx: dict) -> dict:
    import diffusers
    import torch
    import transformers

    env = {"tiny": ctx["tiny"], "size": ctx["size"], "runs": ctx["runs"], "floor_scale": ctx["floor_scale"],
           "torch": torch.__version__, "diffusers": diffusers.__version__, "transformers": transformers.__version__}
    if ctx["cuda"]:
        env["gpu"] = torch.cuda.get_device_name()
        env["capability"] = list(torch.cuda.get_device_capability())
    return env


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", choices=sorted(FAMILIES), help="one family (default: both)")
    p.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, run in the order {','.join(ARMS)}")
    p.add_argument("--runs", type=int, default=3, help="timed calls per arm after the warm-up")
    p.add_argument("--budget-s", type=float, default=450.0, help="arms that would start past this are skipped")
    p.add_argument("--floor-scale", type=float, default=1.0, help="H100 FLOP floors times this (other GPUs)")
    p.add_argument("--out", type=Path, default=Path("gpu-results.json"))
    p.add_argument("--tiny", action="store_true", help="tiny models on CPU at 64x64, 2 steps: tests the logic")
    args = p.parse_args()
    arms = [a for a in ARMS if a in args.arms.split(",")]
    unknown = set(args.arms.split(",")) - set(ARMS)
    if unknown:
        p.error(f"unknown arms {sorted(unknown)}; choose from {','.join(ARMS)}")

    import torch
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    # Quiet the per-module "should be kept in float32: []" notes from casting to bf16; errors still show.
    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    cuda = not args.tiny and torch.cuda.is_available()
    if not args.tiny and not cuda:
        p.error("no CUDA GPU found; use --tiny to check the script on CPU")
    start = time.monotonic()
    ctx = {"tiny": args.tiny, "cuda": cuda, "device": "cuda" if cuda else "cpu", "size": 64 if args.tiny else 1024,
           "runs": args.runs, "floor_scale": args.floor_scale, "deadline": start + args.budget_s, "out": args.out,
           "results": [], "build_s": {}, "image_s": {}, "compiled": set()}
    ctx["env"] = environment(ctx)
    print(json.dumps(ctx["env"]), flush=True)
    if args.tiny:
        check_full_configs()
    print(HEADER, flush=True)
    for family in [args.only] if args.only else list(FAMILIES):
        run_family(family, arms, ctx)
    total = time.monotonic() - start
    print(f"\n{HEADER}\n" + "\n".join(format_row(r) for r in ctx["results"]))
    print(f"total {total:.0f} s; floors (s/image): sdxl {0.42 * args.floor_scale:.2f}, "
          f"flux {0.29 * args.floor_scale:.2f}; results in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
