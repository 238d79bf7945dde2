"""A Ray worker: one actor per GPU (or per --workers share of the CPUs). It holds the loaded pipeline of the group it
last ran, makes the micro-batches the driver sends it, and returns each image encoded (PNG bytes, sidecar record)
with its record: it writes no file, so a cluster needs no shared filesystem and the driver stays the one writer.

Every method returns ("ok", ...) or ("error", ...) rather than raising: an error comes back as one line with the
worker's host, not as Ray's wrapped traceback."""

from __future__ import annotations

import os
import socket
import traceback

from ...errors import first_line
from ...inputs import carry
from ...progress import NullBatchProgress
from ..make import Made, Maker, RunInfo


class _Notes(NullBatchProgress):
    """What the maker says (an out-of-memory retry, a memory plan), kept to send back with the next result."""

    def __init__(self):
        self.notes: list[str] = []

    def note(self, message: str) -> None:
        self.notes.append(message)

    def take(self) -> tuple[str, ...]:
        taken, self.notes = tuple(self.notes), []
        return taken


class Worker:
    """The actor's class (Ray wraps it with ray.remote when the engine starts workers)."""

    def __init__(self, info: RunInfo, batch_size: int | None, fail_fast: bool, threads: int | None = None,
                 cwd: str | None = None):
        if cwd and os.path.isdir(cwd):  # the driver's folder, where it exists here: relative paths mean the same
            os.chdir(cwd)
        if threads:  # a CPU worker uses the CPUs Ray gave it, as the local engine uses all of them
            import torch

            torch.set_num_threads(threads)
        from ...session import Session

        self.progress = _Notes()
        self.maker = Maker(Session(), self.progress, info, batch_size=batch_size, fail_fast=fail_fast,
                           encode_here=True)
        self.key = None  # the group whose model and scheduler are set

    def describe(self) -> tuple:
        """Where this worker runs: host, process and device."""
        try:
            from ...loading import resolve_device

            return "ok", {"host": socket.gethostname(), "pid": os.getpid(), "device": resolve_device("auto")}
        except BaseException as exc:  # noqa: BLE001 - sent back to the driver as one line
            return _error(exc)

    def start(self, req, key, files: dict | None = None) -> tuple:
        """Load (or reuse) the model of the group `key`, led by `req`; its micro-batch size. `files`: input images
        by sha256, sent by a driver on another host."""
        try:
            carry(files or {})
            return "ok", self.start_group(req, key), self.progress.take()
        except BaseException as exc:  # noqa: BLE001
            return _error(exc)

    def make(self, chunk: list, size: int, key, files: dict | None = None) -> tuple:
        """One micro-batch of group `key` (started first if this worker last ran another group)."""
        try:
            carry(files or {})
            if key != self.key:
                self.start_group(chunk[0].req, key)
            made: Made = self.maker.make(chunk, size)
            made.notes = self.progress.take()
            return "ok", made
        except BaseException as exc:  # noqa: BLE001
            return _error(exc)

    def start_group(self, req, key) -> int:
        """The group's model loaded and scheduler set (no group is set if that fails); its micro-batch size."""
        self.key = None
        size = self.maker.start(req)
        self.key = key
        return size


def _error(exc: BaseException) -> tuple:
    """An error as the driver raises it again: its class's exit code, one line, and the traceback for --debug."""
    message = first_line(exc, type(exc).__name__)
    ours = type(exc).__module__.startswith("imagegen")
    text = message if ours else f"{type(exc).__name__}: {message}"
    return "error", {"message": text, "exit_code": getattr(exc, "exit_code", 1), "host": socket.gethostname(),
                     "traceback": "".join(traceback.format_exception(exc))}
