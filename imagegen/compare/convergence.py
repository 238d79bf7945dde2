"""How far each cell of a comparison is from its reference cell (by default the same scheduler at the largest step
count, with the plain memory and speed settings: no quantization or cache, the default attention): mean absolute
pixel difference (0-255) and PSNR, and the cheapest setting within tolerance.

Cost is counted in model evaluations (denoiser forward passes per image), not wall time: wall time is noisy on a
shared machine, while evaluations are exact. CFG's doubled batch is not counted: a cell and its reference always
share the CFG scale, so it would cancel out of the ratio."""

from __future__ import annotations

import math

from .plan import SPEED_AXES, key_of


def _key(c) -> tuple:
    return key_of(c.cell.req)


def _ref_of(c, plan) -> tuple[str, int, dict]:
    """The reference's scheduler, step count and speed settings (each speed axis's first value: the plain one)."""
    plain = {n: plan.axes[n][0] for n in SPEED_AXES}
    if plan.reference:
        return (*plan.reference, plain)
    return c.cell.req.scheduler.name, max(plan.axes["steps"]), plain


def _varying(speed: dict, plan) -> list[str]:
    """The speed settings that vary across the grid, as "quantize int8"."""
    return [f"{n} {speed[n]}" for n in SPEED_AXES if n in plan.varying]


def _label(scheduler: str, steps: int, speed: dict, plan) -> str:
    """How a cell or reference is named in the results: its scheduler and steps, and the speed settings that vary."""
    return ", ".join([f"{scheduler}:{steps}", *_varying(speed, plan)])


def _speed(c) -> dict:
    return {n: getattr(c.cell.req, n) for n in SPEED_AXES}


def describe(c, plan) -> str:
    """A cell in words: "Euler at 20 steps", with the speed settings that vary ("..., quantize int8")."""
    req = c.cell.req
    return ", ".join([f"{req.scheduler.name} at {req.steps} steps", *_varying(_speed(c), plan)])


def convergence(result) -> None:
    """Each cell's difference from its reference cell, and the cheapest cell within tolerance of it."""
    import numpy as np

    plan = result.plan
    by_key = {_key(c): c for c in result.cells}
    for c in result.cells:
        scheduler, steps, speed = _ref_of(c, plan)
        ref = by_key.get(key_of(c.cell.req, scheduler, steps, speed))
        if ref is None:
            continue
        c.reference = _label(scheduler, steps, speed, plan)
        diff = np.abs(c.pixels.astype(np.float64) - ref.pixels.astype(np.float64))
        c.mad = float(diff.mean())
        mse = float((diff ** 2).mean())
        c.psnr = float("inf") if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)
    result.answer = _answer(result, by_key)


def _answer(result, by_key: dict) -> str:
    plan = result.plan

    def is_reference(c) -> bool:
        return c.reference == _label(c.cell.req.scheduler.name, c.cell.req.steps, _speed(c), plan)

    within = [c for c in result.cells if c.mad is not None and c.mad <= plan.tolerance and not is_reference(c)]
    if not within:
        measured = [c for c in result.cells if c.mad is not None and not is_reference(c)]
        closest = min(measured, key=lambda c: c.mad, default=None)
        return f"no setting cheaper than its reference is within {plan.tolerance:g} mean pixel difference" + (
            f"; the closest is {describe(closest, plan)} ({closest.mad:.2f})" if closest else "")
    best = min(within, key=lambda c: (c.model_steps, c.denoise_s, c.cell.req.steps))
    ref = by_key[key_of(best.cell.req, *_ref_of(best, plan))]
    share = best.model_steps / ref.model_steps if ref.model_steps else 1.0
    return (
        f"{describe(best, plan)} is within tolerance ({best.mad:.2f} mean pixel difference <= {plan.tolerance:g}, "
        f"PSNR {_db(best.psnr)}) of {describe(ref, plan)} at {100 * share:.0f}% of the cost ({best.model_steps} of "
        f"{ref.model_steps} model evaluations; wall time {best.wall_s:.2f} s against {ref.wall_s:.2f} s)"
    )


def _db(psnr: float) -> str:
    return f"{psnr:.1f} dB" if math.isfinite(psnr) else "∞ dB (identical)"
