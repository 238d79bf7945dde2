"""How far each cell of a comparison is from its reference cell (by default the same scheduler at the largest step
count): mean absolute pixel difference (0-255) and PSNR, and the cheapest setting within tolerance.

Cost is counted in model evaluations (denoiser forward passes per image), not wall time: wall time is noisy on a
shared machine, while evaluations are exact. CFG's doubled batch is not counted: a cell and its reference always
share the CFG scale, so it would cancel out of the ratio."""

from __future__ import annotations

import math

from .plan import key_of


def _key(c) -> tuple:
    return key_of(c.cell.req)


def _ref_of(c, plan) -> tuple[str, int]:
    if plan.reference:
        return plan.reference
    return c.cell.req.scheduler.name, max(plan.axes["steps"])


def convergence(result) -> None:
    """Each cell's difference from its reference cell, and the cheapest cell within tolerance of it."""
    import numpy as np

    plan = result.plan
    by_key = {_key(c): c for c in result.cells}
    for c in result.cells:
        scheduler, steps = _ref_of(c, plan)
        ref = by_key.get(key_of(c.cell.req, scheduler, steps))
        if ref is None:
            continue
        c.reference = f"{scheduler}:{steps}"
        diff = np.abs(c.pixels.astype(np.float64) - ref.pixels.astype(np.float64))
        c.mad = float(diff.mean())
        mse = float((diff ** 2).mean())
        c.psnr = float("inf") if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)
    result.answer = _answer(result, by_key)


def _answer(result, by_key: dict) -> str:
    plan = result.plan

    def is_reference(c) -> bool:
        return c.reference == f"{c.cell.req.scheduler.name}:{c.cell.req.steps}"

    within = [c for c in result.cells if c.mad is not None and c.mad <= plan.tolerance and not is_reference(c)]
    if not within:
        measured = [c for c in result.cells if c.mad is not None and not is_reference(c)]
        closest = min(measured, key=lambda c: c.mad, default=None)
        return f"no setting cheaper than its reference is within {plan.tolerance:g} mean pixel difference" + (
            f"; the closest is {closest.cell.req.scheduler.name} at {closest.cell.req.steps} steps "
            f"({closest.mad:.2f})" if closest else "")
    best = min(within, key=lambda c: (c.model_steps, c.denoise_s, c.cell.req.steps))
    ref = by_key[key_of(best.cell.req, *_ref_of(best, plan))]
    share = best.model_steps / ref.model_steps if ref.model_steps else 1.0
    return (
        f"{best.cell.req.scheduler.name} at {best.cell.req.steps} steps is within tolerance ({best.mad:.2f} mean pixel "
        f"difference <= {plan.tolerance:g}, PSNR {_db(best.psnr)}) of {ref.cell.req.steps}-step "
        f"{ref.cell.req.scheduler.name} at {100 * share:.0f}% of the cost ({best.model_steps} of {ref.model_steps} "
        f"model evaluations; wall time {best.wall_s:.2f} s against {ref.wall_s:.2f} s)"
    )


def _db(psnr: float) -> str:
    return f"{psnr:.1f} dB" if math.isfinite(psnr) else "∞ dB (identical)"
