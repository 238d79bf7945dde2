"""ControlNets: the control types (canny, depth, raw), where each net is chosen, its map prepared and its weights loaded."""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

from .errors import UsageError, closest
from .inputs import InputImage, check_image, fit, load_rgb

CANNY_LOW, CANNY_HIGH = 100, 200  # A1111's and diffusers' examples' defaults


@dataclass(frozen=True)
class ControlType:
    name: str
    help: str
    needs_model: bool  # no preset default: the user names the net trained on these maps
    preprocess: Callable[[Any, "ControlUnit"], Any]  # (RGB image at the output size, unit) -> the map


def _canny(image, unit: "ControlUnit"):
    import cv2
    import numpy as np
    from PIL import Image

    gray = cv2.cvtColor(np.asarray(image), cv2.COLOR_RGB2GRAY)
    edges = cv2.Canny(gray, unit.canny_low, unit.canny_high)
    return Image.fromarray(np.stack([edges] * 3, axis=-1))


def _as_given(image, unit: "ControlUnit"):
    return image


CONTROL_TYPES: dict[str, ControlType] = {
    "canny": ControlType("canny", "edges found with OpenCV's Canny (--canny-low/--canny-high) in the image", False, _canny),
    "depth": ControlType("depth", "a depth map, used as given (near = bright)", False, _as_given),
    "raw": ControlType("raw", "any prepared map, used as given, for the net named with --controlnet-model", True, _as_given),
}

# The ControlNet model class of each family, and the pipeline argument its map goes in.
NET_CLASSES = {"sdxl": "ControlNetModel", "sd3": "SD3ControlNetModel", "flux": "FluxControlNetModel"}
MAP_ARGUMENT = {"sdxl": "image", "sd3": "control_image", "flux": "control_image"}
_CLASS_FAMILY = {v: k for k, v in NET_CLASSES.items()}
PRESET_DEFAULT = ("-", "preset")  # a --controlnet-model placeholder: this net keeps the preset's default


def parse_control(value: Any) -> tuple[tuple[str, str], ...]:
    """'canny:edges.png' (a flag, repeatable), 'canny:a.png;depth:b.png' (a CSV cell) or a JSON list -> ((type, path),)."""
    items: list = []
    for part in value if isinstance(value, (list, tuple)) else [value]:
        if isinstance(part, dict):
            unknown = set(part) - {"type", "image"}
            if unknown or not isinstance(part.get("type"), str) or not isinstance(part.get("image"), str):
                raise ValueError(f'must be "TYPE:IMAGE" or {{"type": ..., "image": ...}}, got {part!r}')
            items.append(f"{part['type']}:{part['image']}")
        elif isinstance(part, str):
            items.extend(p.strip() for p in part.split(";") if p.strip())
        else:
            raise ValueError(f"must be TYPE:IMAGE, got {part!r}")
    out = []
    for item in items:
        kind, sep, path = item.partition(":")
        kind = kind.strip().lower()
        if not sep or not path.strip():
            raise ValueError(f"must be TYPE:IMAGE such as canny:edges.png, got {item!r}; types: {', '.join(CONTROL_TYPES)}")
        if kind not in CONTROL_TYPES:
            raise ValueError(f"unknown control type {kind!r}{closest(kind, CONTROL_TYPES)} in {item!r}; valid: {', '.join(CONTROL_TYPES)}")
        out.append((kind, path.strip()))
    if not out:
        raise ValueError("must name at least one TYPE:IMAGE")
    return tuple(out)


def split_revision(model: str) -> tuple[str, str | None]:
    """'org/net@rev' -> ('org/net', 'rev'); a local folder is taken whole (its name may hold '@')."""
    if "@" in model and not os.path.isdir(os.path.expanduser(model)):
        name, _, revision = model.rpartition("@")
        if name and revision:
            return name, revision
    return model, None


def canonical_weights(model: str, flag: str) -> str:
    """A local folder as an absolute path; a hub repo id as given."""
    expanded = os.path.expanduser(model)
    if model.startswith((".", "/", "~")) or os.path.isdir(expanded):
        if not os.path.isdir(expanded):
            raise UsageError(f"{flag} {model}: no such folder")
        return str(Path(expanded).resolve())
    if model.count("/") != 1:
        raise UsageError(f"{flag} {model}: no such folder, and not a hub repo id (org/name)")
    return model


@dataclass(frozen=True)
class ControlUnit:
    """One ControlNet of a request: its map, its net and how strongly and when it steers."""

    type: str
    image: InputImage
    model: str  # hub repo id or absolute folder
    revision: str | None
    scale: float
    start: float
    end: float
    canny_low: int | None = None
    canny_high: int | None = None

    def preprocess(self) -> dict:
        """The preprocessing parameters, as recorded."""
        out: dict = {"resize": "crop"}
        if self.type == "canny":
            out.update(low_threshold=self.canny_low, high_threshold=self.canny_high)
        return out

    def net_key(self) -> tuple:
        return (self.model, self.revision)


SETTINGS = ("control_scale", "control_start", "control_end", "controlnet_model", "canny_low", "canny_high")


def _per_net(values: tuple | None, count: int, default, flag: str) -> list:
    if not values:
        return [default] * count
    if len(values) == 1:
        return list(values) * count
    if len(values) != count:
        raise UsageError(
            f"{flag}: {len(values)} values for {count} ControlNet{'s' if count != 1 else ''}; give one value for all, "
            f"or one per --control in order"
        )
    return list(values)


def resolve_controls(merged: dict, preset, family: str) -> tuple[ControlUnit, ...]:
    """The request's ControlNets, every input checked (files opened and hashed, counts, nets known): no weights load."""
    from .families import get_family

    controls = merged.get("control") or ()
    if not controls:  # settings without a net: a batch's flags are every line's defaults, plain lines included
        return ()
    if not get_family(family).controlnet:
        raise UsageError(f"--control: {family} models have no ControlNet support in diffusers")
    count = len(controls)
    scales = _per_net(merged.get("control_scale"), count, 1.0, "--control-scale")
    starts = _per_net(merged.get("control_start"), count, 0.0, "--control-start")
    ends = _per_net(merged.get("control_end"), count, 1.0, "--control-end")
    models = merged.get("controlnet_model") or ()
    if models and len(models) != count:
        raise UsageError(
            f"--controlnet-model: {len(models)} models for {count} --control inputs; give one per --control in order "
            f"('-' keeps the preset's net for that one)"
        )
    low, high = merged.get("canny_low") or CANNY_LOW, merged.get("canny_high") or CANNY_HIGH
    if low >= high:
        raise UsageError(f"--canny-low {low} must be below --canny-high {high}")
    units = []
    for i, (kind, path) in enumerate(controls):
        flag = f"--control {kind}:{path}"
        if starts[i] >= ends[i]:
            raise UsageError(f"--control-start {starts[i]:g} must be below --control-end {ends[i]:g} ({flag})")
        chosen = models[i] if models and models[i] not in PRESET_DEFAULT else None
        if chosen is None:
            if CONTROL_TYPES[kind].needs_model:
                raise UsageError(f"{flag}: a raw map needs --controlnet-model (a net trained on that kind of map)")
            chosen = preset.controlnets.get(kind)
            if chosen is None:
                have = ", ".join(sorted(preset.controlnets)) or "none"
                raise UsageError(
                    f"{flag}: preset {preset.name!r} has no {kind} ControlNet for {family} (it has: {have}); "
                    f"pass --controlnet-model REPO_OR_FOLDER"
                )
        image = check_image(path, label=flag)
        name, revision = split_revision(chosen)
        name = canonical_weights(name, "--controlnet-model")
        check_net(name, revision, family)
        units.append(ControlUnit(
            type=kind, image=image, model=name, revision=revision, scale=scales[i], start=starts[i], end=ends[i],
            canny_low=low if kind == "canny" else None, canny_high=high if kind == "canny" else None,
        ))
    return tuple(units)


def _net_config(model: str, revision: str | None) -> dict | None:
    """The net's config.json, from its folder or the HF cache (never the network)."""
    if os.path.isdir(model):
        path = Path(model) / "config.json"
        if not path.is_file():
            raise UsageError(f"--controlnet-model {model}: not a diffusers ControlNet folder (no config.json)")
        if not any(Path(model).glob("*.safetensors")) and any(Path(model).glob("*.bin")):
            raise UsageError(f"--controlnet-model {model}: has only pickle .bin weights, which can run arbitrary code "
                             f"when loaded; imagegen loads safetensors only (convert it, or use a safetensors copy)")
    else:
        try:
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(model, "config.json", revision=revision, local_files_only=True))
        except Exception:  # not cached yet: loading downloads it, or explains why it cannot
            return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise UsageError(f"--controlnet-model {model}: its config.json is not readable JSON") from None


@lru_cache(maxsize=64)
def check_net(model: str, revision: str | None, family: str) -> None:
    """Refuse a net of another family (or kind) before any weights load."""
    config = _net_config(model, revision)
    if config is None:
        return
    cls = config.get("_class_name")
    if cls == "ControlNetUnionModel" or config.get("num_mode"):
        raise UsageError(f"--controlnet-model {model}: union ControlNets (several modes in one net) are not supported yet; "
                         f"use a single-type net")
    if cls not in _CLASS_FAMILY:
        raise UsageError(f"--controlnet-model {model}: {cls!r} is not a ControlNet imagegen runs "
                         f"({', '.join(f'{c} for {f}' for f, c in NET_CLASSES.items())})")
    if _CLASS_FAMILY[cls] != family:
        raise UsageError(f"--controlnet-model {model}: a {_CLASS_FAMILY[cls]} ControlNet ({cls}) cannot steer a {family} model")


# ---- at generation time


@lru_cache(maxsize=32)
def _map(unit: ControlUnit, width: int, height: int):
    image = fit(load_rgb(unit.image), width, height)
    return CONTROL_TYPES[unit.type].preprocess(image, unit)


def control_map(unit: ControlUnit, width: int, height: int):
    """The map that steers the net: the input fitted to the output size, then preprocessed (canny)."""
    return _map(unit, width, height).copy()


def call_arguments(family: str, units: tuple[ControlUnit, ...], width: int, height: int) -> tuple[dict, list]:
    """The pipeline arguments for these nets, and the maps (to save beside the image)."""
    maps = [control_map(u, width, height) for u in units]
    one = len(units) == 1
    kwargs = {
        MAP_ARGUMENT[family]: maps[0] if one else maps,
        "controlnet_conditioning_scale": units[0].scale if one else [u.scale for u in units],
        "control_guidance_start": units[0].start if one else [u.start for u in units],
        "control_guidance_end": units[0].end if one else [u.end for u in units],
    }
    return kwargs, maps


@contextmanager
def seeded_map_encoding(pipe, family: str, seeds: list[int]):
    """SD3's ControlNet pipeline VAE-encodes each map with `latent_dist.sample()` and no generator, drawing from the
    global torch RNG: the same seed then gives different images. While this is active, those draws come from one
    generator per image, seeded from the image's seed and the net's position: reproducible, and independent of the
    micro-batch (the classifier-free-guidance copy of row i draws from row i's generator too)."""
    if family != "sd3":
        yield
        return
    import torch

    vae = pipe.vae
    original = vae.encode
    calls = [0]

    def encode(x, *args, **kwargs):
        out = original(x, *args, **kwargs)
        dist = out.latent_dist if hasattr(out, "latent_dist") else out[0]
        net = calls[0]
        calls[0] += 1
        generators = [torch.Generator("cpu").manual_seed((seed * 1_000_003 + 7919 * (net + 1)) % 2**63) for seed in seeds]
        rows = x.shape[0]
        per_row = (generators * (rows // len(generators) + 1))[:rows] if rows != len(generators) else generators
        sample = dist.sample
        dist.sample = lambda generator=None: sample(generator=per_row)
        return out

    vae.encode = encode
    try:
        yield
    finally:
        del vae.encode  # the instance attribute: the class's method shows through again


_NETS: dict[tuple, Any] = {}


def load_controlnet(model: str, revision: str | None, family: str, dtype: str, device: str):
    """Load (or reuse) one ControlNet: safetensors only, no remote code; errors become one line."""
    import warnings

    import torch

    key = (model, revision, family, dtype, device)
    if key in _NETS:
        return _NETS[key]
    import diffusers

    from .models import load_error

    cls = getattr(diffusers, NET_CLASSES[family])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # FluxPosEmbed deprecation notice
            net = cls.from_pretrained(model, revision=revision, dtype=getattr(torch, dtype), use_safetensors=True)
    except Exception as exc:
        error = load_error(model, revision, exc)
        raise type(error)(str(error).replace("--model ", "--controlnet-model ", 1)) from exc
    net.to(device).eval()
    _NETS[key] = net
    return net


def clear_cache() -> None:
    _NETS.clear()
    _map.cache_clear()
