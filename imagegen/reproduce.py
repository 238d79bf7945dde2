"""`reproduce`: re-run an image's recorded recipe, and with verify, prove the pixels are the same."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import UsageError, VerifyError
from .generate import GenerationResult, run
from .families import FAMILIES
from .metadata import read_record, record_to_request, recorded_inputs
from .presets import preset_files
from .progress import Progress
from .request import Request
from .resolve import resolve


@dataclass(frozen=True)
class Verification:
    """How the regenerated image compares with the original."""

    original: Path
    regenerated: Path | None
    identical: bool
    max_pixel_diff: int
    differing_pixels: int


@dataclass(frozen=True)
class ReproduceResult:
    generation: GenerationResult
    verification: Verification | None

    def to_json(self) -> dict:
        out = self.generation.to_json()
        if self.verification:
            v = self.verification
            out["verify"] = {
                "original": str(v.original),
                "identical": v.identical,
                "max_pixel_diff": v.max_pixel_diff,
                "differing_pixels": v.differing_pixels,
            }
        return out


def replay_layer(record: dict, where: str) -> Request:
    """The recorded recipe as the 'replayed metadata' layer; a preset no longer on this machine falls back to its family's."""
    layer = record_to_request(record, where)
    if layer.preset and layer.preset not in preset_files():
        name = record["model"].get("family")
        family = FAMILIES.get(name) if isinstance(name, str) else None
        layer = Request(**{**layer.given(), "preset": family.default_preset if family else layer.preset})
    return layer


def reproduce(source: str | Path, *, verify: bool = False, overrides: Request | None = None,
              progress: Progress | None = None) -> ReproduceResult:
    """Re-run the recipe recorded in a PNG or sidecar into a new folder beside it (or overrides.out)."""
    source = Path(source)
    record, original = read_record(source)
    replay = replay_layer(record, str(source))
    overrides = overrides or Request()
    if overrides.out is None:
        overrides = Request(**{**overrides.given(), "out": str(original.parent / f"{original.stem}.reproduced")})
    if verify and not original.exists():
        raise UsageError(f"--verify: the original image {original} is missing")
    req = resolve(overrides, replay)
    _check_inputs(record, req, verify, progress)
    result = run(req, progress=progress)
    verification = None
    if verify:
        verification = compare(original, result.images[0].path)
        if not verification.identical:
            raise VerifyError(
                f"verify failed: {verification.regenerated} differs from {original}: max pixel difference "
                f"{verification.max_pixel_diff}, {verification.differing_pixels} pixels differ"
            )
    return ReproduceResult(generation=result, verification=verification)


def _check_inputs(record: dict, req, verify: bool, progress) -> None:
    """The control and reference images must be the recorded ones (by sha256) for the same pixels to come out."""
    now = recorded_inputs({name: spec.record for name, spec in req.adapters})
    for path, sha in recorded_inputs(record).items():
        if path in now and now[path] != sha:
            message = (f"{path} is not the image the original used (sha256 {now[path][:12]}... now, "
                       f"{sha[:12]}... recorded)")
            if verify:
                raise UsageError(f"--verify: {message}; restore it to verify")
            if progress is not None:
                progress.note(message)


def compare(original: Path, regenerated: Path) -> Verification:
    """Max absolute channel difference and count of differing pixels between two images."""
    import numpy as np
    from PIL import Image

    with Image.open(original) as a, Image.open(regenerated) as b:
        x = np.asarray(a.convert("RGB"), dtype=np.int16)
        y = np.asarray(b.convert("RGB"), dtype=np.int16)
    if x.shape != y.shape:
        return Verification(original, regenerated, False, 255, max(x.shape[0] * x.shape[1], y.shape[0] * y.shape[1]))
    diff = np.abs(x - y)
    return Verification(
        original=original,
        regenerated=regenerated,
        identical=bool(diff.max() == 0),
        max_pixel_diff=int(diff.max()),
        differing_pixels=int((diff.max(axis=-1) > 0).sum()),
    )
