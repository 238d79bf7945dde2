"""Making micro-batches: what runs where the model is (this process for the local and accelerate engines, a Ray actor
for the ray engine). A maker loads a group's model, calls the pipeline one micro-batch at a time (halving a
micro-batch that runs out of memory), and returns each image with its record, or the error that stopped it. It
writes nothing: the run that owns the manifest writes."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from ..errors import ImagegenError, OutOfMemory
from ..output import Encoded
from ..session import Session, encode
from .plan import PlannedImage


@dataclass(frozen=True)
class RunInfo:
    """What every image's record says about its batch, the same wherever it is made."""

    source: str
    images: int  # the plan's image count
    base_seed: int
    out_dir: str  # absolute: records name inputs relative to it (metadata portable) wherever they are made


@dataclass
class Outcome:
    """One image of a micro-batch: made (with its record, and its image or its encoded files) or failed."""

    item: PlannedImage
    record: dict | None = None
    image: Any = None  # the image, when the run writes it in this process
    encoded: Encoded | None = None  # its files' bytes, when it was encoded where it was made
    error: str | None = None


@dataclass
class Made:
    """A micro-batch's outcomes, and what the run reports about it."""

    outcomes: list[Outcome]
    size: int  # the group's micro-batch size
    seconds: float
    denoise_s: float
    worker: str = ""  # who made it: empty in this process, a Ray worker's label otherwise
    notes: tuple[str, ...] = ()  # what the maker said (an out-of-memory retry, a memory plan) where no bar shows it


class Maker:
    """Makes micro-batches with one session: `start` loads a group's model, `make` runs a micro-batch of it."""

    def __init__(self, session: Session, progress, info: RunInfo, *, batch_size: int | None = None,
                 fail_fast: bool = False, encode_here: bool = False):
        self.session, self.progress, self.info = session, progress, info
        self.batch_size, self.fail_fast, self.encode_here = batch_size, fail_fast, encode_here

    def start(self, req) -> int:
        """Load (or reuse) the model of a group led by `req` and set its scheduler; the group's micro-batch size."""
        self.session.load(req, self.progress)
        self.session.set_scheduler(req)
        return self.batch_size or self.session.auto_batch_size(req)

    def make(self, chunk: list[PlannedImage], size: int) -> Made:
        """One micro-batch of the started group (`size` is the group's micro-batch size, for the records)."""
        started = time.perf_counter()
        self._denoise_s = 0.0
        outcomes = self._make(chunk, size)
        return Made(outcomes=outcomes, size=size, seconds=time.perf_counter() - started, denoise_s=self._denoise_s)

    def _make(self, chunk: list[PlannedImage], size: int) -> list[Outcome]:
        """Run one micro-batch; on out-of-memory retry it in halves; a failure is an outcome per image."""
        self.progress.group(chunk)
        try:
            call = self.session.call([i.req for i in chunk], [i.seed for i in chunk], self.progress)
        except OutOfMemory as exc:
            out_of_memory = str(exc)  # retried below, outside the except: its traceback holds the call's tensors
        except (ImagegenError, RuntimeError, ValueError, OSError) as exc:
            return _failed(chunk, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        else:
            self._denoise_s += call.timings["denoise_s"]
            return [self._outcome(item, image, call, size, offset)
                    for offset, (item, image) in enumerate(zip(chunk, call.images))]
        if len(chunk) == 1:
            return _failed(chunk, out_of_memory)
        _empty_cache()
        half = (len(chunk) + 1) // 2
        self.progress.note(f"out of memory with {len(chunk)} images in one call: retrying as {half} + "
                           f"{len(chunk) - half}")
        first = self._make(chunk[:half], size)
        if self.fail_fast and any(o.error for o in first):
            return first
        return first + self._make(chunk[half:], size)

    def _outcome(self, item: PlannedImage, image, call, size: int, position: int) -> Outcome:
        """The record is built now (the scheduler as it ran); encoded here too when the writer is elsewhere."""
        info = self.info
        record = self.session.record(item.req, call, seed=item.seed,
                                     timings={k: round(v, 4) for k, v in call.timings.items()},
                                     batch={"image": item.index, "n": info.images, "batch_size": size,
                                            "position": position, "source": info.source, "line": item.job.line,
                                            "job": item.job.index, "request_hash": item.hash,
                                            "base_seed": info.base_seed})
        if self.encode_here:
            return Outcome(item, record, encoded=encode(image, info.out_dir, item.name, record, item.req))
        return Outcome(item, record, image=image)


def _failed(chunk: list[PlannedImage], error: str) -> list[Outcome]:
    return [Outcome(item, error=error) for item in chunk]


def _empty_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
