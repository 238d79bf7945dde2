"""`batch`: a prompt file run at scale: validated first, grouped into micro-batches, resumable, crash-safe.

The run, in order:
1. prepare: parse the file, read the output folder's manifest (for the base seed), resolve every job; all bad lines
   are reported together and nothing loads unless every line is valid (or --skip-invalid).
2. plan: one PlannedImage per image, with its seed, recipe hash and file name; images already in the manifest whose
   files still hash right are skipped, and images written just before a crash (file in place, manifest line
   missing) are adopted.
3. run: the pending images are split across processes (accelerate), grouped by model and group key, and run in
   micro-batches; a background writer saves each image and then appends its manifest line.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from .errors import ImagegenError, OutOfMemory, RunError, UsageError
from .manifest import ManifestWriter, file_sha256, read_manifest, request_hash
from .output import render_name
from .progress import NullBatchProgress
from .promptfile import Job, read_prompt_file
from .request import Request, ResolvedRequest, resolve

BATCH_NAME = "{index:05d}-{seed}-{prompt}"
SIDECAR_SUFFIX = ".json"


class InvalidLines(UsageError):
    """Some prompt-file lines are invalid: `details` holds one 'file:line: message' each."""

    def __init__(self, message: str, details: list[str]):
        super().__init__(message)
        self.details = details


def derive_seed(base_seed: int, job_index: int) -> int:
    """The seed of a job whose line gives none: a 32-bit hash of the run's base seed and the job's index."""
    digest = hashlib.sha256(f"imagegen-batch:{base_seed}:{job_index}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def auto_batch_size(device: str, latent_width: int, latent_height: int) -> int:
    """The micro-batch `--batch-size auto` picks, from benchmarks/batch_speed.py's measurements on a 2-core CPU.

    CPU: the demo model (16x16 latents) ran at 0.61x the plain loop's time with batch 8; a reduced SDXL UNet at
    256x256 (32x32 latents) at 0.80x with batch 4 and 1.06x with batch 1. Larger latents are unmeasured on a CPU
    and stay at 1 (memory). GPU: larger batches fill the device; unmeasured in this release.
    """
    area = latent_width * latent_height
    if device == "cpu":
        if area <= 16 * 16:
            return 8
        return 4 if area <= 32 * 32 else 1
    if area <= 64 * 64:
        return 8
    return 4 if area <= 128 * 128 else 2


@dataclass(frozen=True)
class PlannedImage:
    """One image the batch must make: its job, recipe, seed and where it goes."""

    job: Job
    req: ResolvedRequest
    image: int  # 0-based within its job (a line with n: 3 makes images 0, 1, 2)
    index: int  # 0-based across the whole batch: the {index} of its file name
    seed: int
    hash: str
    name: str  # file name without extension, relative to the output folder

    @property
    def key(self) -> str:
        return f"{self.job.index}/{self.image}"


@dataclass(frozen=True)
class BatchPlan:
    """A validated batch: every image it makes, and the lines that were skipped as invalid."""

    source: str
    out_dir: Path
    base_seed: int
    images: tuple[PlannedImage, ...]
    invalid: tuple[str, ...] = ()


@dataclass
class BatchResult:
    """What a batch run did: counts, failures and timings (the CLI shows it as a table or --json)."""

    out_dir: Path
    total: int
    done: int = 0
    skipped: int = 0
    adopted: int = 0
    failed: int = 0
    invalid: int = 0
    wall_s: float = 0.0
    denoise_s: float = 0.0
    batch_size: str = ""
    failures: list[dict] = field(default_factory=list)
    interrupted: bool = False
    compile_warmup_s: float | None = None
    rank: int = 0
    world: int = 1

    @property
    def images_per_s(self) -> float:
        return self.done / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def remaining(self) -> int:
        return self.total - self.done - self.skipped - self.adopted - self.failed

    def to_json(self) -> dict:
        return {
            "out": str(self.out_dir),
            "total": self.total,
            "done": self.done,
            "skipped": self.skipped,
            "adopted": self.adopted,
            "failed": self.failed,
            "invalid": self.invalid,
            "remaining": self.remaining,
            "wall_s": round(self.wall_s, 3),
            "denoise_s": round(self.denoise_s, 3),
            "images_per_s": round(self.images_per_s, 4),
            "batch_size": self.batch_size,
            "interrupted": self.interrupted,
            "compile_warmup_s": None if self.compile_warmup_s is None else round(self.compile_warmup_s, 3),
            "failures": self.failures,
            "process": {"rank": self.rank, "world": self.world},
        }


# ---- 1 and 2: prepare and plan


def prepare(path: str, flags: Request, *, base_seed: int | None = None, fmt: str | None = None, expand: bool = False,
            skip_invalid: bool = False, restart: bool = False, stdin=None) -> BatchPlan:
    """Parse and validate the whole file and fix every image's seed and name; loads no model."""
    prompt_file = read_prompt_file(path, fmt=fmt, expand=expand, stdin=stdin)
    out_dir = Path(flags.out or "outputs").expanduser()
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out {out_dir}: is a file, not a folder")
    if restart:
        out_dir = _fresh_folder(out_dir)
    base_seed = _base_seed(out_dir, base_seed)

    defaults = Request(**{**flags.given(), "name": flags.name or BATCH_NAME, "seed": None, "out": str(out_dir)})
    errors = list(prompt_file.errors)
    images: list[PlannedImage] = []
    resolved: dict[tuple, ResolvedRequest | ImagegenError] = {}
    reserved = sorted(prompt_file.reserved)
    slots = 0  # image numbers held by invalid lines before the current job
    for job in prompt_file.jobs:
        while slots < len(reserved) and reserved[slots] < job.index:
            slots += 1
        line = job.request
        seed = line.seed if line.seed is not None else derive_seed(base_seed, job.index)
        memo = tuple(sorted((k, v) for k, v in line.given().items() if k != "seed"))
        if memo not in resolved:
            try:
                resolved[memo] = resolve(defaults, line=replace(line, seed=0))
            except ImagegenError as exc:  # also a model that is neither a folder nor in the cache (RunError)
                resolved[memo] = exc
        req = resolved[memo]
        if isinstance(req, ImagegenError):
            errors.append(f"{prompt_file.source}:{job.line}: {_as_field(str(req))}")
            slots += 1
            continue
        req = replace(req, seed=seed, seed_was_random=False)
        images.extend(_job_images(job, req, start=len(images) + slots))
    failures = {str(r) for r in resolved.values() if isinstance(r, ImagegenError)}
    if len(failures) == 1 and not any(isinstance(r, ResolvedRequest) for r in resolved.values()):
        message = failures.pop()
        try:
            resolve(defaults, line=Request(prompt="-", seed=0))
        except ImagegenError as exc:
            if str(exc) == message:
                raise  # every line fails as the flags alone do: say it once, about the flag
    errors.sort(key=_line_order)
    if errors and not skip_invalid:
        raise InvalidLines(
            f"{prompt_file.source}: {len(errors)} invalid line{'s' if len(errors) != 1 else ''}; nothing was run "
            f"(fix {'them' if len(errors) != 1 else 'it'}, or pass --skip-invalid to run the valid lines)",
            errors,
        )
    if not images:
        raise UsageError(f"{prompt_file.source}: no valid lines to run")
    _check_unique_names(images)
    return BatchPlan(source=prompt_file.source, out_dir=out_dir, base_seed=base_seed, images=tuple(images),
                     invalid=tuple(errors))


def _base_seed(out_dir: Path, given: int | None) -> int:
    """The run's base seed: the one recorded in the folder, else --seed, else random (the same in every process)."""
    runs, _ = read_manifest(out_dir)
    recorded = next((r.get("base_seed") for r in runs if isinstance(r.get("base_seed"), int)), None)
    if recorded is not None and given is not None and given != recorded:
        raise UsageError(
            f"--seed {given}: {out_dir} holds a batch made with base seed {recorded}; leave out --seed to "
            f"resume it, or pass --restart to start over in a new folder"
        )
    if given is not None or recorded is not None:
        return given if given is not None else recorded
    seed = int.from_bytes(os.urandom(4), "big")
    _, world, state = _process_state()
    if state is not None:
        from accelerate.utils import broadcast_object_list

        seed = broadcast_object_list([seed], from_process=0)[0]  # every process must derive the same seeds
    return seed


def _as_field(message: str) -> str:
    """resolve() names flags (--size 65x64: ...); on a prompt-file line the same value came from a field (size ...)."""
    return re.sub(r"^--([a-z][a-z-]*)", lambda m: m.group(1).replace("-", "_"), message)


def _check_unique_names(images: list[PlannedImage]) -> None:
    seen: dict[str, PlannedImage] = {}
    for item in images:
        other = seen.setdefault(item.name, item)
        if other is not item:
            raise UsageError(
                f"--name {item.req.name!r}: images {other.index} (line {other.job.line}) and {item.index} "
                f"(line {item.job.line}) would both be named {item.name!r}; add {{index}} or {{seed}}"
            )


def _line_order(message: str):
    head = message.split(": ", 1)[0]
    number = head.rsplit(":", 1)[-1]
    return int(number) if number.isdigit() else 0


def _job_images(job: Job, req: ResolvedRequest, start: int) -> list[PlannedImage]:
    from .generate import name_values
    from .schedulers import resolve_scheduler

    choice = resolve_scheduler(req.scheduler, req.family)
    out = []
    for image, seed in enumerate(req.seeds):
        index = start + image
        out.append(PlannedImage(
            job=job, req=req, image=image, index=index, seed=seed, hash=request_hash(req, seed),
            name=render_name(req.name, name_values(req, choice, index, seed)),
        ))
    return out


def _fresh_folder(out_dir: Path) -> Path:
    """out_dir if it is empty or missing, else the first free out_dir-2, -3, ... (nothing is overwritten)."""
    from .output import first_free

    if out_dir.is_dir() and not any(out_dir.iterdir()):
        return out_dir
    return first_free(out_dir, lambda n: out_dir.with_name(f"{out_dir.name}-{n}"))


# ---- resume: what is already done


@dataclass
class _Resume:
    pending: list[PlannedImage]
    skipped: int = 0
    adopted: list[tuple[PlannedImage, dict]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _check_done(plan: BatchPlan, *, act: bool) -> _Resume:
    """Split the plan into images already done (verified on disk), adoptable orphans, and pending.

    Every process computes the same split; only the one that acts (rank 0) moves stale files aside.
    """
    _, entries = read_manifest(plan.out_dir)
    referenced = {str(e.data.get("png")) for group in entries.values() for e in group if e.status == "done"}
    state = _Resume(pending=[])
    matched = missing = changed = 0
    for item in plan.images:
        done = [e for e in entries.get(item.key, []) if e.status == "done"]
        same = [e for e in done if e.hash == item.hash]
        if same:
            matched += 1
            entry = same[-1]
            png = plan.out_dir / str(entry.data.get("png", ""))
            if png.is_file() and file_sha256(png) == entry.data.get("sha256"):
                state.skipped += 1
                continue
            if png.is_file():
                if act:
                    aside = _move_aside(png, "mismatch")
                    state.notes.append(f"{png} no longer matches its recorded sha256: moved to {aside.name}, made again")
            else:
                missing += 1
            sidecar = plan.out_dir / str(entry.data.get("sidecar") or "")
            if act and entry.data.get("sidecar") and sidecar.is_file():
                _move_aside(sidecar, "stale")  # it describes the file that is gone; the new image gets its name
        elif done:
            changed += 1
        elif (orphan := _orphan(plan.out_dir, item, referenced)) is not None:
            state.adopted.append((item, orphan))
            continue
        state.pending.append(item)
    done_entries = sum(1 for group in entries.values() if any(e.status == "done" for e in group))
    if done_entries and not matched and not state.adopted:
        raise UsageError(
            f"--out {plan.out_dir}: it holds {done_entries} images of a different batch (no image of "
            f"{plan.source} matches its manifest); pass --restart to start over in a new folder, or another --out"
        )
    if missing:
        state.notes.append(f"{_count(missing, 'image')} in the manifest missing on disk: made again")
    if changed:
        state.notes.append(f"{_count(changed, 'image')} whose line changed since they were made: made again")
    return state


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _move_aside(path: Path, label: str) -> Path:
    """Rename a file to <name>.<label> (or .<label>-2, ...), never replacing anything."""
    from .output import first_free

    aside = path.with_name(f"{path.name}.{label}")
    aside = first_free(aside, lambda n: aside.with_name(f"{aside.name}-{n}"))
    path.rename(aside)
    return aside


def _orphan(out_dir: Path, item: PlannedImage, referenced: set[str]) -> dict | None:
    """The record of a file written for this image before a crash kept its manifest line from being appended."""
    import json

    from PIL import Image

    from .metadata import PNG_KEY

    png = out_dir / f"{item.name}.png"
    if not png.is_file() or png.relative_to(out_dir).as_posix() in referenced:
        return None
    try:
        with Image.open(png) as im:
            im.load()  # complete: it was linked into place whole, but check
            text = getattr(im, "text", {}).get(PNG_KEY)
            pixels = None if text else _pixels(im)
        record = json.loads(text) if text else None
    except Exception:  # noqa: BLE001 - not ours or unreadable: leave it, write the new image beside it
        return None
    if item.req.metadata == "none":
        # No recipe inside to check: the name (unique in this batch, with its index and seed by default) is the proof.
        return None if text else {"output": {"pixels_sha256": pixels}}
    if not isinstance(record, dict) or (record.get("batch") or {}).get("request_hash") != item.hash:
        return None
    return record


def _pixels(image) -> str:
    from .output import pixels_sha256

    return pixels_sha256(image)


def _adopt(out_dir: Path, item: PlannedImage, record: dict, manifest: ManifestWriter) -> None:
    """Finish an orphan: write its missing sidecar from the PNG's record, then its manifest line."""
    from .output import sidecar_data, write_new

    png = out_dir / f"{item.name}.png"
    sha = file_sha256(png)
    sidecar = None
    if "schema" in record:  # metadata full: the PNG carries the record the sidecar repeats
        sidecar = png.with_suffix(SIDECAR_SUFFIX)
        if not sidecar.exists():
            write_new(sidecar, sidecar_data(record, png.name, sha, save_s=None))
    manifest.append(_done_line(out_dir, item, png, sidecar, sha, (record.get("output") or {}).get("pixels_sha256")))


def _done_line(out_dir: Path, item: PlannedImage, png: Path, sidecar: Path | None, sha: str, pixels: str | None) -> dict:
    return {
        "type": "done", "key": item.key, "hash": item.hash, "job": item.job.index, "line": item.job.line,
        "image": item.image, "index": item.index, "seed": item.seed,
        "png": png.relative_to(out_dir).as_posix(),
        "sidecar": sidecar.relative_to(out_dir).as_posix() if sidecar else None,
        "sha256": sha, "pixels_sha256": pixels,
    }


def _clean_temp_files(out_dir: Path) -> int:
    """Remove the temp files a killed run left (they never became images)."""
    removed = 0
    if out_dir.is_dir():
        for tmp in out_dir.rglob(".imagegen-*.tmp"):
            try:
                tmp.unlink()
                removed += 1
            except OSError:
                pass
    return removed


# ---- 3: run


class _Stop:
    """Ctrl-C handling: the first press asks to stop after the current group, the second stops at once."""

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
        self._progress.note("stopping after the current group and writing what is done (Ctrl-C again to stop now)")

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False


def _process_state():
    """(rank, world, accelerate state or None): several processes only under `accelerate launch` (or torchrun)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1, None
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())  # CPU processes (tests, CPU-only hosts) use gloo
    return state.process_index, state.num_processes, state


def run_batch(plan: BatchPlan, *, batch_size: int | None = None, fail_fast: bool = False, compile: bool = False,
              progress=None) -> BatchResult:
    """Make every pending image of the plan; returns counts even when interrupted (first Ctrl-C)."""
    progress = progress or NullBatchProgress()
    started = time.perf_counter()
    rank, world, state = _process_state()
    result = BatchResult(out_dir=plan.out_dir, total=0, invalid=len(plan.invalid), rank=rank, world=world)
    for message in plan.invalid:
        progress.note(f"skipped invalid line: {message}")

    manifest = ManifestWriter(plan.out_dir, rank)  # locks this process's shard: one batch per folder at a time
    try:
        if rank == 0:
            _clean_temp_files(plan.out_dir)
        if state is not None:
            state.wait_for_everyone()  # every process reads the same manifest before any writes
        resume = _check_done(plan, act=rank == 0)
        if state is not None:
            state.wait_for_everyone()
    except BaseException:
        manifest.close()
        raise
    if state is not None:
        with state.split_between_processes(resume.pending) as mine:
            pending = list(mine)
        share = len(pending) + (resume.skipped + len(resume.adopted) if rank == 0 else 0)
    else:
        pending, share = resume.pending, len(plan.images)
    result.total = share

    from .metadata import versions

    lib_versions = versions()
    manifest.append({"type": "run", "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "source": plan.source,
                     "base_seed": plan.base_seed, "images": len(plan.images), "rank": rank, "world": world,
                     "imagegen": lib_versions.get("imagegen")})
    if rank == 0:
        for item, record in resume.adopted:
            _adopt(plan.out_dir, item, record, manifest)
        result.skipped, result.adopted = resume.skipped, len(resume.adopted)
        for note in resume.notes:
            progress.note(note)
        if resume.skipped or resume.adopted:
            progress.note(
                f"resuming {plan.out_dir}: {resume.skipped} images already done and verified"
                + (f", {len(resume.adopted)} written just before a crash and adopted" if resume.adopted else "")
            )
    try:
        with _Stop(progress) as stop:
            _run_pending(plan, pending, result, manifest, stop, progress, lib_versions, batch_size=batch_size,
                         fail_fast=fail_fast, compile=compile)
    except KeyboardInterrupt:
        from .errors import Interrupted

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


def _groups(pending: list[PlannedImage]) -> list[list[PlannedImage]]:
    """Pending images grouped by model first, then by group key, each in file order."""
    from .generate import group_key

    groups: dict[tuple, list[PlannedImage]] = {}
    for item in pending:
        groups.setdefault(group_key(item.req), []).append(item)
    # By model, then by IP-Adapter and nets, so each is loaded (or swapped in) as few times as possible.
    return sorted(groups.values(), key=lambda g: (g[0].req.model, _weights_order(g[0].req), g[0].index))


def _weights_order(req: ResolvedRequest) -> tuple:
    ip = req.ip_adapter.weights_key() if req.ip_adapter is not None else ()
    return (tuple(str(x) for x in ip), tuple(str(u.net_key()) for u in req.control))


def _run_pending(plan, pending, result, manifest, stop, progress, lib_versions, *, batch_size, fail_fast,
                 compile) -> None:
    from .models import load_model, pipeline_for, resolve_dtype
    from .schedulers import build_scheduler, resolve_scheduler
    from .writer import BackgroundWriter

    if not pending:
        return
    chosen = {}
    progress.start(total=len(pending))
    writer = None
    group_times: list[tuple[int, float]] = []
    try:
        for group in _groups(pending):
            if stop.requested:  # before loading (or compiling) the next model
                result.interrupted = True
                return
            req = group[0].req
            device = _device(req.device, result.world)
            dtype = resolve_dtype(req.dtype, device, req.gpu_dtype)
            with progress.loading(req.model):
                loaded = load_model(req.model, family=req.family, revision=req.revision, variant=req.variant,
                                    dtype=dtype, device=device)
                pipe = pipeline_for(loaded, req)  # ControlNet / IP-Adapter: the same base modules, never a copy
            if compile and not getattr(loaded, "compiled", False):
                _compile(loaded)
            choice = resolve_scheduler(req.scheduler, req.family)
            pipe.scheduler = build_scheduler(choice, loaded.native_scheduler)
            size = batch_size or auto_batch_size(device, *_latent(req, loaded))
            chosen[size] = True
            if writer is None:
                writer = BackgroundWriter(max_pending=2 * size)
            for start in range(0, len(group), size):
                if stop.requested:
                    result.interrupted = True
                    return
                chunk = group[start : start + size]
                t0 = time.perf_counter()
                made = _make(pipe, chunk, progress, result, manifest, fail_fast)
                group_times.append((len(chunk), time.perf_counter() - t0))
                for item, image, timings, batch_info in made:
                    writer.submit(_write_task(plan, item, image, loaded, pipe, timings, batch_info, lib_versions,
                                              manifest, result, progress))
                if fail_fast and result.failed:
                    return
        if stop.requested:
            result.interrupted = True
    except KeyboardInterrupt:
        result.interrupted = True
        if writer is not None:
            writer.close(drain=False)
            writer = None
        raise
    finally:
        try:
            if writer is not None:
                writer.close()
        except KeyboardInterrupt:  # a second Ctrl-C while the last images are written: stop after the current file
            result.interrupted = True
            writer.close(drain=False)
            raise
        finally:
            progress.finish()
        result.batch_size = ",".join(str(s) for s in chosen) if batch_size is None else str(batch_size)
        if batch_size is None:
            result.batch_size = f"auto ({result.batch_size})"
        if compile and group_times:
            result.compile_warmup_s = _warmup(group_times)


def _make(pipe, chunk, progress, result, manifest, fail_fast) -> list[tuple]:
    """Run one micro-batch; on out-of-memory retry it in halves; a failure is recorded per image."""
    from .generate import pipeline_call

    progress.group(chunk)
    try:
        images, timings = pipeline_call(pipe, [i.req for i in chunk], [i.seed for i in chunk], progress)
    except OutOfMemory as exc:
        out_of_memory = str(exc)  # retried below, outside the except: its traceback holds the failed call's tensors
    except (ImagegenError, RuntimeError, ValueError, OSError) as exc:
        _fail(chunk, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}", result, manifest, progress)
        return []
    else:
        out_of_memory = None
    if out_of_memory is not None:
        if len(chunk) == 1:
            _fail(chunk, out_of_memory, result, manifest, progress)
            return []
        _empty_cache()
        half = (len(chunk) + 1) // 2
        progress.note(f"out of memory with {len(chunk)} images in one call: retrying as {half} + {len(chunk) - half}")
        first = _make(pipe, chunk[:half], progress, result, manifest, fail_fast)
        if fail_fast and result.failed:
            return first
        return first + _make(pipe, chunk[half:], progress, result, manifest, fail_fast)
    result.denoise_s += timings["denoise_s"]
    return [
        (item, image, timings, {"size": len(chunk), "position": offset})
        for offset, (item, image) in enumerate(zip(chunk, images))
    ]


def _fail(chunk, error: str, result, manifest, progress) -> None:
    for item in chunk:
        manifest.append({"type": "failed", "key": item.key, "hash": item.hash, "job": item.job.index,
                         "line": item.job.line, "image": item.image, "index": item.index, "error": error})
        result.failed += 1
        result.failures.append({"line": item.job.line, "job": item.job.index, "image": item.image,
                                "prompt": item.req.prompt, "error": error})
        progress.image_failed(item, error)


def _write_task(plan, item, image, loaded, pipe, timings, batch_info, lib_versions, manifest, result, progress):
    from .generate import control_maps
    from .metadata import build_record
    from .output import write_recorded

    req = item.req
    scheduler_config = dict(pipe.scheduler.config)
    record = build_record(
        req, loaded,
        seed=item.seed,
        scheduler_config=scheduler_config,
        scheduler_class=type(pipe.scheduler).__name__,
        timings={k: round(v, 4) for k, v in timings.items()},
        batch={"image": item.index, "n": len(plan.images), "batch_size": batch_info["size"],
               "position": batch_info["position"], "source": plan.source, "line": item.job.line,
               "job": item.job.index, "request_hash": item.hash, "base_seed": plan.base_seed},
        lib_versions=lib_versions,
    )

    def task():
        written = write_recorded(image, plan.out_dir, item.name, record, metadata=req.metadata,
                                 extras=control_maps(req))
        manifest.append(_done_line(plan.out_dir, item, written.png, written.sidecar, written.sha256,
                                   record["output"]["pixels_sha256"]))
        result.done += 1
        progress.image_done(item, written.png)

    return task


def _device(device: str, world: int) -> str:
    from .models import resolve_device

    if world > 1 and device in ("auto", "cuda"):
        from accelerate import PartialState

        own = PartialState().device  # this process's GPU
        return "cpu" if own.type == "cpu" else str(own)
    return resolve_device(device)


def _latent(req: ResolvedRequest, loaded) -> tuple[int, int]:
    factor = getattr(loaded.pipe, "vae_scale_factor", 8) or 8
    return req.width // factor, req.height // factor


def _compile(loaded) -> None:
    denoiser = getattr(loaded.pipe, "unet", None) or getattr(loaded.pipe, "transformer", None)
    if denoiser is None:
        raise RunError("--compile: this pipeline has no UNet or transformer to compile")
    denoiser.compile(mode=os.environ.get("IMAGEGEN_COMPILE_MODE") or None,
                     backend=os.environ.get("IMAGEGEN_COMPILE_BACKEND", "inductor"))
    loaded.compiled = True


def _warmup(group_times: list[tuple[int, float]]) -> float:
    """The first call's extra time over the later calls' per-image time (compilation happens on the first call)."""
    count, first = group_times[0]
    later = [t / n for n, t in group_times[1:] if n]
    if not later:
        return first
    later.sort()
    steady = later[len(later) // 2]
    return max(0.0, first - steady * count)


def _empty_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()

