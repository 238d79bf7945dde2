"""Running a comparison: the model loads once and the prompt is encoded once; every cell then runs through the
generation session with its scheduler swapped in place, and is written exactly as txt2img writes an image (PNG,
chunk, sidecar), so any cell can be reproduced. The writes overlap the next cell's denoising."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..progress import NullBatchProgress
from ..runtime import LoadOptions
from ..session import Session, pipeline_for, write
from ..writer import BackgroundWriter
from .convergence import convergence
from .plan import Cell, ComparePlan, fmt, lora_scale_of
from .report import value_slug, write_reports


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
    out_dir: Path | None = None  # this run's own folder inside plan.out_dir

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
    progress = progress or NullBatchProgress()
    started = time.perf_counter()
    first = plan.cells[0].req
    out_dir = run_folder(plan.out_dir)  # before loading: a folder that cannot be made fails first
    session = Session()
    session.load(first, progress)  # every cell shares the run's ControlNets and IP-Adapter
    result = CompareResult(plan=plan, load_s=time.perf_counter() - started)
    encoded: dict = {}  # the prompt encoded once per LoRA scale (a text-encoder LoRA changes the embeddings)
    result.out_dir = out_dir
    progress.start(total=len(plan.cells))
    writer = BackgroundWriter(max_pending=4)  # PNG encoding and sidecars overlap the next cell's denoising
    try:
        for cell in _by_settings(plan.cells):
            progress.current(cell.label)
            image, record, cell_result = _run_cell(session, cell, encoded, progress, result, len(plan.cells))
            result.cells.append(cell_result)
            name = "cells/" + "reference_" * cell.extra + "_".join(
                f"{k}-{value_slug(v)}" for k, v in cell.values.items())
            writer.submit(_write_cell(result.out_dir, name, image, record, cell_result))
            progress.image_done(cell, None)
            if len(result.cells) == 1 and len(plan.cells) > 1:
                progress.note(f"estimated time for all {len(plan.cells)} cells: {_estimate(plan, cell_result):.1f} s")
    finally:
        writer.close()
        progress.finish()
    order = {id(cell): i for i, cell in enumerate(plan.cells)}
    result.cells.sort(key=lambda c: order[id(c.cell)])  # the plan's order, whatever order they ran in
    convergence(result)
    write_reports(result)
    result.wall_s = time.perf_counter() - started
    return result


def run_folder(parent: Path) -> Path:
    """A new folder for this run, compare-001, compare-002, ...: reruns into one --out never share or replace files."""
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--out {parent}: cannot create it ({exc.strerror or exc})") from None
    taken = [int(p.name[8:]) for p in parent.glob("compare-*") if p.name[8:].isdigit()]
    number = max(taken, default=0) + 1
    while True:
        folder = parent / f"compare-{number:03d}"
        try:
            folder.mkdir()  # atomic: two runs started at once get two folders
            return folder
        except FileExistsError:
            number += 1


def _run_cell(session: Session, cell: Cell, encoded: dict, progress, result: CompareResult, total: int):
    """One cell: its LoRA scale and scheduler, one call with the shared embeddings, its record; (image, record,
    CellResult)."""
    import numpy as np

    req = cell.req
    if LoadOptions.of(req) != session.requested:  # a speed axis: the model loads again with the cell's settings
        t0 = time.perf_counter()
        session.load(req, progress)
        encoded.clear()
        result.load_s += time.perf_counter() - t0
    session.pipe = pipeline_for(session.loaded, req)  # sets the cell's LoRA scale; the same pipeline otherwise
    scale = lora_scale_of(req)
    if scale not in encoded:
        t0 = time.perf_counter()
        encoded[scale] = session.encode(req, progress)
        result.encode_s += time.perf_counter() - t0
    embeddings = encoded[scale]
    session.set_scheduler(req)
    steps_seen: list[int] = []
    call_start = time.perf_counter()
    call = session.call([req], [req.seed], _StepCounter(progress, steps_seen), prompts=embeddings)
    wall = time.perf_counter() - call_start
    image = call.images[0]
    record = session.record(
        req, call, seed=req.seed,
        timings={"load_s": round(result.load_s, 4), **{k: round(v, 4) for k, v in call.timings.items()}},
        batch={"image": len(result.cells), "n": total, "batch_size": 1, "position": 0, "compare": dict(cell.values)},
    )
    cell_result = CellResult(cell=cell, wall_s=wall, denoise_s=call.timings["denoise_s"],
                             model_steps=len(steps_seen) or req.steps, pixels=np.asarray(image.convert("RGB")))
    return image, record, cell_result


def _by_settings(cells) -> list[Cell]:
    """The cells in plan order, grouped by their memory and speed settings (each group loads the model once)."""
    groups: dict[LoadOptions, list[Cell]] = {}
    for cell in cells:
        groups.setdefault(LoadOptions.of(cell.req), []).append(cell)
    return [cell for group in groups.values() for cell in group]


def _write_cell(out_dir: Path, name: str, image, record: dict, cell_result: CellResult):
    def task():
        written = write(image, out_dir, name, record, cell_result.cell.req)
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
        self._seen.append(steps)  # one a denoiser evaluation: img2img runs only the last `strength` of them
        self._progress.step(step, steps)
