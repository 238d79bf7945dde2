"""The accelerate engine: the processes of `accelerate launch` (one per GPU, or CPU processes over gloo) each make
their share of the batch, through accelerate's PartialState."""

from __future__ import annotations

from typing import Any

from .base import Engine


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
