"""The core of every command: run a resolved request through its pipeline and write each image with its recipe."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from .metadata import build_record, versions
from .output import next_index, pixels_sha256, render_name, slug, write_recorded
from .progress import NullProgress, Progress
from .request import Request, ResolvedRequest, resolve


@dataclass(frozen=True)
class ImageResult:
    """One generated image: where it went, its seed, hashes and the recipe written with it."""

    index: int
    seed: int
    path: Path | None
    sidecar: Path | None
    sha256: str | None  # of the PNG file
    pixels_sha256: str
    record: dict
    image: Any = None  # the PIL image, kept only when nothing was written


@dataclass(frozen=True)
class GenerationResult:
    """What one run made, and how long each part took."""

    request: ResolvedRequest
    images: tuple[ImageResult, ...]
    model: str
    revision: str | None
    device: str
    dtype: str
    pipeline_class: str
    timings: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        """The machine-readable result `--json` prints."""
        return {
            "images": [
                {
                    "path": str(i.path) if i.path else None,
                    "sidecar": str(i.sidecar) if i.sidecar else None,
                    "seed": i.seed,
                    "sha256": i.sha256,
                    "pixels_sha256": i.pixels_sha256,
                }
                for i in self.images
            ],
            "seeds": [i.seed for i in self.images],
            "model": self.model,
            "revision": self.revision,
            "preset": self.request.preset,
            "scheduler": self.request.scheduler,
            "device": self.device,
            "dtype": self.dtype,
            "timings": {k: round(v, 4) for k, v in self.timings.items()},
        }


def generate(prompt: str | None = None, *, progress: Progress | None = None, save: bool = True,
             **fields: Any) -> GenerationResult:
    """Generate images: `imagegen.generate("a fox", preset="sdxl", seed=1, n=2)`; fields as in the CLI flags."""
    flags = Request.from_mapping({"prompt": prompt, **fields}, where="generate()")
    return run(resolve(flags), progress=progress, save=save)


def run(req: ResolvedRequest, *, progress: Progress | None = None, save: bool = True) -> GenerationResult:
    """Load (or reuse) the model, generate req.n images in micro-batches, and write each as soon as it exists."""
    from .models import load_model, pipeline_for, resolve_device, resolve_dtype
    from .schedulers import build_scheduler, resolve_scheduler

    progress = progress or NullProgress()
    device = resolve_device(req.device)
    dtype = resolve_dtype(req.dtype, device, req.gpu_dtype)
    choice = resolve_scheduler(req.scheduler, req.family)
    if req.seed_was_random:
        progress.note(f"random seed {req.seed}")
    for note in req.notes:
        progress.note(note)

    started = time.perf_counter()
    with progress.loading(req.model):
        loaded = load_model(
            req.model, family=req.family, revision=req.revision, variant=req.variant, dtype=dtype, device=device
        )
        pipe = pipeline_for(loaded, req)  # the ControlNet / IP-Adapter weights load here
    load_s = time.perf_counter() - started  # near 0 when the pipeline was already loaded in this process
    pipe.scheduler = build_scheduler(choice, loaded.native_scheduler)
    lib_versions = versions()

    out_dir = Path(req.out).expanduser()
    first_index = next_index(out_dir) if save else 0
    totals = {"load_s": load_s, "denoise_s": 0.0, "decode_s": 0.0, "save_s": 0.0}
    results: list[ImageResult] = []
    seeds = req.seeds
    progress.start(total=req.n, steps=req.steps)
    for start in range(0, req.n, req.batch_size):
        batch_seeds = seeds[start : start + req.batch_size]
        progress.batch(start, len(batch_seeds), batch_seeds)
        images, call_timings = pipeline_call(pipe, [req] * len(batch_seeds), batch_seeds, progress)
        totals["denoise_s"] += call_timings["denoise_s"]
        totals["decode_s"] += call_timings["decode_s"]
        scheduler_config = dict(pipe.scheduler.config)  # after the call: some schedulers rewrite it in set_timesteps
        for offset, (image, seed) in enumerate(zip(images, batch_seeds)):
            index = start + offset
            record = build_record(
                req, loaded,
                seed=seed,
                scheduler_config=scheduler_config,
                scheduler_class=type(pipe.scheduler).__name__,
                timings={"load_s": round(load_s, 4), **{k: round(v, 4) for k, v in call_timings.items()}},
                batch={"image": index, "n": req.n, "batch_size": len(batch_seeds), "position": offset},
                lib_versions=lib_versions,
            )
            pix = pixels_sha256(image)
            record["output"] = {"pixels_sha256": pix}
            path = sidecar = sha = None
            if save:
                name = render_name(req.name, name_values(req, choice, first_index + index, seed))
                written = write_recorded(image, out_dir, name, record, metadata=req.metadata, extras=control_maps(req))
                path, sidecar, sha = written.png, written.sidecar, written.sha256
                totals["save_s"] += written.save_s
            result = ImageResult(
                index=index, seed=seed, path=path, sidecar=sidecar, sha256=sha, pixels_sha256=pix,
                record=record, image=None if save else image,
            )
            results.append(result)
            progress.image_done(result)
    progress.finish()
    totals["total_s"] = time.perf_counter() - started
    return GenerationResult(
        request=req,
        images=tuple(results),
        model=loaded.model,
        revision=loaded.revision,
        device=loaded.device,
        dtype=loaded.dtype,
        pipeline_class=loaded.pipeline_class,
        timings=totals,
    )


def name_values(req: ResolvedRequest, choice, index: int, seed: int) -> dict:
    return {
        "index": index,
        "seed": seed,
        "prompt": slug(req.prompt),
        "preset": slug(req.preset),
        "scheduler": choice.sampler.slug + (f"_{choice.schedule.key}" if choice.schedule else ""),
        "steps": req.steps,
        "cfg": f"{req.cfg:g}",
        "width": req.width,
        "height": req.height,
        "model": slug(Path(req.model).name),
        "date": date.today().strftime("%Y%m%d"),
    }


def call_kwargs(reqs: list[ResolvedRequest]) -> dict:
    """The family-specific pipeline arguments for one micro-batch of images that share a group key."""
    first = reqs[0]
    negatives = [r.negative for r in reqs]
    kwargs = {
        "prompt": [r.prompt for r in reqs],
        "num_images_per_prompt": 1,
        "num_inference_steps": first.steps,
        "width": first.width,
        "height": first.height,
    }
    if first.control:
        from .controlnet import call_arguments

        kwargs.update(call_arguments(first.family, first.control, first.width, first.height)[0])
    if first.ip_adapter is not None:
        from .ip_adapter import call_arguments as ip_arguments

        kwargs.update(ip_arguments(first.ip_adapter))
    if first.family == "flux":
        # Flux's guidance_scale is a distilled embedding (ignored by schnell); real CFG is true_cfg_scale.
        kwargs["true_cfg_scale"] = first.cfg
        kwargs["negative_prompt"] = negatives if first.cfg > 1 else None
        kwargs["guidance_scale"] = first.guidance if first.guidance is not None else 3.5
    else:
        kwargs["guidance_scale"] = first.cfg
        # An empty negative prompt is left to the pipeline's own default (SDXL: zero embeddings); group_key keeps
        # empty and non-empty negatives apart so this holds for every image of a micro-batch.
        kwargs["negative_prompt"] = negatives if any(negatives) else None
    return kwargs


def group_key(req: ResolvedRequest) -> tuple:
    """Images with equal keys can share one pipeline call (and its scheduler, size and step count)."""
    return (req.model, req.revision, req.variant, req.dtype, req.device, req.family, req.width, req.height,
            req.steps, req.scheduler, req.cfg, req.guidance, bool(req.negative), req.control, req.ip_adapter)


def control_maps(req: ResolvedRequest) -> list[tuple[str, object]]:
    """The maps that steered an image, to save beside it: `<name>.control.png`, or `.control-1.png`, ... for several."""
    from .controlnet import control_map

    maps = [control_map(unit, req.width, req.height) for unit in req.control]
    if len(maps) == 1:
        return [("control", maps[0])]
    return [(f"control-{i}", m) for i, m in enumerate(maps, 1)]


def pipeline_call(pipe, reqs: list[ResolvedRequest], seeds: list[int], progress: Progress,
                  embeddings: dict | None = None) -> tuple[list, dict]:
    """One pipeline call for a micro-batch: one CPU generator per image, so each depends only on its own seed.

    `embeddings` (prompt_embeds, ... from encode_prompt) replace the prompt and negative prompt: a comparison run
    encodes its one prompt once and reuses it for every cell.
    """
    import torch

    generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
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

    start = time.perf_counter()
    try:
        kwargs = call_kwargs(reqs)
        if embeddings is not None:
            kwargs.pop("prompt")
            kwargs.pop("negative_prompt")
            kwargs.update(embeddings)
        from .controlnet import seeded_map_encoding

        with seeded_map_encoding(pipe, reqs[0].family if reqs[0].control else "", seeds):
            output = pipe(
                **kwargs,
                generator=generators,
                output_type="pil",
                callback_on_step_end=on_step_end,
            )
    except torch.OutOfMemoryError as exc:
        from .errors import OutOfMemory

        raise OutOfMemory(
            f"out of memory at {reqs[0].size} with batch size {len(seeds)}: lower --batch-size or --size"
        ) from exc
    end = time.perf_counter()
    denoise_end = marks[-1] if marks else end
    return list(output.images), {"denoise_s": denoise_end - start, "decode_s": end - denoise_end}
