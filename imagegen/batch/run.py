"""Running a batch plan: the pending images shared out by the engine, grouped by model and group key, made in
micro-batches through the generation session, and written by a background writer that appends each image's manifest
line only after its files are in place. Ctrl-C finishes the current micro-batch; failures are recorded and the run
goes on."""

from __future__ import annotations

import signal
import threading
import time

from ..errors import Interrupted
from ..output import place_image
from ..portable import private_text, source_path
from ..progress import NullBatchProgress
from ..runtime import LoadOptions
from ..session import Session, active, encode
from ..writer import BackgroundWriter
from .engines import Engine, Work, get_engine
from .make import Outcome, RunInfo
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
    started, cpu = time.perf_counter(), time.process_time()
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
            runner.run(pending, stop, engine)
    except KeyboardInterrupt:
        raise Interrupted(
            f"stopped at once: {result.done} new images written, no partial files; run the same command again "
            f"(same file and --out {plan.out_dir}) to resume"
        ) from None
    finally:
        manifest.close()
        result.wall_s = time.perf_counter() - started
        result.driver_cpu_s = time.process_time() - cpu
        result.engine = engine.name
        extra = engine.summary()
        result.workers, result.retries = extra.get("workers", []), extra.get("retries", 0)
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
                     "world": engine.world, "engine": engine.name, "imagegen": lib_versions.get("imagegen")})
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
    """The run loop of the process that owns the manifest: the engine makes the micro-batches; each outcome is
    written here (failures recorded, images on a background writer) in the order it comes back."""

    def __init__(self, plan: BatchPlan, result: BatchResult, manifest: ManifestWriter, progress, session: Session, *,
                 batch_size: int | None, fail_fast: bool):
        self.plan, self.result, self.manifest, self.progress, self.session = plan, result, manifest, progress, session
        self.batch_size, self.fail_fast = batch_size, fail_fast
        self.compiled = False  # some group ran with --compile: its warm-up is reported
        self.chosen: dict[int, bool] = {}
        self.times: list[tuple[int, float]] = []  # (images, seconds) per call, for the compile warm-up
        self.writer: BackgroundWriter | None = None

    def run(self, pending: list[PlannedImage], stop: _Stop, engine: Engine) -> None:
        if not pending:
            return
        plan = self.plan
        info = RunInfo(source=plan.source, images=len(plan.images), base_seed=plan.base_seed,
                       out_dir=str(plan.out_dir.resolve()))
        work = Work(session=self.session, progress=self.progress, info=info, batch_size=self.batch_size,
                    fail_fast=self.fail_fast)
        groups = _groups(pending)
        self.compiled = any(group[0].req.compile != "none" for group in groups)
        made = engine.produce(groups, work, stop)  # an engine with workers starts them here
        self.progress.start(total=len(pending))
        try:
            for batch in made:
                self._take(batch)
                if self.fail_fast and self.result.failed:
                    break
            self.result.interrupted = stop.requested
        except KeyboardInterrupt:
            self.result.interrupted = True
            if self.writer is not None:
                self.writer.close(drain=False)
                self.writer = None
            raise
        finally:
            made.close()  # an engine's workers stop here
            self._finish()

    def _take(self, made) -> None:
        """One micro-batch back from the engine: failures recorded now, images queued for the writer."""
        self.chosen[made.size] = True
        self.times.append((len(made.outcomes), made.seconds))
        self.result.denoise_s += made.denoise_s
        for note in made.notes:
            self.progress.note(note)
        if self.writer is None:
            self.writer = BackgroundWriter(max_pending=2 * made.size)
        for outcome in made.outcomes:
            if outcome.error is not None:
                self._fail(outcome.item, outcome.error)
            else:
                self.writer.submit(self._write_task(outcome))

    def _fail(self, item: PlannedImage, error: str) -> None:
        self.manifest.append({"type": "failed", "key": item.key, "hash": item.hash, "job": item.job.index,
                              "line": item.job.line, "image": item.image, "index": item.index,
                              "error": private_text(error, item.req.metadata)})
        self.result.failed += 1
        self.result.failures.append({"line": item.job.line, "job": item.job.index, "image": item.image,
                                     "prompt": item.req.prompt, "error": error})
        self.progress.image_failed(item, error)

    def _write_task(self, outcome: Outcome):
        """The PNG (unless the engine encoded it where it was made), sidecar and manifest line, on the writer."""
        plan, item, record = self.plan, outcome.item, outcome.record

        def task():
            encoded = outcome.encoded or encode(outcome.image, plan.out_dir, item.name, record, item.req)
            written = place_image(encoded, plan.out_dir, item.name)
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
