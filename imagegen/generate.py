"""txt2img: a resolved request run through the session, n images in micro-batches, each written with its recipe."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .output import check_inside, check_out_dir, next_index, pixels_sha256
from .progress import NullProgress, Progress
from .request import Request, ResolvedRequest
from .resolve import check_companions, resolve
from .session import Session, write


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
            "scheduler": self.request.scheduler.name,
            "device": self.device,
            "dtype": self.dtype,
            "timings": {k: round(v, 4) for k, v in self.timings.items()},
        }


def generate(prompt: str | None = None, *, progress: Progress | None = None, save: bool = True,
             **fields: Any) -> GenerationResult:
    """Generate images: `imagegen.generate("a fox", preset="sdxl", seed=1, n=2)`, or with `image=`, `mask=`,
    `strength=`, `hires=` (img2img, inpaint, hires fix); fields as in the CLI flags."""
    flags = Request.from_mapping({"prompt": prompt, **fields}, where="generate()")
    check_companions(flags)  # strength= without image= would be ignored: refused, as on the command line
    return run(resolve(flags), progress=progress, save=save)


def run(req: ResolvedRequest, *, progress: Progress | None = None, save: bool = True,
        auto_batch: bool = False) -> GenerationResult:
    """Load (or reuse) the model, generate req.n images in micro-batches, and write each as soon as it exists;
    auto_batch picks the micro-batch as batch does (--batch-size auto)."""
    progress = progress or NullProgress()
    out_dir = Path(req.out).expanduser()
    first_index = next_index(out_dir) if save else 0
    if save:  # everything that can fail without weights fails before they load, and before any note
        check_out_dir(out_dir)
        check_inside(out_dir, req.file_name(first_index, req.seed))
    session = Session()
    session.placement(req)  # an unavailable device is refused before any note
    if req.seed_was_random:
        progress.note(f"random seed {req.seed}")
    for note in req.notes:
        progress.note(note)
    started = time.perf_counter()
    session.load(req, progress)
    load_s = time.perf_counter() - started  # near 0 when the pipeline was already loaded in this process
    session.set_scheduler(req)
    if auto_batch:
        req = replace(req, batch_size=min(session.auto_batch_size(req), req.n))
    totals = {"load_s": load_s, "denoise_s": 0.0, "decode_s": 0.0, "save_s": 0.0}
    results: list[ImageResult] = []
    progress.start(total=req.n, steps=req.steps)
    for start in range(0, req.n, req.batch_size):
        seeds = req.seeds[start : start + req.batch_size]
        progress.batch(start, len(seeds), seeds)
        call = session.call([req] * len(seeds), seeds, progress)
        totals["denoise_s"] += call.timings["denoise_s"]
        totals["decode_s"] += call.timings["decode_s"]
        timings = {"load_s": round(load_s, 4), **{k: round(v, 4) for k, v in call.timings.items()}}
        for offset, (image, seed) in enumerate(zip(call.images, seeds)):
            record = session.record(req, call, seed=seed, timings=timings, batch={
                "image": start + offset, "n": req.n, "batch_size": len(seeds), "position": offset})
            result = _image_result(req, session, image, record, start + offset, seed,
                                   out_dir if save else None, first_index, totals)
            results.append(result)
            progress.image_done(result)
    progress.finish()
    totals["total_s"] = time.perf_counter() - started
    loaded = session.loaded
    return GenerationResult(request=req, images=tuple(results), model=loaded.model, revision=loaded.revision,
                            device=loaded.device, dtype=loaded.dtype, pipeline_class=loaded.pipeline_class,
                            timings=totals)


def _image_result(req, session, image, record: dict, index: int, seed: int, out_dir: Path | None, first_index: int,
                  totals: dict) -> ImageResult:
    """Hash the image and, when saving, write it with its recipe."""
    pix = pixels_sha256(image)
    record["output"] = {"pixels_sha256": pix}
    if out_dir is None:
        return ImageResult(index=index, seed=seed, path=None, sidecar=None, sha256=None, pixels_sha256=pix,
                           record=record, image=image)
    written = write(image, out_dir, req.file_name(first_index + index, seed), record, req)
    totals["save_s"] += written.save_s
    return ImageResult(index=index, seed=seed, path=written.png, sidecar=written.sidecar, sha256=written.sha256,
                       pixels_sha256=pix, record=record)
