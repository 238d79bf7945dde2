"""`reproduce`: re-run an image's recorded recipe, and with verify, prove the pixels are the same."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .errors import UsageError, VerifyError
from .families import FAMILIES
from .generate import GenerationResult, run
from .inputs import read_image
from .metadata import a1111_layer, a1111_only, read_record, record_to_request, recorded_inputs
from .hashes import find_weights
from .hub import FILE_SUFFIXES
from .portable import for_replay, map_record, weights_entry, weights_of
from .presets import preset_files
from .progress import NullProgress, Progress
from .request import Request
from .resolve import resolve

# What --verify lets a replay change: where and how it is written, and weights that prove by sha256 to be the same.
VERIFY_KEEPS = frozenset({"out", "name", "metadata", "device"})
WEIGHT_FLAGS = {"--model": "model", "--config": "config", "--controlnet-model": "controlnet_model", "--ip-adapter-model": "ip_adapter_model",
                "--image-encoder": "image_encoder", "--lora": "lora", "--embedding": "embedding", "--vae": "vae"}


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
    """Re-run the recipe recorded in a PNG or sidecar (or a PNG's A1111 parameters, given a model or preset) into a
    new folder beside it (or overrides.out); with verify, prove the pixels are the same."""
    source, overrides, progress = Path(source), overrides or Request(), progress or NullProgress()
    record = None
    text = a1111_only(source)
    if text is not None:
        replay, original = _a1111_replay(source, text, verify, overrides, progress), source
    else:
        record, original = read_record(source)
        record = for_replay(record, original.parent)  # relative input paths are relative to the record's folder
        _check_overrides(verify, overrides, VERIFY_KEEPS | set(WEIGHT_FLAGS.values()))
        record = _locate_weights(record, overrides, source)
        replay = replay_layer(record, str(source))
    if overrides.out is None:
        overrides = Request(**{**overrides.given(), "out": str(original.parent / f"{original.stem}.reproduced")})
    if verify and not original.exists():
        raise UsageError(f"--verify: the original image {original} is missing")
    req = resolve(overrides, replay)
    if record is not None:
        _check_inputs(record, req, verify, progress)
        _check_weights(record, req, verify, overrides, progress)
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


def _check_overrides(verify: bool, overrides: Request, allowed: set[str]) -> None:
    if verify and overrides.given().keys() - allowed:
        raise UsageError("--verify compares with the original: drop the recipe overrides (--out, --name, --device "
                         "may stay; --model and the other weight flags when their sha256 matches the recorded one)")


def _a1111_replay(source: Path, text: str, verify: bool, overrides: Request, progress) -> Request:
    """A PNG with only A1111 parameters: its recipe as the replayed layer, on the model or preset the user names."""
    if overrides.model is None and overrides.preset is None:
        raise UsageError(f"{source}: no imagegen record, only A1111 parameters, which do not locate the model; give "
                         f"--model PATH_OR_REPO or --preset NAME to replay them")
    _check_overrides(verify, overrides, VERIFY_KEEPS | {"model", "preset"})
    layer, ignored = a1111_layer(text, str(source))
    if not verify:
        progress.note(f"{source.name}: replaying A1111 parameters as close as the recipe allows (other model "
                      f"weights and sampler implementations draw other pixels)"
                      + (f"; not replayed: {', '.join(ignored)}" if ignored else ""))
    return layer


def _locate_weights(record: dict, overrides: Request, source: Path) -> dict:
    """Local folders recorded by name (portable metadata) found again on this machine by their sha256; one that is
    not found must be named with its flag (checked by sha256 later), before anything loads."""
    def locate(model: dict, flag: str) -> dict:
        ident = model["id"]
        if not model.get("local") or getattr(overrides, WEIGHT_FLAGS[flag]) is not None or (
                os.path.isabs(ident) and os.path.exists(ident)):
            return model
        found = find_weights(model.get("sha256"))
        if found is None:
            kind = "file" if "size" in model or ident.lower().endswith(FILE_SUFFIXES) else "folder"
            raise UsageError(f"{source}: the recorded {flag[2:]} {ident!r} is a local {kind} not found on this "
                             f"machine (sha256 {(model.get('sha256') or '')[:10]}); pass {flag} PATH (its sha256 is "
                             f"checked)")
        return {**model, "id": str(found)}

    return map_record(record, lambda p: p, locate)


def _check_weights(record: dict, req, verify: bool, overrides: Request, progress) -> None:
    """Weights named again (--model PATH for a moved folder) must be the recorded ones: their sha256 proves it."""
    now = {name: spec.record for name, spec in req.adapters}
    now["model"] = {"id": req.model, **({"config": {"id": req.config}} if req.config else {})}
    current = weights_of(map_record(now, lambda p: p, lambda model, _flag: weights_entry(model, "full")))
    recorded = weights_of(record)
    for (flag, then), (_, model) in zip(recorded, current):
        given = getattr(overrides, WEIGHT_FLAGS[flag]) is not None
        want, have = then.get("sha256"), model.get("sha256")
        if want is None and not (given and verify):
            continue
        if want is None:
            raise UsageError(f"--verify: {flag} stands in only for a local folder recorded with its sha256; the "
                             f"record names {then['id']!r} without one")
        if have != want:
            message = (f"{flag} {model['id']}: its sha256 ({(have or 'none, not a local folder')[:10]}) differs from "
                       f"the recorded one ({want[:10]}): not the same weights")
            if verify:
                raise UsageError(f"--verify: {message}")
            progress.note(message)


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

    with read_image(original, label=str(original)) as a, read_image(regenerated, label=str(regenerated)) as b:
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
