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


class _RichConsole:
    """What both Rich reporters share: a stderr console, notes, and a spinner while a model loads."""

    def __init__(self, console=None):
        from rich.console import Console

        self.console = console or Console(stderr=True)
        self._progress = None

    def note(self, message: str) -> None:
        from rich.markup import escape

        self.console.print(f"[yellow]note:[/] {escape(message)}", highlight=False)

    @contextlib.contextmanager
    def loading(self, model: str):
        with self.console.status(f"loading {model} ...", spinner="dots"):
            yield


class RichProgress(_RichConsole, NullProgress):
    """A Rich bar on stderr: steps and it/s for the current image(s), and images done of the total."""

    def start(self, total: int, steps: int) -> None:
        from rich.progress import MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._progress = Progress(
            TextColumn("{task.description}"),
            _bar(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
            expand=True,  # the bar takes what the other columns leave, so none of them is cut at 80 columns
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


def _bar(ratio: int = 1):
    """A bar as wide as the columns with no ratio leave (shared with any other ratio column), at least 5 wide."""
    from rich.progress import BarColumn
    from rich.table import Column

    return BarColumn(bar_width=None, table_column=Column(ratio=ratio, min_width=5))


class NullBatchProgress:
    """A batch's events, reported to no one (the API's default, and -q)."""

    def note(self, message: str) -> None:
        pass

    def loading(self, model: str):
        return contextlib.nullcontext()

    def start(self, total: int) -> None:
        pass

    def group(self, items: list) -> None:
        pass

    def current(self, label: str) -> None:
        pass

    def step(self, step: int, steps: int) -> None:
        pass

    def image_done(self, item, path) -> None:
        pass

    def image_failed(self, item, error: str) -> None:
        pass

    def finish(self) -> None:
        pass


def shorten(text: str, limit: int = 48) -> str:
    """One line of at most `limit` characters."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class RichBatchProgress(_RichConsole, NullBatchProgress):
    """One bar over the whole batch on stderr: images done of total, images/s, ETA, the current prompt and step."""

    @contextlib.contextmanager
    def loading(self, model: str):
        if self._progress is None:
            with super().loading(model):
                yield
            return
        self._progress.update(self._task, prompt=f"loading {shorten(model, 40)}")  # the bar is up: say it there
        yield

    def start(self, total: int) -> None:
        import time

        from rich.progress import MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
        from rich.table import Column

        # Counts, rate, ETA and step keep their width; the bar and the prompt share the rest (the prompt is cut with
        # an ellipsis), so at 80 columns the ETA is never squeezed to "0:0…".
        self._progress = Progress(
            TextColumn("images"),
            _bar(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[step]}"),
            TextColumn("{task.fields[prompt]}", markup=False,
                       table_column=Column(ratio=2, no_wrap=True, overflow="ellipsis")),
            console=self.console,
            expand=True,
        )
        self._progress.start()
        self._task = self._progress.add_task("batch", total=total, rate="", step="", prompt="")
        self._started = time.perf_counter()
        self._done = 0

    def group(self, items: list) -> None:
        more = f" (+{len(items) - 1})" if len(items) > 1 else ""
        self.current(shorten(items[0].req.prompt, 36) + more)

    def current(self, label: str) -> None:
        self._progress.update(self._task, prompt=label, step="")

    def step(self, step: int, steps: int) -> None:
        self._progress.update(self._task, step=f"step {step}/{steps}")

    def _advance(self) -> None:
        import time

        self._done += 1
        elapsed = time.perf_counter() - self._started
        self._progress.update(self._task, advance=1, rate=f"{self._done / elapsed:.2f} img/s" if elapsed else "")

    def image_done(self, item, path) -> None:
        self._advance()

    def image_failed(self, item, error: str) -> None:
        self._advance()
        from rich.markup import escape

        self.console.print(f"[red]failed[/] line {item.job.line} (seed {item.seed}): {escape(error)}", highlight=False)

    def finish(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
