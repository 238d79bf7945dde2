"""The background writer: PNG encoding, hashing and sidecar writes run on one thread while the next group denoises."""

from __future__ import annotations

import queue
import threading
from typing import Callable

_STOP = object()


class BackgroundWriter:
    """Runs submitted tasks in order on one thread; the queue is bounded so finished images cannot pile up in memory.

    A task that raises stops the writer: the error is raised again in the caller's thread on the next submit or on
    close, so a failed write is never hidden.
    """

    def __init__(self, max_pending: int = 8):
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, max_pending))
        self._error: BaseException | None = None
        self._abandon = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="imagegen-writer", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            task = self._queue.get()
            try:
                if task is _STOP:
                    return
                if self._error is None and not self._abandon.is_set():
                    task()
            except BaseException as exc:  # noqa: BLE001 - handed to the main thread
                self._error = exc
            finally:
                self._queue.task_done()

    def _check(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def submit(self, task: Callable[[], None]) -> None:
        """Queue a task, waiting while the queue is full; raises a previous task's error."""
        self._check()
        self._queue.put(task)

    def close(self, *, drain: bool = True) -> None:
        """Finish queued tasks (drain) or only the one running (not drain), stop the thread, raise any task error."""
        if not drain:
            self._abandon.set()
        self._queue.put(_STOP)
        self._thread.join()
        self._check()
