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
from ..output import check_out_dir
from ..request import PARSERS, Request, ResolvedRequest
from ..resolve import resolve
from ..schedulers import resolve_scheduler

# The order varying axes take: rows, columns, then one grid per value.
AXES = ("scheduler", "steps", "cfg", "strength", "lora_scale", "quantize", "cache", "attention", "seed")
FLAGS = {"scheduler": "--schedulers", "steps": "--steps", "cfg": "--cfg", "strength": "--strengths",
         "lora_scale": "--lora-scales", "quantize": "--quantizations", "cache": "--caches",
         "attention": "--attentions", "seed": "--seeds"}
# Memory and speed axes: each cell is measured against the plain one (added to the axis where not given), and cells
# with other settings load the model again (run.py runs them grouped by their settings).
SPEED_AXES = ("quantize", "cache", "attention")
DEFAULT_TOLERANCE = 2.0  # mean absolute pixel difference (0-255) still counted as "the same image"
DEFAULT_MAX_IMAGES = 1000  # a larger grid needs --max-images: 1000 cells of a 1024px model are hours of work
MAX_AXIS = 1000
_PLURAL = {"scheduler": "schedulers", "steps": "step counts", "cfg": "CFG scales", "strength": "strengths",
           "lora_scale": "LoRA scales", "quantize": "quantizations", "cache": "caches",
           "attention": "attention backends", "seed": "seeds"}
_NUMBER_AXES = ("cfg", "strength", "lora_scale")  # a range of these keeps fractions
_RANGE = re.compile(r"^\s*(-?[\d.]+)\s*-\s*(-?[\d.]+)\s*(?::\s*([\d.]+))?\s*$")


def _parts(name: str, text: str):
    """Each comma part of an axis: (text, None) for a single value or (text, (start, step, count)) for a range."""
    flag = FLAGS[name]
    for part in (p.strip() for p in text.split(",") if p.strip()):
        m = _RANGE.match(part) if name != "scheduler" and name not in SPEED_AXES else None
        if not m:
            yield part, None
            continue
        start, end, step = float(m.group(1)), float(m.group(2)), float(m.group(3) or 1)
        if step <= 0 or end < start:
            raise UsageError(f"{flag} {part!r}: a range is START-END[:STEP] with START <= END and STEP > 0")
        count = int(math.floor((end - start) / step + 1e-9)) + 1  # counted, never expanded, before the cap
        if count > MAX_AXIS:
            raise UsageError(f"{flag} {part!r}: {count} values; at most {MAX_AXIS}")
        yield part, (start, step, count)


def axis_length(name: str, text: str) -> int:
    """How many values an axis text holds, counted from its ranges without building them."""
    return sum(1 if r is None else r[2] for _, r in _parts(name, text))


def parse_axis(name: str, text: str) -> tuple:
    """'Euler,DDIM' or '8,15,30' or '10-50:10' (a range, end included) -> the axis values, checked."""
    flag = FLAGS[name]
    values: list[Any] = []
    for part, span in _parts(name, text):
        if name == "scheduler":
            values.append(part)
            continue
        if name in SPEED_AXES and part.lower().startswith("gguf:"):
            raise UsageError(f"{flag}: {part}: a GGUF transformer is a model of its own; compare it with --quantize "
                             f"gguf:FILE as a fixed setting")
        raw: list[Any] = [part]
        if span:
            start, step, count = span
            raw = [start + i * step for i in range(count)]
            if name not in _NUMBER_AXES:
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
    if name != "scheduler" and len(set(values)) != len(values):  # schedulers are deduplicated by what they resolve to
        raise UsageError(f"{flag}: a value appears twice in {text!r}")
    return tuple(values)


@dataclass(frozen=True)
class Cell:
    """One point of the comparison: its request and where it sits (page, row, column); an off-grid reference has
    extra=True and no place on the grid."""

    req: ResolvedRequest
    values: dict
    page: int
    row: int
    col: int
    extra: bool = False

    @property
    def label(self) -> str:
        text = ", ".join(f"{k} {fmt(v)}" for k, v in self.values.items())
        return f"reference: {text}" if self.extra else text


@dataclass(frozen=True)
class ComparePlan:
    prompt: str
    cells: tuple[Cell, ...]  # the grid's cells, then any off-grid reference cells
    axes: dict  # axis -> values, every axis (fixed ones have one value)
    varying: tuple[str, ...]  # rows, columns, pages
    out_dir: Path  # each run writes into a new folder inside it
    reference: tuple[str, int] | None  # (scheduler, steps) named by --reference, else None (per scheduler)
    tolerance: float
    notes: tuple[str, ...] = ()  # for the user, e.g. a scheduler given twice under two spellings


def fmt(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def strength_of(req: ResolvedRequest) -> float | None:
    """A cell's denoising strength (img2img and inpaint), or None for txt2img."""
    init = req.adapter("init")
    return init.strength if init is not None else None


def lora_scale_of(req: ResolvedRequest) -> float | None:
    """A cell's LoRA scale (every LoRA's, when they share one), or None without LoRAs."""
    lora = req.adapter("lora")
    scales = {item.scale for item in lora.items} if lora is not None else set()
    return scales.pop() if len(scales) == 1 else None


def key_of(req: ResolvedRequest, scheduler: str | None = None, steps: int | None = None,
           speed: dict | None = None) -> tuple:
    """What tells cells apart: scheduler, steps, CFG, strength, LoRA scale, the speed settings and seed (with another
    scheduler, step count or speed settings: the key of the cell measured against)."""
    return (scheduler or req.scheduler.name, steps or req.steps, req.cfg, strength_of(req), lora_scale_of(req),
            *(speed or {n: getattr(req, n) for n in SPEED_AXES}).values(), req.seed)


def plan_compare(prompt: str, flags: Request, *, schedulers: str | None = None, steps: str | None = None,
                 cfg: str | None = None, seeds: str | None = None, reference: str | None = None,
                 tolerance: float = DEFAULT_TOLERANCE, max_images: int | None = None,
                 strengths: str | None = None, lora_scales: str | None = None, quantizations: str | None = None,
                 caches: str | None = None, attentions: str | None = None) -> ComparePlan:
    """Resolve every cell (before any model loads); errors name the axis flag and the value."""
    given = {"scheduler": schedulers, "steps": steps, "cfg": cfg, "strength": strengths, "lora_scale": lora_scales,
             "quantize": quantizations, "cache": caches, "attention": attentions, "seed": seeds}
    if strengths is not None and flags.image is None:
        raise UsageError("--strengths needs --image FILE (a strength is how far img2img or inpaint may move from it)")
    base = resolve(Request(**{**flags.given(), "prompt": prompt, "n": 1, "batch_size": 1,
                              "seed": flags.seed if flags.seed is not None else 0}))
    if lora_scales is not None and base.adapter("lora") is None:
        raise UsageError("--lora-scales needs a LoRA (--lora PATH or a <lora:NAME> tag in the prompt)")
    if not 0 <= tolerance <= 255:
        raise UsageError(f"--tolerance: must be from 0 to 255 (mean absolute pixel difference), got {tolerance:g}")
    notes: list[str] = []
    names = _distinct_schedulers(parse_axis("scheduler", schedulers), base.family, notes) if schedulers else None
    ref = _parse_reference(reference, base.family) if reference else None
    lengths = _check_count(given, names, max_images)
    axes = {}
    for name in AXES:
        if name == "scheduler":
            axes[name] = names or (base.scheduler.name,)
        elif given[name] is not None:
            axes[name] = _with_plain(name, parse_axis(name, given[name]), base, notes)
        else:
            axes[name] = (_FIXED[name](base) if name in _FIXED else getattr(base, name),)
    if flags.seed is None and given["seed"] is None:
        import secrets

        axes["seed"] = (secrets.randbelow(2**32),)  # recorded in every cell's metadata
    varying = tuple(n for n in AXES if len(axes[n]) > 1)
    if len(varying) > 3:
        raise UsageError("at most three axes may vary (rows, columns and one grid per value); fix one of "
                         + ", ".join(FLAGS[n] for n in varying))
    cells = _grid_cells(prompt, flags, axes, varying)
    if ref and not any(c.req.scheduler.name == ref[0] and c.req.steps == ref[1] for c in cells):
        extra = _reference_cells(prompt, flags, axes, varying, ref)  # at most one per CFG and seed: few
        _refuse_over(len(cells) + len(extra), lengths, max_images, " + the --reference images")
        cells += extra
    out_dir = Path(flags.out or "outputs").expanduser()
    check_out_dir(out_dir)  # before any model loads, as every command does
    return ComparePlan(prompt=prompt, cells=tuple(cells), axes=axes, varying=varying, out_dir=out_dir,
                       reference=ref, tolerance=tolerance, notes=tuple(notes))


_FIXED = {"strength": strength_of, "lora_scale": lora_scale_of}  # an axis not given: the request's own value


def _with_plain(name: str, values: tuple, base: ResolvedRequest, notes: list[str]) -> tuple:
    """A speed axis with its plain value first (the request's own --quantize/--cache/--attention, else none or
    auto): every cell is measured against it, so it is added where not given."""
    if name not in SPEED_AXES:
        return values
    plain = getattr(base, name)
    if plain not in values:
        notes.append(f"{FLAGS[name]}: {plain} added, the cell the others are measured against")
    return (plain, *(v for v in values if v != plain))


def _distinct_schedulers(names: tuple, family, notes: list[str]) -> tuple:
    """The scheduler axis with repeats of one scheduler (same class and config) dropped: the first spelling stays."""
    kept: dict[tuple, str] = {}
    for name in names:
        choice = resolve_scheduler(name, family, where="--schedulers")
        key = (choice.cls, tuple(sorted((k, repr(v)) for k, v in choice.kwargs.items())))
        if key in kept:
            notes.append(f"--schedulers: {name!r} is the same scheduler as {kept[key]!r} ({choice.name}); "
                         "computed once")
            continue
        kept[key] = name
    return tuple(kept.values())


def _check_count(given: dict, schedulers: tuple | None, max_images: int | None) -> dict:
    """Refuse a grid over the image limit from the axes' lengths alone, before any cell is built; the lengths."""
    if max_images is not None and max_images < 1:
        raise UsageError(f"--max-images: must be at least 1, got {max_images}")
    lengths = {n: axis_length(n, given[n]) if given[n] is not None else 1 for n in AXES}
    lengths["scheduler"] = len(schedulers) if schedulers else 1
    _refuse_over(math.prod(lengths.values()), lengths, max_images)
    return lengths


def _refuse_over(count: int, lengths: dict, max_images: int | None, more: str = "") -> None:
    limit = DEFAULT_MAX_IMAGES if max_images is None else max_images
    if count > limit:
        shape = " x ".join(f"{lengths[n]} {_PLURAL[n]}" for n in AXES if lengths[n] > 1) or "1 image"
        raise UsageError(f"the comparison makes {count:,} images ({shape}{more}), over the limit of {limit:,}; "
                         f"narrow an axis or raise the limit with --max-images {count}")


def _request(prompt: str, flags: Request, values: dict) -> ResolvedRequest:
    try:
        return resolve(Request(**{**flags.given(), "prompt": prompt, "n": 1, "batch_size": 1,
                                  "scheduler": values["scheduler"], "steps": values["steps"],
                                  "cfg": values["cfg"], "strength": values.get("strength"),
                                  "lora_scale": values.get("lora_scale"), "seed": 0,
                                  **{n: values[n] for n in SPEED_AXES if n in values}}))
    except UsageError as exc:
        raise UsageError(_name_axis(str(exc), values)) from None


def _grid_cells(prompt: str, flags: Request, axes: dict, varying: tuple) -> list[Cell]:
    cells = []
    resolved: dict[tuple, ResolvedRequest] = {}
    for combo in itertools.product(*(axes[n] for n in AXES)):
        values = dict(zip(AXES, combo))
        key = tuple(v for n, v in values.items() if n != "seed")
        if key not in resolved:
            resolved[key] = _request(prompt, flags, values)
        req = replace(resolved[key], seed=values["seed"], seed_was_random=False)
        index = [axes[n].index(values[n]) for n in varying] + [0, 0, 0]
        cells.append(Cell(req=req, values={n: values[n] for n in varying} or {"scheduler": values["scheduler"]},
                          row=index[0], col=index[1], page=index[2]))
    return cells


def _reference_cells(prompt: str, flags: Request, axes: dict, varying: tuple, ref: tuple[str, int]) -> list[Cell]:
    """The --reference cell for each CFG and seed, when it is not on the grid: extra images, not grid cells."""
    cells = []
    others = ("cfg", "strength", "lora_scale", *SPEED_AXES, "seed")
    for combo in itertools.product(*(axes[n] for n in others)):
        values = {"scheduler": ref[0], "steps": ref[1], **dict(zip(others, combo))}
        req = replace(_request(prompt, flags, values), seed=values["seed"], seed_was_random=False)
        shown = {"scheduler": ref[0], "steps": ref[1], **{n: values[n] for n in others if n in varying}}
        cells.append(Cell(req=req, values=shown, page=-1, row=-1, col=-1, extra=True))
    return cells


def _name_axis(message: str, values: dict) -> str:
    if message.startswith("--scheduler:"):
        return "--schedulers" + message[len("--scheduler"):]
    if message.startswith("--steps:"):
        return f"--steps {values['steps']}" + message[len("--steps"):]
    if message.startswith("--cfg"):
        return "--cfg" + message[len("--cfg"):]
    if message.startswith("--strength:"):
        return "--strengths" + message[len("--strength"):]
    if message.startswith("--lora-scale:"):
        return "--lora-scales" + message[len("--lora-scale"):]
    for name in SPEED_AXES:
        flag = "--" + name
        if message.startswith(flag + " ") or message.startswith(flag + ":"):
            return FLAGS[name] + message[len(flag):]
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


