"""The driver's side of the ray engine: a pool of worker actors pulling micro-batches from one queue.

Work stealing by hand over Ray Core actors (rather than Ray Data's map_batches) keeps the manifest simple: the driver
holds the queue, so it knows at every moment which micro-batch is on which worker, and a micro-batch lost with its
worker goes back to the front of the queue for another. Each worker keeps two micro-batches in flight, so it starts
the next while the driver writes the last; it keeps to the group whose model it holds while that group has work."""

from __future__ import annotations

import os
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterator

from ...errors import RunError, WorkerError, first_line
from ...inputs import bytes_of, images_in
from ..make import Made, Outcome

DEPTH = 2  # micro-batches in flight per worker: one running, one waiting, so a worker never waits on the driver
MAX_TRIES = 3  # a micro-batch that was on three lost workers is recorded as failed, not sent to a fourth


@dataclass
class _Group:
    key: int
    req: Any
    items: deque
    size: int | None  # micro-batch size: --batch-size, or what a worker's auto rule said once it loaded the model


@dataclass
class _Actor:
    handle: Any
    number: int
    label: str = ""  # host:pid once it described itself
    host: str = ""
    device: str = ""
    ready: bool = False
    alive: bool = True
    busy: int = 0  # tasks in flight
    key: int | None = None  # the group whose model it holds (or is loading)
    starting: bool = False  # a start (model load) is in flight
    images: int = 0
    busy_s: float = 0.0
    lost: int = 0  # micro-batches it held when it was lost


@dataclass
class _Task:
    kind: str  # describe, start or make
    actor: _Actor
    group: _Group | None = None
    chunk: list = field(default_factory=list)


class Pool:
    """Worker actors making the groups' micro-batches; `run` yields each micro-batch as it comes back."""

    here = socket.gethostname()  # a worker on another host gets its micro-batches' input images with them

    def __init__(self, ray, remote_class, actor_options: dict, count: int, work, stop, *, start_timeout: float,
                 threads: int | None = None):
        self.ray, self.remote_class, self.actor_options, self.count = ray, remote_class, actor_options, count
        self.work, self.stop, self.start_timeout, self.threads = work, stop, start_timeout, threads
        self.actors: list[_Actor] = []
        self.inflight: dict[Any, _Task] = {}
        self.tries: dict[int, int] = {}  # by a micro-batch's first image index: how many workers it was on
        self.retries = 0
        self.groups: list[_Group] = []
        self.last_loss = ""  # why the last worker was lost, for the error when none is left

    def run(self, groups: list[list]) -> Iterator[Made]:
        self.groups = [_Group(i, g[0].req, deque(g), self.work.batch_size) for i, g in enumerate(groups)]
        for _ in range(self.count):
            self._spawn()
        started = time.monotonic()
        while True:
            if not self.stop.requested:
                for actor in self.actors:
                    self._dispatch(actor)
            making = any(task.kind == "make" for task in self.inflight.values())
            if not making and (self.stop.requested or not any(g.items for g in self.groups)):
                return
            self._check_workers(started)
            ready, _ = self.ray.wait(list(self.inflight), num_returns=1, timeout=0.2)  # short: Ctrl-C is seen
            for ref in ready:
                made = self._receive(ref, self.inflight.pop(ref))
                if made is not None:
                    yield made

    def _spawn(self) -> None:
        handle = self.remote_class.options(**self.actor_options).remote(
            self.work.info, self.work.batch_size, self.work.fail_fast, self.threads, os.getcwd())
        actor = _Actor(handle, number=len(self.actors) + 1)
        self.actors.append(actor)
        self._submit(actor, "describe", handle.describe.remote())

    def _submit(self, actor: _Actor, kind: str, ref, group: _Group | None = None, chunk: list | None = None) -> None:
        self.inflight[ref] = _Task(kind, actor, group, chunk or [])
        actor.busy += 1

    def _dispatch(self, actor: _Actor) -> None:
        """Give a ready worker work until it holds DEPTH tasks: its own group's next micro-batch, else the first group
        with work; a group whose micro-batch size is not known yet is started (its model loaded) first."""
        while actor.alive and actor.ready and not actor.starting and actor.busy < DEPTH:
            group = self._next_group(actor)
            if group is None:
                return
            actor.key = group.key
            if group.size is None:
                actor.starting = True
                files = self._files(actor, [group.req])
                self._submit(actor, "start", actor.handle.start.remote(group.req, group.key, files), group)
                return
            chunk = [group.items.popleft() for _ in range(min(group.size, len(group.items)))]
            files = self._files(actor, [item.req for item in chunk])
            self._submit(actor, "make", actor.handle.make.remote(chunk, group.size, group.key, files), group, chunk)

    def _files(self, actor: _Actor, reqs: list) -> dict[str, bytes]:
        """The input images (init images, masks, control maps, references) of these requests, by sha256, for a
        worker on another host: it may not have the files, and needs no shared filesystem for them."""
        if actor.host == self.here:
            return {}
        files: dict[str, bytes] = {}
        for image in (image for req in reqs for image in images_in(req.adapters)):
            if image.sha256 not in files:
                data = bytes_of(image)  # a file changed since planning is left out: the worker says so
                if data is not None:
                    files[image.sha256] = data
        return files

    def _next_group(self, actor: _Actor) -> _Group | None:
        own = self.groups[actor.key] if actor.key is not None else None
        if own is not None and own.items and own.size is not None:
            return own
        return next((g for g in self.groups if g.items), None)

    def _receive(self, ref, task: _Task) -> Made | None:
        actor = task.actor
        actor.busy -= 1
        if task.kind == "start":
            actor.starting = False
        try:
            reply = self.ray.get(ref)
        except self.ray.exceptions.RayTaskError as exc:  # our worker code failed outside its own error handling
            raise WorkerError(f"Ray worker {actor.label or actor.number}: {first_line(exc)}") from None
        except self.ray.exceptions.RayError as exc:  # the worker died (killed, out of memory, node lost)
            return self._lost(actor, task, exc)
        if reply[0] == "error":
            error = reply[1]
            raise WorkerError(f"Ray worker on {error['host']}: {error['message']}", error["exit_code"],
                              error["traceback"])
        if task.kind == "describe":
            actor.ready, actor.device = True, reply[1]["device"]
            actor.label, actor.host = f"{reply[1]['host']}:{reply[1]['pid']}", reply[1]["host"]
            ready = sum(a.ready and a.alive for a in self.actors)
            self.work.progress.current(f"{ready} Ray worker{'s' if ready != 1 else ''} ready")
        elif task.kind == "start":
            task.group.size = task.group.size or reply[1]
            self._notes(reply[2])
        else:
            made: Made = reply[1]
            made.worker = actor.label
            self._notes(made.notes)
            self.work.progress.group([outcome.item for outcome in made.outcomes])  # the bar names the latest prompt
            actor.images += sum(1 for outcome in made.outcomes if outcome.error is None)
            actor.busy_s += made.seconds
            return made
        return None

    def _lost(self, actor: _Actor, task: _Task, exc: Exception) -> Made | None:
        """A worker died: its micro-batches go back to the front of the queue (a replacement worker is started)."""
        if actor.alive:
            actor.alive = False
            reason = first_line(exc)
            self.last_loss = f"{type(exc).__name__}: {reason[:160]}"
            self._note(f"Ray worker {actor.label or actor.number} was lost ({self.last_loss}); its work goes to the "
                       f"other workers")
            self._kill(actor)
            if sum(a.alive for a in self.actors) < self.count and len(self.actors) < self.count * (MAX_TRIES + 1):
                self._spawn()
        if task.kind != "make":
            return None
        actor.lost += 1
        self.retries += 1
        first = task.chunk[0].index
        self.tries[first] = self.tries.get(first, 0) + 1
        if self.tries[first] >= MAX_TRIES:
            error = f"lost with {MAX_TRIES} Ray workers in a row (each died while making it); a rerun retries it"
            return Made(outcomes=[Outcome(item, error=error) for item in task.chunk], size=len(task.chunk),
                        seconds=0.0, denoise_s=0.0, worker=actor.label)
        task.group.items.extendleft(reversed(task.chunk))
        return None

    def _check_workers(self, started: float) -> None:
        if not any(a.alive for a in self.actors) or not self.inflight:
            raise RunError(f"every Ray worker was lost ({self.last_loss}) and no new one could start; what was "
                           f"made is written, and the same command resumes")
        if not any(a.ready for a in self.actors) and time.monotonic() - started > self.start_timeout:
            resources = self.ray.cluster_resources()
            raise RunError(
                f"no Ray worker started within {self.start_timeout:.0f} s: each asks for "
                f"{_asks(self.actor_options)} and the cluster has {_asks(resources)} (lower --workers, or add "
                f"nodes; IMAGEGEN_RAY_START_TIMEOUT sets the wait)")

    def _notes(self, notes) -> None:
        for note in notes:
            self._note(note)

    def _note(self, message: str) -> None:
        self.work.progress.note(message)

    def _kill(self, actor: _Actor) -> None:
        try:
            self.ray.kill(actor.handle)
        except Exception:  # noqa: BLE001 - already gone
            pass

    def close(self) -> None:
        """Stop every worker (their loaded models with them)."""
        for actor in self.actors:
            if actor.alive:
                actor.alive = False
                self._kill(actor)
        self.inflight.clear()

    def workers(self) -> list[dict]:
        """Per worker: where it ran, what it made, how fast, and how many micro-batches were lost with it."""
        return [{"worker": a.label or f"#{a.number} (never started)", "device": a.device, "images": a.images,
                 "busy_s": round(a.busy_s, 3), "images_per_s": round(a.images / a.busy_s, 4) if a.busy_s else 0.0,
                 "lost": a.lost} for a in self.actors]


def _asks(resources: dict) -> str:
    keys = [("num_cpus", "CPU"), ("num_gpus", "GPU"), ("CPU", "CPU"), ("GPU", "GPU")]
    parts = [f"{resources[k]:g} {label}" for k, label in keys if resources.get(k)]
    return ", ".join(parts) or "nothing"
