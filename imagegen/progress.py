"""Progress reporting: the events the core emits, a silent default, and the Rich bar the CLI shows on stderr."""

from __future__ import annotations

import contextlib
from typing import Protocol


class Progress(Protocol):
    """What the core tells whoever is watching; every method is optional work for the watcher."""

    def note(self, message: str) -> None: ...
    def loading(self, model: str) -> contextlib.AbstractContextManager: ...
    def start(self, total: int, steps: int) -> None: ...
    def batch(self, first: int, count: int, seeds: list[int]) -> None: ...
    def step(self, step: int, steps: int) -> None: ...
    def image_done(self, result) -> None: ...
    def finish(self) -> None: ...


class NullProgress:
    """Reports nothing (the Python API's default, and -q)."""

    def note(self, message: str) -> None:
        pass

    def loading(self, model: str):
        return contextlib.nullcontext()

    def start(self, total: int, steps: int) -> None:
        pass

    def batch(self, first: int, count: int, seeds: list[int]) -> None:
        pass

    def step(self, step: int, steps: int) -> None:
        pass

    def image_done(self, result) -> None:
        pass

    def finish(self) -> None:
        pass


class RichProgress(NullProgress):
    """A Rich bar on stderr: steps and it/s for the current image(s), and images done of the total."""

    def __init__(self, console=None):
        from rich.console import Console

        self.console = console or Console(stderr=True)
        self._progress = None

    def note(self, message: str) -> None:
        self.console.print(f"[yellow]note:[/] {message}", highlight=False)

    @contextlib.contextmanager
    def loading(self, model: str):
        with self.console.status(f"loading {model} ...", spinner="dots"):
            yield

    def start(self, total: int, steps: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self._progress.start()
        self._images = self._progress.add_task("images", total=total, rate="")
        self._steps = self._progress.add_task("steps", total=steps, rate="")
        self._total = total

    def batch(self, first: int, count: int, seeds: list[int]) -> None:
        import time

        last = first + count
        label = f"image {first + 1}" if count == 1 else f"images {first + 1}-{last}"
        self._progress.reset(self._steps, description=f"{label}/{self._total} (seed {seeds[0]})", rate="")
        self._batch_start = time.perf_counter()

    def step(self, step: int, steps: int) -> None:
        import time

        elapsed = time.perf_counter() - self._batch_start
        rate = f"{step / elapsed:.2f} it/s" if elapsed > 0 else ""
        self._progress.update(self._steps, completed=step, total=steps, rate=rate)

    def image_done(self, result) -> None:
        self._progress.advance(self._images)
        where = result.path if result.path else "(not saved)"
        self._progress.console.print(f"[green]saved[/] {where}  seed {result.seed}", highlight=False)

    def finish(self) -> None:
        if self._progress is not None:
            self._progress.stop()
