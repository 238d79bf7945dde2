"""The registry of tiny builders: family name -> a function (seed, **options) building its tiny pipeline in memory.
The first families' builders are in pipelines.py; each later family's is one module in builders/, found there."""

from __future__ import annotations

from typing import Any, Callable

TINY: dict[str, Callable[..., Any]] = {}


def tiny(family: str) -> Callable:
    """Register the tiny builder of `family`."""

    def register(builder: Callable) -> Callable:
        TINY[family] = builder
        return builder

    return register
