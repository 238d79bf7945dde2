"""`compare`: one prompt across schedulers, step counts, CFG scales and seeds; a labelled grid and measured answers.

Every cell is validated before the model loads; the model loads once, the prompt is encoded once, and the
scheduler is swapped in place between cells. Each cell is written exactly as txt2img writes an image (PNG, chunk,
sidecar), so any cell can be reproduced. Convergence is the difference from a reference cell (by default the same
scheduler at the largest step count): mean absolute pixel difference (0-255) and PSNR.
"""

from __future__ import annotations

import itertools
import math
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .errors import UsageError
from .request import PARSERS, Request, ResolvedRequest, resolve

AXES = ("scheduler", "steps", "cfg", "seed")  # the order varying axes take: rows, columns, then one grid per value
FLAGS = {"scheduler": "--schedulers", "steps": "--steps", "cfg": "--cfg", "seed": "--seeds"}
DEFAULT_TOLERANCE = 2.0  # mean absolute pixel difference (0-255) still counted as "the same image"
_RANGE = re.compile(r"^\s*(-?[\d.]+)\s*-\s*(-?[\d.]+)\s*(?::\s*([\d.]+))?\s*$")


def parse_axis(name: str, text: str) -> tuple:
    """'Euler,DDIM' or '8,15,30' or '10-50:10' (a range, end included) -> the axis values, checked."""
    flag = FLAGS[name]
    values: list[Any] = []
    for part in (p for p in text.split(",") if p.strip()):
        if name == "scheduler":
            values.append(part.strip())
            continue
        m = _RANGE.match(part)
        raw = [part.strip()]
        if m:
            start, end, step = float(m.group(1)), float(m.group(2)), float(m.group(3) or 1)
            if step <= 0 or end < start:
                raise UsageError(f"{flag} {part.strip()!r}: a range is START-END[:STEP] with START <= END and STEP > 0")
            count = int(math.floor((end - start) / step + 1e-9)) + 1
            if count > 1000:
                raise UsageError(f"{flag} {part.strip()!r}: {count} values; at most 1000")
            raw = [start + i * step for i in range(count)]
            if name != "cfg":
                raw = [int(v) if float(v).is_integer() else v for v in raw]
        for value in raw:
            try:
                parsed = PARSERS["seed" if name == "seed" else name](value)
            except ValueError as exc:
                raise UsageError(f"{flag}: {exc}") from None
            if parsed is None:
                raise UsageError(f"{flag}: a comparison needs fixed seeds, got {value!r}")
            values.append(parsed)
    if not values:
        raise UsageError(f"{flag}: no values in {text!r}")
    if len(set(values)) != len(values):
        raise UsageError(f"{flag}: a value appears twice in {text!r}")
    return tuple(values)


@dataclass(frozen=True)
class Cell:
    """One point of the comparison: its request and where it sits (page, row, column)."""

    req: ResolvedRequest
    values: dict
    page: int
    row: int
    col: int

    @property
    def label(self) -> str:
        return ", ".join(f"{k} {_fmt(v)}" for k, v in self.values.items())


@dataclass(frozen=True)
class ComparePlan:
    prompt: str
    cells: tuple[Cell, ...]
    axes: dict  # axis -> values, every axis (fixed ones have one value)
    varying: tuple[str, ...]  # rows, columns, pages
    out_dir: Path
    reference: tuple[str, int] | None  # (scheduler, steps) named by --reference, else None (per scheduler)
    tolerance: float


def _fmt(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def plan_compare(prompt: str, flags: Request, *, schedulers: str | None = None, steps: str | None = None,
                 cfg: str | None = None, seeds: str | None = None, reference: str | None = None,
                 tolerance: float = DEFAULT_TOLERANCE) -> ComparePlan:
    """Resolve every cell (before any model loads); errors name the axis flag and the value."""
    given = {"scheduler": schedulers, "steps": steps, "cfg": cfg, "seed": seeds}
    base = resolve(Request(**{**flags.given(), "prompt": prompt, "n": 1, "batch_size": 1,
                              "seed": flags.seed if flags.seed is not None else 0}))
    axes = {}
    for name in AXES:
        if given[name] is not None:
            axes[name] = parse_axis(name, given[name])
        else:
            axes[name] = (getattr(base, name),)
    if flags.seed is None and given["seed"] is None:
        import secrets

        axes["seed"] = (secrets.randbelow(2**32),)  # recorded in every cell's metadata
    varying = tuple(n for n in AXES if len(axes[n]) > 1)
    if len(varying) > 3:
        raise UsageError("at most three axes may vary (rows, columns and one grid per value); fix one of "
                         + ", ".join(FLAGS[n] for n in varying))
    if not 0 <= tolerance <= 255:
        raise UsageError(f"--tolerance: must be from 0 to 255 (mean absolute pixel difference), got {tolerance:g}")

    cells = []
    resolved: dict[tuple, ResolvedRequest] = {}
    for combo in itertools.product(*(axes[n] for n in AXES)):
        values = dict(zip(AXES, combo))
        key = (values["scheduler"], values["steps"], values["cfg"])
        if key not in resolved:
            try:
                resolved[key] = resolve(Request(**{**flags.given(), "prompt": prompt, "n": 1, "batch_size": 1,
                                                   "scheduler": values["scheduler"], "steps": values["steps"],
                                                   "cfg": values["cfg"], "seed": 0}))
            except UsageError as exc:
                raise UsageError(_name_axis(str(exc), values)) from None
        req = replace(resolved[key], seed=values["seed"], seed_was_random=False)
        index = [axes[n].index(values[n]) for n in varying] + [0, 0, 0]
        cells.append(Cell(req=req, values={n: values[n] for n in varying} or {"scheduler": values["scheduler"]},
                          row=index[0], col=index[1], page=index[2]))
    ref = _parse_reference(reference, base.family) if reference else None
    out_dir = Path(flags.out or "outputs").expanduser()
    return ComparePlan(prompt=prompt, cells=tuple(cells), axes=axes, varying=varying, out_dir=out_dir,
                       reference=ref, tolerance=tolerance)


def _name_axis(message: str, values: dict) -> str:
    if message.startswith("--scheduler:"):
        return "--schedulers" + message[len("--scheduler"):]
    if message.startswith("--steps:"):
        return f"--steps {values['steps']}" + message[len("--steps"):]
    if message.startswith("--cfg"):
        return "--cfg" + message[len("--cfg"):]
    return message


def _parse_reference(text: str, family: str) -> tuple[str, int]:
    from .schedulers import resolve_scheduler

    name, sep, count = text.rpartition(":")
    if not sep or not name.strip():
        raise UsageError(f"--reference {text!r}: use SCHEDULER:STEPS, e.g. 'DPM++ 2M Karras:50'")
    try:
        steps = PARSERS["steps"](count.strip())
    except ValueError as exc:
        raise UsageError(f"--reference {text!r}: steps {exc}") from None
    return resolve_scheduler(name.strip(), family, where="--reference").name, steps


# ---- running


@dataclass
class CellResult:
    """What one cell made and measured."""

    cell: Cell
    path: Path | None = None
    sidecar: Path | None = None
    wall_s: float = 0.0  # the pipeline call: denoise + decode
    denoise_s: float = 0.0
    model_steps: int = 0  # denoiser evaluations (second-order samplers take more than --steps)
    pixels: Any = None  # the image as a uint8 array, for the convergence figures
    reference: str = ""
    mad: float | None = None
    psnr: float | None = None

    @property
    def s_per_step(self) -> float:
        return self.denoise_s / max(1, self.cell.req.steps)


@dataclass
class CompareResult:
    plan: ComparePlan
    cells: list[CellResult] = field(default_factory=list)
    load_s: float = 0.0
    encode_s: float = 0.0
    wall_s: float = 0.0
    grids: list[Path] = field(default_factory=list)
    answer: str = ""

    @property
    def denoise_total_s(self) -> float:
        return sum(c.denoise_s for c in self.cells)

    @property
    def overhead(self) -> float:
        """Everything after the load that is not denoising (encode, scheduler swaps, decode, writes, reports),
        as a fraction of the summed denoising time of the cells."""
        busy = self.denoise_total_s
        return (self.wall_s - self.load_s - busy) / busy if busy else 0.0


def run_compare(plan: ComparePlan, *, progress=None) -> CompareResult:
    """Load once, encode once, then run every cell, swapping the scheduler in place; write images, grid and tables."""
    import numpy as np

    from .generate import pipeline_call
    from .metadata import build_record, versions
    from .models import load_model, pipeline_for, resolve_device, resolve_dtype
    from .progress import NullBatchProgress
    from .schedulers import build_scheduler, resolve_scheduler
    from .writer import BackgroundWriter

    progress = progress or NullBatchProgress()
    started = time.perf_counter()
    first = plan.cells[0].req
    device = resolve_device(first.device)
    dtype = resolve_dtype(first.dtype, device, first.gpu_dtype)
    with progress.loading(first.model):
        loaded = load_model(first.model, family=first.family, revision=first.revision, variant=first.variant,
                            dtype=dtype, device=device)
        pipe = pipeline_for(loaded, first)  # every cell shares the run's ControlNets and IP-Adapter
    result = CompareResult(plan=plan, load_s=time.perf_counter() - started)
    t0 = time.perf_counter()
    embeddings = encode_once(pipe, first.family, plan.prompt, first.negative, device)
    result.encode_s = time.perf_counter() - t0
    lib_versions = versions()
    progress.start(total=len(plan.cells))
    writer = BackgroundWriter(max_pending=4)  # PNG encoding and sidecars overlap the next cell's denoising
    try:
        for cell in plan.cells:
            req = cell.req
            progress.current(cell.label)
            pipe.scheduler = build_scheduler(resolve_scheduler(req.scheduler, req.family), loaded.native_scheduler)
            steps_seen: list[int] = []
            watcher = _StepCounter(progress, steps_seen)
            call_start = time.perf_counter()
            kwargs = _for_cfg(embeddings, req)
            images, timings = pipeline_call(pipe, [req], [req.seed], watcher, embeddings=kwargs)
            wall = time.perf_counter() - call_start
            image = images[0]
            record = build_record(
                req, loaded, seed=req.seed, scheduler_config=dict(pipe.scheduler.config),
                scheduler_class=type(pipe.scheduler).__name__,
                timings={"load_s": round(result.load_s, 4), **{k: round(v, 4) for k, v in timings.items()}},
                batch={"image": len(result.cells), "n": len(plan.cells), "batch_size": 1, "position": 0,
                       "compare": {k: v for k, v in cell.values.items()}},
                lib_versions=lib_versions,
            )
            name = "cells/" + "_".join(f"{k}-{_slug_value(v)}" for k, v in cell.values.items())
            cell_result = CellResult(
                cell=cell, wall_s=wall, denoise_s=timings["denoise_s"],
                model_steps=max(steps_seen or [req.steps]), pixels=np.asarray(image.convert("RGB")),
            )
            result.cells.append(cell_result)
            writer.submit(_write_cell(plan.out_dir, name, image, record, cell_result, req))
            progress.image_done(cell, None)
            if len(result.cells) == 1 and len(plan.cells) > 1:
                progress.note(f"estimated time for all {len(plan.cells)} cells: {_estimate(plan, result.cells[0]):.1f} s")
    finally:
        writer.close()
        progress.finish()
    convergence(result)
    from .compare_report import write_reports

    write_reports(result)
    result.wall_s = time.perf_counter() - started
    return result


def _write_cell(out_dir: Path, name: str, image, record: dict, cell_result: CellResult, req: ResolvedRequest):
    from .generate import control_maps
    from .output import write_recorded

    def task():
        written = write_recorded(image, out_dir, name, record, extras=control_maps(req))
        cell_result.path, cell_result.sidecar = written.png, written.sidecar

    return task


def _estimate(plan: ComparePlan, first: CellResult) -> float:
    """Every cell's cost from the first cell's time per model step, scaled by each cell's step count."""
    per_step = first.wall_s / max(1, first.model_steps)
    scale = first.model_steps / max(1, first.cell.req.steps)  # second-order samplers: model steps per step
    return sum(per_step * max(1, round(c.req.steps * scale)) for c in plan.cells)


class _StepCounter:
    def __init__(self, progress, seen: list[int]):
        self._progress, self._seen = progress, seen

    def step(self, step: int, steps: int) -> None:
        self._seen.append(steps)
        self._progress.step(step, steps)


def _slug_value(value) -> str:
    from .output import slug

    return slug(_fmt(value).replace(".", "p"), 32)


def encode_once(pipe, family: str, prompt: str, negative: str, device: str) -> dict:
    """The prompt (and negative prompt) encoded once, as the embedding arguments of the family's pipeline call."""
    import torch

    with torch.no_grad():
        if family == "flux":
            embeds, pooled, _ = pipe.encode_prompt(prompt=prompt, prompt_2=None, device=device)
            neg, neg_pooled, _ = pipe.encode_prompt(prompt=negative or "", prompt_2=None, device=device)
            return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled,
                    "negative_prompt_embeds": neg, "negative_pooled_prompt_embeds": neg_pooled}
        if family == "sd3":
            embeds, neg, pooled, neg_pooled = pipe.encode_prompt(
                prompt=prompt, prompt_2=None, prompt_3=None, device=device, do_classifier_free_guidance=True,
                negative_prompt=negative or None)
        else:
            embeds, neg, pooled, neg_pooled = pipe.encode_prompt(
                prompt=prompt, device=device, do_classifier_free_guidance=True, negative_prompt=negative or None)
    return {"prompt_embeds": embeds, "negative_prompt_embeds": neg, "pooled_prompt_embeds": pooled,
            "negative_pooled_prompt_embeds": neg_pooled}


def _for_cfg(embeddings: dict, req: ResolvedRequest) -> dict:
    """Flux takes its negative embeddings only for true CFG (cfg > 1), as txt2img passes its negative prompt."""
    if req.family == "flux" and req.cfg <= 1:
        return {k: v for k, v in embeddings.items() if not k.startswith("negative")}
    return embeddings


def convergence(result: CompareResult) -> None:
    """Each cell's difference from its reference cell, and the cheapest cell within tolerance of it."""
    import numpy as np

    plan = result.plan
    by_key = {(c.cell.req.scheduler, c.cell.req.steps, c.cell.req.cfg, c.cell.req.seed): c for c in result.cells}
    for c in result.cells:
        req = c.cell.req
        if plan.reference:
            scheduler, steps = plan.reference
        else:
            scheduler, steps = req.scheduler, max(plan.axes["steps"])
        ref = by_key.get((scheduler, steps, req.cfg, req.seed))
        if ref is None:
            continue
        c.reference = f"{scheduler}:{steps}"
        diff = np.abs(c.pixels.astype(np.float64) - ref.pixels.astype(np.float64))
        c.mad = float(diff.mean())
        mse = float((diff ** 2).mean())
        c.psnr = float("inf") if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)
    def is_reference(c: CellResult) -> bool:
        return c.reference == f"{c.cell.req.scheduler}:{c.cell.req.steps}"

    within = [c for c in result.cells if c.mad is not None and c.mad <= plan.tolerance and not is_reference(c)]
    if not within:
        measured = [c for c in result.cells if c.mad is not None and not is_reference(c)]
        closest = min(measured, key=lambda c: c.mad, default=None)
        result.answer = f"no setting cheaper than its reference is within {plan.tolerance:g} mean pixel difference" + (
            f"; the closest is {closest.cell.req.scheduler} at {closest.cell.req.steps} steps ({closest.mad:.2f})"
            if closest else "")
        return
    best = min(within, key=lambda c: (c.denoise_s, c.cell.req.steps))
    ref = by_key[(*_ref_of(best, plan), best.cell.req.cfg, best.cell.req.seed)]
    share = best.denoise_s / ref.denoise_s if ref.denoise_s else 1.0
    result.answer = (
        f"{best.cell.req.scheduler} at {best.cell.req.steps} steps is within tolerance ({best.mad:.2f} mean pixel "
        f"difference <= {plan.tolerance:g}, PSNR {best.psnr:.1f} dB) of {ref.cell.req.steps}-step "
        f"{ref.cell.req.scheduler} at {100 * share:.0f}% of the cost"
    )


def _ref_of(c: CellResult, plan: ComparePlan) -> tuple[str, int]:
    if plan.reference:
        return plan.reference
    return c.cell.req.scheduler, max(plan.axes["steps"])
