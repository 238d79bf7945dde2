"""`compare`: one prompt across schedulers, step counts, CFG scales and seeds; a labelled grid and measured answers.

This module plans: the axes parsed and every cell resolved before the model loads (run.py runs the cells,
convergence.py measures them, report.py writes the grid and tables).
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..request import PARSERS, Request, ResolvedRequest
from ..resolve import resolve
from ..schedulers import resolve_scheduler

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
        return ", ".join(f"{k} {fmt(v)}" for k, v in self.values.items())


@dataclass(frozen=True)
class ComparePlan:
    prompt: str
    cells: tuple[Cell, ...]
    axes: dict  # axis -> values, every axis (fixed ones have one value)
    varying: tuple[str, ...]  # rows, columns, pages
    out_dir: Path
    reference: tuple[str, int] | None  # (scheduler, steps) named by --reference, else None (per scheduler)
    tolerance: float


def fmt(value) -> str:
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
            axes[name] = (base.scheduler.name if name == "scheduler" else getattr(base, name),)
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


def _parse_reference(text: str, family) -> tuple[str, int]:
    name, sep, count = text.rpartition(":")
    if not sep or not name.strip():
        raise UsageError(f"--reference {text!r}: use SCHEDULER:STEPS, e.g. 'DPM++ 2M Karras:50'")
    try:
        steps = PARSERS["steps"](count.strip())
    except ValueError as exc:
        raise UsageError(f"--reference {text!r}: steps {exc}") from None
    return resolve_scheduler(name.strip(), family, where="--reference").name, steps


