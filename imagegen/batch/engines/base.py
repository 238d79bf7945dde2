"""The engine interface, and the local engine: this one process makes every image, micro-batch by micro-batch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

from ..make import Maker, Made, RunInfo
from ..plan import PlannedImage


@dataclass
class Work:
    """What an engine needs to make a run's images: the run's session and progress (this process's), what every
    record says about the batch, and the --batch-size and --fail-fast choices."""

    session: Any
    progress: Any
    info: RunInfo
    batch_size: int | None = None
    fail_fast: bool = False


class Engine:
    """One process doing all the work: the base of every engine, and the local engine itself."""

    name = "local"
    options: tuple[str, ...] = ()  # the engine's own flags (--ray-address, --workers), as keyword arguments
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
        from ...loading import resolve_device

        return resolve_device(requested)

    def produce(self, groups: list[list[PlannedImage]], work: Work, stop) -> Iterator[Made]:
        """Make the groups' images (each group's model loaded once), yielding each micro-batch's outcomes as it
        finishes; no new micro-batch starts once `stop.requested` is set."""
        maker = Maker(work.session, work.progress, work.info, batch_size=work.batch_size, fail_fast=work.fail_fast)
        for group in groups:
            size = maker.start(group[0].req)
            for start in range(0, len(group), size):
                if stop.requested:
                    return
                yield maker.make(group[start : start + size], size)

    def summary(self) -> dict:
        """What the engine adds to the run's summary (workers, retries); nothing for one process."""
        return {}
