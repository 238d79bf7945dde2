"""`imagegen plan`: the memory plan for a model at a size and batch, and the fastest way of running it that fits the
VRAM, without loading anything. It calls imagegen.memory (estimate, then choose) once and renders the result: a
table, or one JSON object with --json."""

from __future__ import annotations

import json
import math
import sys
from typing import Annotated, Optional

import typer

from ..errors import RunError, UsageError
from .app import app
from .listing import _print_table
from .options import Debug, Json

MODEL = "Model"


@app.command()
def plan(
    preset: Annotated[Optional[str], typer.Option("--preset", "-p", metavar="TEXT", rich_help_panel=MODEL,
                                                  help="Preset name or .toml path; its model and defaults.")] = None,
    model: Annotated[Optional[str], typer.Option("--model", "-m", metavar="TEXT", rich_help_panel=MODEL,
                                                 help="A .safetensors file, a diffusers folder or a hub repo id "
                                                 "(its weights' headers where on disk, else its configs).")] = None,
    size: Annotated[Optional[str], typer.Option("--size", metavar="WxH",
                                                help="Image size, e.g. 1024x768. Default: the preset's.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", metavar="INT", min=1, max=1024,
                                            help="Images per pipeline call.")] = 1,
    vram: Annotated[Optional[float], typer.Option("--vram", metavar="GB", help="GPU memory to plan for, in GB as "
                                                  "cards count them (24 = 24 GiB). Default: the free memory of "
                                                  "the CUDA GPU.")] = None,
    dtype: Annotated[Optional[str], typer.Option("--dtype", metavar="TEXT", help="float16, bfloat16 or float32. "
                                                 "Default: the preset's.")] = None,
    cfg: Annotated[Optional[float], typer.Option("--cfg", metavar="FLOAT", help="CFG scale: above 1, classic CFG "
                                                 "doubles the denoiser's batch. Default: the preset's.")] = None,
    json_: Json = False, debug: Debug = False,
) -> None:
    """What will run, and how: each component's size in each dtype and quantization, the activations at this size
    and batch, and the fastest of none, VAE tiling, model offload, int8, group offload, nf4 and sequential offload
    whose estimated peak fits the VRAM. Nothing is loaded."""
    from ..fields import parse_dtype, parse_size
    from ..memory import choose, estimate

    if not (preset or model):
        raise UsageError("plan: give --preset NAME or --model FILE|DIR|REPO (see: imagegen presets list)")
    wanted, chosen_dtype = _parsed("--size", parse_size, size), _parsed("--dtype", parse_dtype, dtype)
    budget, origin = _vram(vram)
    est = estimate(model or preset, wanted, batch_size, chosen_dtype, cfg=cfg, preset=preset if model else None)
    result = choose(est.components, est.activations, budget)
    if json_:
        sys.stdout.write(json.dumps(plan_json(est, result, origin)) + "\n")
    else:
        _render(est, result, origin)
    if result.chosen is None:
        last = result.steps[-1]
        raise RunError(f"nothing fits in {_gib(budget)}: the last step, {last.step}, peaks at {_gib(last.peak)}; "
                       f"lower --size or --batch-size")


def _parsed(flag: str, parse, value):
    """A flag's value parsed by the request field's own parser; None when not given."""
    try:
        return parse(value) if value is not None else None
    except ValueError as exc:
        raise UsageError(f"{flag}: {exc}") from None


def _vram(vram: float | None) -> tuple[int, str]:
    """The VRAM to plan for, in bytes, and where it came from: --vram, else the CUDA GPU's free memory."""
    from ..memory import GiB, device_vram

    if vram is not None:
        if not math.isfinite(vram) or vram <= 0:
            raise UsageError(f"--vram: must be a positive number of GB, got {vram:g}")
        return int(vram * GiB), "--vram"
    free = device_vram()
    if free is None:
        raise UsageError("plan: no CUDA GPU here to read free memory from; give the memory to plan for with --vram GB "
                         "(e.g. --vram 12)")
    return free, "free on the CUDA GPU"


def plan_json(est, result, origin: str) -> dict:
    """The plan as one JSON object: components, activations, every step considered, the chosen one."""
    from ..memory import STEP_NOTES

    act = est.activations
    return {
        "model": est.name, "path": est.model, "family": est.family.name, "size": f"{est.size[0]}x{est.size[1]}",
        "batch_size": est.batch, "dtype": est.dtype, "cfg": est.cfg, "vram": result.vram, "vram_source": origin,
        "components": [{"name": c.name, "role": c.role, "source": c.source, "parameters": c.parameters,
                        "bytes": c.sizes(), "runtime_bytes": c.bytes(), "largest_block_parameters": c.largest_block,
                        "outside_blocks_parameters": c.outside_blocks, "largest_layer_parameters": c.largest_layer}
                       for c in est.components],
        "activations": {"denoiser": act.denoiser, "vae_decode": act.decode, "vae_decode_tiled": act.decode_tiled,
                        "denoiser_batch": act.batch, "tokens": act.tokens, "width": act.width,
                        "value_bytes": act.value_bytes, "factor": act.factor, "vae_tile": act.tile},
        "steps": [{"step": s.step, "peak": s.peak, "fits": s.fits, "how": STEP_NOTES[s.step]} for s in result.steps],
        "quantized": result.quantized, "chosen": result.chosen,
    }


def _render(est, result, origin: str) -> None:
    from .models import _count

    act = est.activations
    where = f" ({est.model})" if est.model and est.model != est.name else ""
    sys.stdout.write(f"{est.name}{where}: {est.family.label}, {est.size[0]}x{est.size[1]}, batch {est.batch}, "
                     f"{est.dtype}, CFG {est.cfg:g}\nVRAM: {_gib(result.vram)} ({origin})\n\n")
    _print_table(["component", "source", "parameters", "stored", "fp32", "bf16/fp16", "int8", "fp8", "nf4", "int4"],
                 [[c.name, c.source, _count(c.parameters), _gib(c.stored) if c.stored is not None else "-",
                   *(_gib(c.bytes(k)) for k in ("fp32", "bf16", "int8", "fp8", "nf4", "int4"))]
                  for c in est.components])
    sys.stdout.write(f"\nactivations: denoiser {_gib(act.denoiser)} ({act.batch} x {act.tokens} tokens x "
                     f"{act.width} wide x {act.value_bytes} bytes x {act.factor}), VAE decode {_gib(act.decode)} "
                     f"(tiled {_gib(act.decode_tiled)}: one image, tiles of {act.tile} px)\n\n")
    rows = []
    for s in result.steps:
        verdict = "yes" if s.fits else f"no: {_gib(s.peak)} > {_gib(result.vram)}"
        rows.append([s.step, _gib(s.peak), verdict + ("  <- chosen" if s.step == result.chosen else "")])
    _print_table(["step", "peak", "fits"], rows)
    if result.chosen is not None:
        from ..memory import STEP_NOTES

        peak = next(s.peak for s in result.steps if s.step == result.chosen)
        what = f" ({result.quantized})" if result.chosen in ("int8", "nf4") else ""
        sys.stdout.write(f"\nplan: {result.chosen}{what}: {STEP_NOTES[result.chosen]}; about {_gib(peak)} of "
                         f"{_gib(result.vram)}\n")


def _gib(size: int) -> str:
    """Bytes in GiB, as GPU memory is counted (nvidia-smi, --vram)."""
    return f"{size / 2**30:.1f} GiB"
