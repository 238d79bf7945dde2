"""Batch engines: how the pending images of a batch are spread over processes. Planning, seeds, the manifest and the
writer do not know which engine runs; an engine only shares out work, synchronises, and places each process.

The engine is chosen in this order: the --engine flag, then IMAGEGEN_ENGINE, then auto: `accelerate` when the process
was started by `accelerate launch` or torchrun (WORLD_SIZE > 1), else `local`."""

from __future__ import annotations

import os
from typing import Any

from ..errors import UsageError, closest


class Engine:
    """One process doing all the work: the base of every engine, and the local engine itself."""

    name = "local"
    rank = 0  # this process's number
    world = 1  # how many processes share the batch

    def broadcast(self, value: Any) -> Any:
        """Process 0's value, in every process."""
        return value

    def barrier(self) -> None:
        """Wait until every process reaches this point."""

    def share(self, items: list) -> list:
        """This process's part of `items` (every process passes the same list)."""
        return items

    def gather(self, value: Any) -> list:
        """Every process's value, in process order, in every process (each process must call it)."""
        return [value]

    def device(self, requested: str) -> str:
        """The device this process runs on."""
        from ..loading import resolve_device

        return resolve_device(requested)


class AccelerateEngine(Engine):
    """The processes of `accelerate launch` (one per GPU, or CPU processes over gloo), through accelerate's
    PartialState."""

    name = "accelerate"

    def __init__(self):
        import torch
        from accelerate import PartialState

        self._state = PartialState(cpu=not torch.cuda.is_available())  # CPU processes (tests, CPU hosts) use gloo
        self.rank, self.world = self._state.process_index, self._state.num_processes

    def broadcast(self, value: Any) -> Any:
        if self.world == 1:
            return value
        from accelerate.utils import broadcast_object_list

        return broadcast_object_list([value], from_process=0)[0]

    def barrier(self) -> None:
        self._state.wait_for_everyone()

    def gather(self, value: Any) -> list:
        if self.world == 1:
            return [value]
        from accelerate.utils import gather_object

        return gather_object([value])  # all_gather_object: each process's one-item list, concatenated in rank order

    def share(self, items: list) -> list:
        with self._state.split_between_processes(items) as mine:
            return list(mine)

    def device(self, requested: str) -> str:
        if self.world > 1 and requested in ("auto", "cuda"):
            own = self._state.device  # this process's GPU
            return "cpu" if own.type == "cpu" else str(own)
        return super().device(requested)


ENGINES: dict[str, type[Engine]] = {"local": Engine, "accelerate": AccelerateEngine}


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


def get_engine(name: str | None = None) -> Engine:
    """The engine that runs this process's part of a batch (see engine_name for the order of choice)."""
    return ENGINES[engine_name(name)]()
