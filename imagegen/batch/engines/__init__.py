"""Batch engines: where a batch's images are made. Planning, seeds, the manifest and the writer do not know which
engine runs; an engine shares out the work, makes its micro-batches (here, or on workers it starts) and hands back
each one's outcomes for the run to write: `local` (this process), `accelerate` (the processes of `accelerate launch`),
`ray` (Ray actors on a local Ray or a cluster; the optional extra imagegen[ray]).

The engine is chosen in this order: the --engine flag, then IMAGEGEN_ENGINE, then auto: `accelerate` when the process
was started by `accelerate launch` or torchrun (WORLD_SIZE > 1), else `local`."""

from __future__ import annotations

import os

from ...errors import UsageError, closest
from .accelerate import AccelerateEngine
from .base import Engine, Work
from .ray_engine import RayEngine

ENGINES: dict[str, type[Engine]] = {"local": Engine, "accelerate": AccelerateEngine, "ray": RayEngine}


def engine_name(name: str | None = None) -> str:
    """Which engine runs: --engine, else IMAGEGEN_ENGINE, else auto (accelerate under a multi-process launcher)."""
    flag = "--engine" if name else "IMAGEGEN_ENGINE"
    chosen = (name or os.environ.get("IMAGEGEN_ENGINE") or "auto").strip().lower()
    if chosen == "auto":
        return "accelerate" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else "local"
    if chosen not in ENGINES:
        raise UsageError(f"{flag} {chosen}: unknown engine{closest(chosen, ENGINES)}; choose auto, "
                         f"{', '.join(ENGINES)}")
    return chosen


def get_engine(name: str | None = None, **options) -> Engine:
    """The engine that runs this process's part of a batch (see engine_name for the order of choice), with its own
    options (None: not given); an option of another engine is refused."""
    chosen = engine_name(name)
    given = {key: value for key, value in options.items() if value is not None}
    for key in given:
        if key not in ENGINES[chosen].options:
            owners = " or ".join(n for n, engine in ENGINES.items() if key in engine.options)
            raise UsageError(f"--{key.replace('_', '-')}: only with --engine {owners} (this batch's engine is "
                             f"{chosen})")
    return ENGINES[chosen](**given)


__all__ = ["ENGINES", "AccelerateEngine", "Engine", "RayEngine", "Work", "engine_name", "get_engine"]
