"""One generation session: the run loop txt2img, batch micro-batches and compare cells share. It loads (or reuses) the
model, gives a request its pipeline (in-place adapters applied, the family's variant built with from_pipe, so base
weights are in memory once), swaps the scheduler, makes one pipeline call per micro-batch with one CPU generator per
image, and builds and writes each image's record."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .adapters import ADAPTERS
from .errors import OutOfMemory
from .fit import plan as plan_memory
from .fit import record as memory_record
from .loading import make_invariant
from .metadata import a1111_parameters, build_record, versions
from .output import Encoded, Written, encode_image, pixels_sha256, place_image
from .portable import for_writing
from .prompting import PromptBatch, prepare, split
from .runtime import LoadOptions, before_call, check_device, denoiser_calls
from .schedulers import build_scheduler

_BY_NAME = {adapter.name: adapter for adapter in ADAPTERS}


def active(req) -> list[tuple[Any, Any]]:
    """(adapter, spec) for each adapter the request uses, in registry order."""
    return [(_BY_NAME[name], spec) for name, spec in req.adapters]


@dataclass(frozen=True)
class Call:
    """What one pipeline call made: its images, timings, and the scheduler as it ran (some rewrite their config)."""

    images: list
    timings: dict  # denoise_s (prompt encoding + denoising), decode_s
    scheduler_config: dict
    scheduler_class: str


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


class Session:
    """Loads, calls, records and writes; one per command run (the loaded model itself is kept per process)."""

    def __init__(self, *, device: Callable[[str], str] | None = None):
        from .loading import resolve_device

        self._device = device or resolve_device  # a batch engine gives each process its own device
        self.versions = versions()  # library versions, read once per run
        self.loaded = None
        self.pipe = None
        self._noted: set[str] = set()
        self.fit = None  # (request, device, dtype, imagegen.fit.Fit or None) of the last load
        self.requested = None  # the memory and speed settings the last load was asked for
        self._stepped = False  # --memory auto steps down once per run
        self._stepped_to: tuple[str, str] | None = None  # (the step stepped down to, the one that ran out of memory)

    def placement(self, req) -> tuple[str, str]:
        """(device, dtype) for the request: an unavailable device is refused here, before anything loads."""
        from .loading import resolve_dtype

        device = self._device(req.device)
        return device, resolve_dtype(req.dtype, device, req.gpu_dtype)

    def load(self, req, progress):
        """The pipeline that runs `req`, its model loaded (or reused) and its adapters applied; returns it. Under
        --memory auto on a GPU, the memory plan is said first (imagegen.fit)."""
        device, dtype = self.placement(req)
        self.requested = LoadOptions.of(req)  # what the request asked for (a memory plan may load it otherwise)
        fit = plan_memory(req, self.requested, device, dtype)
        if fit is not None and self._stepped_to is not None:
            fit = fit.at(*self._stepped_to)  # after a step down, later loads of the run start there
        if fit is not None:
            self._note(progress)(fit.line(req.preset or req.model, req.size))
        return self._load(req, progress, device, dtype, fit)

    def _load(self, req, progress, device: str, dtype: str, fit):
        from .loading import load_model  # looked up per call, so a test can stand in for the loader

        options = fit.options(LoadOptions.of(req)) if fit is not None else LoadOptions.of(req).concrete()
        check_device(options, device)
        try:
            with progress.loading(req.model):
                self.loaded = load_model(req.model, family=req.family, revision=req.revision, variant=req.variant,
                                         dtype=dtype, device=device, config_folder=req.config_folder,
                                         base=req.base, options=options)
                self.pipe = pipeline_for(self.loaded, req)  # the adapters' weights load here
        except OutOfMemory:
            lower = self._down(fit, req, progress)
            if lower is None:
                raise
        else:
            self.fit = (req, device, dtype, fit)
            self.loaded.memory = memory_record(req, fit)
            return self.pipe
        return self._load(req, progress, device, dtype, lower)  # outside the handler: its frames let go of the GPU

    def _down(self, fit, req, progress):
        """The auto plan one step down after running out of memory (once per session), said; None if none."""
        lower = fit.down() if fit is not None and not self._stepped else None
        if lower is not None:
            self._stepped, self._stepped_to = True, (lower.step, lower.stepped_from)
            progress.note(lower.line(req.preset or req.model, req.size))
            from .loading import unload

            self.loaded = self.pipe = None
            unload()
        return lower

    def auto_batch_size(self, req) -> int:
        """`--batch-size auto` for the loaded pipeline: by its device and the request's latent size."""
        factor = getattr(self.pipe, "vae_scale_factor", 8) or 8
        return auto_batch_size(self.loaded.device, req.width // factor, req.height // factor)

    def set_scheduler(self, req) -> None:
        """A fresh scheduler of the request's choice, built from the model's own scheduler config."""
        self.pipe.scheduler = build_scheduler(req.scheduler, self.loaded.native_scheduler)

    def call(self, reqs: list, seeds: list[int], progress, prompts: PromptBatch | None = None) -> Call:
        """One pipeline call (`_call`); under --memory auto, out of memory steps the plan down once and calls again
        (after a step down the prompts are encoded again: the text encoders may have moved)."""
        try:
            return self._call(reqs, seeds, progress, prompts)
        except OutOfMemory:
            req, device, dtype, fit = self.fit or (None, None, None, None)
            lower = self._down(fit, req, progress)
            if lower is None:
                raise
        self._load(req, progress, device, dtype, lower)  # outside the handler: its frames let go of the GPU
        self.set_scheduler(reqs[0])
        return self._call(reqs, seeds, progress, None if prompts is None else self.encode(reqs[0], progress))

    def _call(self, reqs: list, seeds: list[int], progress, prompts: PromptBatch | None = None) -> Call:
        """One pipeline call for a micro-batch of requests sharing a group key (more where their prompts' embeddings
        differ in length: imagegen.prompting); one CPU generator per image, so each depends only on its own seed.
        `prompts` (from `encode`, compare's encode-once) stands in for the prompts. Each part then finishes the
        images (an inpaint composited, a hires pass run)."""
        first = reqs[0]
        start = time.perf_counter()
        batches = [prompts] if prompts is not None else prepare(
            self.pipe, reqs, active(first), self._note(progress), device=self.loaded.device, cache=self.loaded.prompts)
        if limit := first.family.prompts_per_call.get(type(self.pipe).__name__):
            batches = [part for batch in batches for part in split(batch, limit)]
        images: list = [None] * len(reqs)
        denoise = 0.0
        for batch in batches:
            sub, sub_seeds = [reqs[i] for i in batch.indexes], [seeds[i] for i in batch.indexes]
            begun = time.perf_counter()
            output, marks = self._invoke(self.pipe, call_arguments(sub, batch), sub_seeds, progress, first)
            denoise += (marks[-1] if marks else time.perf_counter()) - begun
            done = output.images
            run = _Run(self, sub, sub_seeds, progress, batch)
            for adapter, spec in active(first):
                done = adapter.finish(spec, done, run)
            for index, image in zip(batch.indexes, done):
                images[index] = image
        total = time.perf_counter() - start
        return Call(images=images, timings={"denoise_s": min(denoise, total), "decode_s": max(total - denoise, 0.0)},
                    scheduler_config=dict(self.pipe.scheduler.config), scheduler_class=type(self.pipe.scheduler).__name__)

    def encode(self, req, progress) -> PromptBatch:
        """The request's prompts encoded once, for calls that share them (compare's cells)."""
        return prepare(self.pipe, [req], active(req), self._note(progress), embed=True, device=self.loaded.device,
                       cache=self.loaded.prompts)[0]

    def _note(self, progress) -> Callable[[str], None]:
        """progress.note, once per distinct message in this session (a long prompt in a batch is noted once)."""
        def note(message: str) -> None:
            if message not in self._noted:
                self._noted.add(message)
                progress.note(message)

        return note

    def _invoke(self, pipe, kwargs: dict, seeds: list[int], progress, first) -> tuple[Any, list[float]]:
        """Call `pipe` with fresh per-image generators; (its output, the time each step ended)."""
        import torch

        generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
        before_call(pipe, first.family, self.loaded.options, denoiser_calls(kwargs))
        if hasattr(pipe.scheduler, "noise_sampler_seed"):
            # DPM++ SDE draws Brownian-tree noise from its own seeds: one per image, like the generators.
            pipe.scheduler.noise_sampler_seed = list(seeds)
            pipe.scheduler.noise_sampler = None
        marks: list[float] = []

        def on_step_end(pipe_, step, _timestep, callback_kwargs):
            marks.append(time.perf_counter())
            # Second-order samplers (Heun, DPM2, DPM++ SDE) take more model steps than --steps.
            progress.step(step + 1, len(pipe_.scheduler.timesteps))
            return callback_kwargs

        kwargs = {"output_type": "pil", **kwargs}
        try:
            with contextlib.ExitStack() as stack:
                for adapter, spec in active(first):
                    stack.enter_context(adapter.during_call(pipe, spec, first.family, seeds))
                output = pipe(**kwargs, generator=generators, callback_on_step_end=on_step_end)
        except torch.OutOfMemoryError as exc:
            raise OutOfMemory(
                f"out of memory at {kwargs.get('width')}x{kwargs.get('height')} with batch size {len(seeds)}: lower "
                f"--batch-size or --size"
            ) from exc
        return output, marks

    def record(self, req, call: Call, *, seed: int, timings: dict, batch: dict) -> dict:
        """The image's full recipe."""
        record = build_record(req, self.loaded, seed=seed, scheduler_config=call.scheduler_config,
                              scheduler_class=call.scheduler_class, timings=timings, batch=batch,
                              lib_versions=self.versions)
        record["runtime"]["pipeline_class"] = type(self.pipe).__name__  # the mode's (from_pipe), not the loaded one
        return record


@dataclass(frozen=True)
class _Run:
    """What a part's finish step may use: the micro-batch, and `again` for a second pass (hires fix)."""

    session: Session
    reqs: list
    seeds: list[int]
    progress: Any
    prompts: PromptBatch

    @property
    def pipe(self):
        return self.session.pipe

    def again(self, task: str, overrides: dict) -> list:
        """The same micro-batch through the family's `task` pipeline (from_pipe: the same modules), with the same
        seeds, scheduler and prompts, and `overrides` on top of the call arguments; its images."""
        session, first = self.session, self.reqs[0]
        pipe = pipeline_for(session.loaded, first, task=task)
        pipe.scheduler = session.pipe.scheduler  # the request's scheduler; each call sets its own timesteps
        kwargs = call_arguments(self.reqs, self.prompts)
        kwargs.pop("output_type", None)
        kwargs.update(overrides)
        kwargs.update(first.family.schedule_arguments(kwargs["num_inference_steps"]))
        output, _ = session._invoke(pipe, kwargs, self.seeds, self.progress, first)
        return list(output.images)


def call_arguments(reqs: list, prompts: PromptBatch | None = None) -> dict:
    """The pipeline arguments of one micro-batch: the mode's, each adapter's, then what CFG means for the family, and
    the prompts as the encoders read them (text, or embeddings)."""
    first = reqs[0]
    kwargs = first.mode.call_arguments(reqs)
    for adapter, spec in active(first):
        kwargs.update(adapter.call_arguments(spec, first.family, first.mode.task, len(reqs)))
    negatives = prompts.negatives if prompts is not None else [r.negative for r in reqs]
    kwargs.update(first.family.guidance_arguments(first.cfg, first.guidance, negatives))
    kwargs.update(first.family.schedule_arguments(kwargs["num_inference_steps"]))
    if prompts is not None and prompts.embeddings is not None:
        kwargs.pop("prompt")
        kwargs.pop("negative_prompt", None)
        kwargs.update(first.family.embeddings_for(prompts.embeddings, first.cfg))
    elif prompts is not None:
        kwargs["prompt"] = list(prompts.prompts)
    return kwargs


def write(image, out_dir: Path, name: str, record: dict, req) -> Written:
    """Write an image with its recipe (see `encode`), atomically and never over an existing file."""
    return place_image(encode(image, out_dir, name, record, req), out_dir, name)


def encode(image, out_dir: Path, name: str, record: dict, req) -> Encoded:
    """An image encoded with its recipe (A1111 chunk, JSON chunk, sidecar record) and its adapters' extras (control
    maps), for writing as `name` in `out_dir`; the record gains the pixel hash if it lacks one. Metadata 'portable'
    names local files without their absolute paths (imagegen.portable); with 'none', only the pixels are written."""
    record.setdefault("output", {"pixels_sha256": pixels_sha256(image)})
    extras = [extra for adapter, spec in active(req) for extra in adapter.extras(spec)]
    if req.metadata == "none":
        return encode_image(image, parameters=None, record=None, extras=extras)
    written = for_writing(record, req.metadata, (Path(out_dir) / name).parent)
    return encode_image(image, parameters=a1111_parameters(written), record=written, extras=extras)


def pipeline_for(loaded, req, task: str | None = None):
    """The pipeline that runs `req` (or its `task`, for a second pass): the loaded one with the request's in-place
    adapters applied (and others removed), or the family's class for its mode, preset and adapters, built with
    `from_pipe`: the same module objects, so the base weights are in memory once whatever mix of requests a run
    holds."""
    base = loaded.pipe
    if _apply_in_place(loaded, req):
        loaded.derived.clear()  # built with the components the change replaced
        make_invariant(base, loaded.device)
    shaping = [(adapter, spec) for adapter, spec in active(req) if adapter.variant and task is None]
    variant = shaping[0][0].variant if shaping else req.pipeline_variant if task is None else None
    cls = req.family.pipeline_class(task or req.mode.task, variant)
    if cls == type(base).__name__ and not shaping:
        return base
    key = (cls, tuple(adapter.key(spec) for adapter, spec in shaping))
    if key not in loaded.derived:
        import warnings

        import diffusers

        components = {}
        for adapter, spec in shaping:
            components.update(adapter.components(spec, loaded))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pipe = getattr(diffusers, cls).from_pipe(base, **components)
        req.family.prepare_pipeline(pipe)
        pipe.set_progress_bar_config(disable=True)
        make_invariant(pipe, loaded.device)
        loaded.derived.clear()  # one variant pipeline at a time (the adapters' weights stay cached)
        loaded.derived[key] = pipe
    return loaded.derived[key]


def _apply_in_place(loaded, req) -> bool:
    """Apply, update or remove each in-place adapter so the base pipeline matches the request; True if it changed."""
    specs = dict(req.adapters)
    changed = False
    for adapter in ADAPTERS:
        if not adapter.in_place:
            continue
        spec = specs.get(adapter.name)
        wanted = adapter.key(spec) if spec is not None else None
        current = loaded.applied.get(adapter.name)
        if current == wanted:
            if spec is not None:
                adapter.update(loaded.pipe, spec)
            continue
        if current is not None:
            adapter.remove(loaded.pipe, loaded)
            del loaded.applied[adapter.name]
        if spec is not None:
            adapter.apply(loaded.pipe, spec, loaded)
            loaded.applied[adapter.name] = wanted
        changed = True
    return changed

