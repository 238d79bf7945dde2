"""Planning a batch: the prompt file parsed, every job resolved, and each image's seed, recipe hash and file name
fixed, all before any model loads. Every bad line is reported at once; nothing runs unless every line is valid (or
--skip-invalid)."""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import ImagegenError, InvalidLines, UsageError
from ..output import check_inside, check_out_dir, first_free
from ..request import Request, ResolvedRequest
from ..resolve import resolve
from .manifest import read_manifest, request_hash
from .promptfile import Job, read_prompt_file

BATCH_NAME = "{index:05d}-{seed}-{prompt}"
# The most images one batch plans unless --max-images says more: a plan holds every image before any is made, and
# a typo (30 two-way {a|b} groups are 2**30 jobs) must be a one-line refusal, not gigabytes.
MAX_IMAGES = 100_000


def derive_seed(base_seed: int, job_index: int) -> int:
    """The seed of a job whose line gives none: a 32-bit hash of the run's base seed and the job's index."""
    digest = hashlib.sha256(f"imagegen-batch:{base_seed}:{job_index}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


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


def prepare(path: str, flags: Request, *, base_seed: int | None = None, fmt: str | None = None, expand: bool = False,
            skip_invalid: bool = False, restart: bool = False, stdin=None, engine=None,
            max_images: int = MAX_IMAGES) -> BatchPlan:
    """Parse and validate the whole file and fix every image's seed and name; loads no model."""
    prompt_file = read_prompt_file(path, fmt=fmt, expand=expand, stdin=stdin, max_jobs=max_images)
    total = sum(job.request.n or flags.n or 1 for job in prompt_file.jobs)
    if total > max_images:
        raise UsageError(f"{prompt_file.source}: makes {total:,} images, over the limit of {max_images:,} "
                         f"(--max-images N raises it)")
    out_dir = Path(flags.out or "outputs").expanduser()
    check_out_dir(out_dir)
    if restart:
        out_dir = _fresh_folder(out_dir)
    base_seed = _base_seed(out_dir, base_seed, engine)
    defaults = Request(**{**flags.given(), "name": flags.name or BATCH_NAME, "seed": None, "out": str(out_dir)})
    images, errors, resolved = _plan_jobs(prompt_file, defaults, base_seed)
    _refuse_bad_flag(resolved, defaults)
    errors.sort(key=_line_order)
    if errors and not skip_invalid:
        advice = "nothing was run (fix {0}, or pass --skip-invalid to run the valid lines)"
        if len(errors) == 1:  # one bad line is one line on stderr
            raise UsageError(f"{errors[0]}; {advice.format('it')}")
        raise InvalidLines(f"{prompt_file.source}: {len(errors)} invalid lines; {advice.format('them')}", errors)
    if not images:
        raise UsageError(f"{prompt_file.source}: no valid lines to run")
    _check_names(images, out_dir)
    return BatchPlan(source=prompt_file.source, out_dir=out_dir, base_seed=base_seed, images=tuple(images),
                     invalid=tuple(errors))


def _plan_jobs(prompt_file, defaults: Request, base_seed: int) -> tuple[list[PlannedImage], list[str], dict]:
    """Every valid job's images, every invalid line's message, and the resolved request per distinct line."""
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
    return images, errors, resolved


def _refuse_bad_flag(resolved: dict, defaults: Request) -> None:
    """When every line fails the same way the flags alone do, say it once, about the flag."""
    failures = {str(r) for r in resolved.values() if isinstance(r, ImagegenError)}
    if len(failures) != 1 or any(isinstance(r, ResolvedRequest) for r in resolved.values()):
        return
    message = failures.pop()
    try:
        resolve(defaults, line=Request(prompt="-", seed=0))
    except ImagegenError as exc:
        if str(exc) == message:
            raise


def _base_seed(out_dir: Path, given: int | None, engine) -> int:
    """The run's base seed: the one recorded in the folder, else --seed, else random (the same in every process of
    the batch's engine, which broadcasts process 0's; no engine: this process alone)."""
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
    return engine.broadcast(seed) if engine is not None else seed  # every process must derive the same seeds


def _as_field(message: str) -> str:
    """resolve() names flags (--size 65x64: ...); on a prompt-file line the same value came from a field (size ...)."""
    return re.sub(r"^--([a-z][a-z-]*)", lambda m: m.group(1).replace("-", "_"), message)


def _check_names(images: list[PlannedImage], out_dir: Path) -> None:
    """Every name unique, and every folder it lands in inside out_dir (checked once per folder)."""
    seen: dict[str, PlannedImage] = {}
    folders: set[str] = set()
    for item in images:
        if (folder := item.name.rpartition("/")[0]) not in folders:
            folders.add(folder)
            check_inside(out_dir, item.name)
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
    return [PlannedImage(job=job, req=req, image=image, index=start + image, seed=seed, hash=request_hash(req, seed),
                         name=req.file_name(start + image, seed))
            for image, seed in enumerate(req.seeds)]


def _fresh_folder(out_dir: Path) -> Path:
    """out_dir if it is empty or missing, else the first free out_dir-2, -3, ... (nothing is overwritten)."""
    if out_dir.is_dir() and not any(out_dir.iterdir()):
        return out_dir
    return first_free(out_dir, lambda n: out_dir.with_name(f"{out_dir.name}-{n}"))
