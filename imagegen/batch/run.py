"""Running a batch plan: the pending images shared out by the engine, grouped by model and group key, made in
micro-batches through the generation session, and written by a background writer that appends each image's manifest
line only after its files are in place. Ctrl-C finishes the current micro-batch; failures are recorded and the run
goes on."""

from __future__ import annotations

import signal
import threading
import time

from ..errors import ImagegenError, Interrupted, OutOfMemory
from ..portable import private_text, source_path
from ..progress import NullBatchProgress
from ..runtime import LoadOptions
from ..session import Session, active, write
from ..writer import BackgroundWriter
from .engines import Engine, get_engine
from .manifest import ManifestWriter
from .plan import BatchPlan, PlannedImage
from .result import BatchResult
from .resume import adopt, check_done, clean_temp_files, done_line


class _Stop:
    """Ctrl-C handling: the first press asks to stop after the current micro-batch, the second stops at once."""

    def __init__(self, progress):
        self.requested = False
        self._progress = progress
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self._progress.note("stopping after the current micro-batch and writing what is done (Ctrl-C again to stop now)")

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False


def run_batch(plan: BatchPlan, *, batch_size: int | None = None, fail_fast: bool = False, progress=None, engine: Engine | None = None) -> BatchResult:
    """Make every pending image of the plan; returns counts even when interrupted (first Ctrl-C)."""
    progress = progress or NullBatchProgress()
    engine = engine or get_engine()
    started = time.perf_counter()
    result = BatchResult(out_dir=plan.out_dir, total=0, invalid=len(plan.invalid), rank=engine.rank,
                         world=engine.world)
    for message in plan.invalid:
        progress.note(f"skipped invalid line: {message}")
    session = Session(device=engine.device)
    manifest = ManifestWriter(plan.out_dir, engine.rank)  # locks this process's shard: one batch per folder
    try:
        pending = _resume(plan, engine, manifest, result, progress, session.versions)
        runner = _Runner(plan, result, manifest, progress, session, batch_size=batch_size, fail_fast=fail_fast)
        with _Stop(progress) as stop:
            runner.run(pending, stop)
    except KeyboardInterrupt:
        raise Interrupted(
            f"stopped at once: {result.done} new images written, no partial files; run the same command again "
            f"(same file and --out {plan.out_dir}) to resume"
        ) from None
    finally:
        manifest.close()
        result.wall_s = time.perf_counter() - started
    if result.interrupted and result.remaining == 0:
        result.interrupted = False  # Ctrl-C came during the last micro-batch: everything is done
    return result


def _resume(plan: BatchPlan, engine: Engine, manifest: ManifestWriter, result: BatchResult, progress,
            lib_versions: dict) -> list:
    """What this process still has to make; process 0 cleans up, adopts crash orphans and says what it found."""
    if engine.rank == 0:
        clean_temp_files(plan.out_dir)
    engine.barrier()  # every process reads the same manifest before any writes
    resume = check_done(plan, act=engine.rank == 0)
    engine.barrier()
    pending = engine.share(resume.pending)
    ours = resume.skipped + len(resume.adopted) if engine.rank == 0 else 0
    result.total = len(pending) + ours if engine.world > 1 else len(plan.images)
    mode = plan.images[0].req.metadata if plan.images else "portable"  # a run-wide flag: every line has the same
    manifest.append({"type": "run", "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                     "source": source_path(plan.source, mode, plan.out_dir),
                     "base_seed": plan.base_seed, "images": len(plan.images), "rank": engine.rank,
                     "world": engine.world, "imagegen": lib_versions.get("imagegen")})
    if engine.rank == 0:
        for item, png in resume.done:
            result.add_image(item, png, "skipped")
        for item, record in resume.adopted:
            result.add_image(item, adopt(plan.out_dir, item, record, manifest), "adopted")
        result.skipped, result.adopted = resume.skipped, len(resume.adopted)
        for note in resume.notes:
            progress.note(note)
        if resume.skipped or resume.adopted:
            progress.note(
                f"resuming {plan.out_dir}: {resume.skipped} images already done and verified"
                + (f", {len(resume.adopted)} written just before a crash and adopted" if resume.adopted else "")
            )
    return pending


def _groups(pending: list[PlannedImage]) -> list[list[PlannedImage]]:
    """Pending images grouped by group key, each in file order: by model and its memory and speed settings, then by
    mode (its pipeline class), then by the adapters' weights, so each is loaded (or swapped in) as few times as
    possible."""
    groups: dict[tuple, list[PlannedImage]] = {}
    for item in pending:
        groups.setdefault(item.req.group_key(), []).append(item)

    def order(group: list[PlannedImage]) -> tuple:
        req = group[0].req
        weights = tuple(str(adapter.key(spec)) for adapter, spec in reversed(active(req)))
        return (req.model, str(LoadOptions.of(req)), req.mode.task, req.pipeline_variant or "", weights,
                group[0].index)

    return sorted(groups.values(), key=order)


class _Runner:
    """The run loop of one process: groups, micro-batches, out-of-memory retries, failures, background writes."""

    def __init__(self, plan: BatchPlan, result: BatchResult, manifest: ManifestWriter, progress, session: Session, *,
                 batch_size: int | None, fail_fast: bool):
        self.plan, self.result, self.manifest, self.progress, self.session = plan, result, manifest, progress, session
        self.batch_size, self.fail_fast = batch_size, fail_fast
        self.compiled = False  # some group ran with --compile: its warm-up is reported
        self.chosen: dict[int, bool] = {}
        self.times: list[tuple[int, float]] = []  # (images, seconds) per call, for the compile warm-up
        self.writer: BackgroundWriter | None = None

    def run(self, pending: list[PlannedImage], stop: _Stop) -> None:
        if not pending:
            return
        self.progress.start(total=len(pending))
        try:
            for group in _groups(pending):
                if stop.requested or not self._group(group, stop):
                    break
            self.result.interrupted = stop.requested
        except KeyboardInterrupt:
            self.result.interrupted = True
            if self.writer is not None:
                self.writer.close(drain=False)
                self.writer = None
            raise
        finally:
            self._finish()

    def _group(self, group: list[PlannedImage], stop: _Stop) -> bool:
        """Run one group in micro-batches; False to stop the run (Ctrl-C or --fail-fast)."""
        req = group[0].req
        self.session.load(req, self.progress)
        self.compiled |= req.compile != "none"
        self.session.set_scheduler(req)
        size = self.batch_size or self.session.auto_batch_size(req)
        self.chosen[size] = True
        if self.writer is None:
            self.writer = BackgroundWriter(max_pending=2 * size)
        for start in range(0, len(group), size):
            if stop.requested:
                return False
            chunk = group[start : start + size]
            t0 = time.perf_counter()
            made = self._make(chunk)
            self.times.append((len(chunk), time.perf_counter() - t0))
            for item, image, call, position in made:
                self.writer.submit(self._write_task(item, image, call, len(chunk), position))
            if self.fail_fast and self.result.failed:
                return False
        return True

    def _make(self, chunk: list[PlannedImage]) -> list[tuple]:
        """Run one micro-batch; on out-of-memory retry it in halves; a failure is recorded per image."""
        self.progress.group(chunk)
        try:
            call = self.session.call([i.req for i in chunk], [i.seed for i in chunk], self.progress)
        except OutOfMemory as exc:
            out_of_memory = str(exc)  # retried below, outside the except: its traceback holds the call's tensors
        except (ImagegenError, RuntimeError, ValueError, OSError) as exc:
            self._fail(chunk, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            return []
        else:
            self.result.denoise_s += call.timings["denoise_s"]
            return [(item, image, call, offset) for offset, (item, image) in enumerate(zip(chunk, call.images))]
        if len(chunk) == 1:
            self._fail(chunk, out_of_memory)
            return []
        _empty_cache()
        half = (len(chunk) + 1) // 2
        self.progress.note(f"out of memory with {len(chunk)} images in one call: retrying as {half} + "
                           f"{len(chunk) - half}")
        first = self._make(chunk[:half])
        if self.fail_fast and self.result.failed:
            return first
        return first + self._make(chunk[half:])

    def _fail(self, chunk: list[PlannedImage], error: str) -> None:
        for item in chunk:
            self.manifest.append({"type": "failed", "key": item.key, "hash": item.hash, "job": item.job.index,
                                  "line": item.job.line, "image": item.image, "index": item.index,
                                  "error": private_text(error, item.req.metadata)})
            self.result.failed += 1
            self.result.failures.append({"line": item.job.line, "job": item.job.index, "image": item.image,
                                         "prompt": item.req.prompt, "error": error})
            self.progress.image_failed(item, error)

    def _write_task(self, item: PlannedImage, image, call, size: int, position: int):
        """The record is built now (the scheduler as it ran); the PNG, sidecar and manifest line on the writer."""
        plan = self.plan
        record = self.session.record(item.req, call, seed=item.seed,
                                     timings={k: round(v, 4) for k, v in call.timings.items()},
                                     batch={"image": item.index, "n": len(plan.images), "batch_size": size,
                                            "position": position, "source": plan.source, "line": item.job.line,
                                            "job": item.job.index, "request_hash": item.hash,
                                            "base_seed": plan.base_seed})

        def task():
            written = write(image, plan.out_dir, item.name, record, item.req)
            self.manifest.append(done_line(plan.out_dir, item, written.png, written.sidecar, written.sha256,
                                           record["output"]["pixels_sha256"]))
            self.result.done += 1
            self.result.add_image(item, written.png, "written")
            self.progress.image_done(item, written.png)

        return task

    def _finish(self) -> None:
        try:
            if self.writer is not None:
                self.writer.close()
        except KeyboardInterrupt:  # a second Ctrl-C while the last images are written: stop after the current file
            self.result.interrupted = True
            self.writer.close(drain=False)
            raise
        finally:
            self.progress.finish()
            sizes = ",".join(str(s) for s in self.chosen)
            self.result.batch_size = f"auto ({sizes})" if self.batch_size is None else str(self.batch_size)
            if self.compiled and self.times:
                self.result.compile_warmup_s = _warmup(self.times)


def _warmup(times: list[tuple[int, float]]) -> float:
    """The first call's extra time over the later calls' per-image time (compilation happens on the first call)."""
    count, first = times[0]
    later = sorted(t / n for n, t in times[1:] if n)
    if not later:
        return first
    steady = later[len(later) // 2]
    return max(0.0, first - steady * count)


def _empty_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
