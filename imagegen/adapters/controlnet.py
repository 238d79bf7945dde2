"""ControlNet: the control types (canny, depth, raw), where each net is chosen and checked, its map prepared once, and
its weights loaded into the family's ControlNet pipeline (built with from_pipe, sharing every base module)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

from ..errors import UsageError, closest
from ..families import FAMILIES
from ..fields import Field, integer, names, numbers
from ..hub import cached_file, canonical_weights, load_error, resolved_revision, split_revision
from ..inputs import InputImage, check_image, fit, load_rgb
from ..output import pixels_sha256
from .base import Adapter, ResolveContext, pinned

CANNY_LOW, CANNY_HIGH = 100, 200  # A1111's and diffusers' examples' defaults
PRESET_DEFAULT = ("-", "preset")  # a --controlnet-model placeholder: this net keeps the preset's default


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


class _ControlField(Field):
    def rebase(self, value, rebased):
        return tuple((kind, rebased(path, True)) for kind, path in value)


_NUMBERS = "a number or a list of numbers"
FIELDS = (
    _ControlField("control", parse_control, (str, list), "Steer with a ControlNet: canny:IMAGE (edges found with "
                  "OpenCV), depth:MAP (used as given) or raw:MAP (for the net named by --controlnet-model). Repeat for "
                  "several nets. The map is fitted to the output size and saved as <name>.control.png.",
                  path="image", metavar="TYPE:IMAGE", repeat=True),
    Field("control_scale", numbers(0.0, 10.0), (int, float, list), "ControlNet strength (default 1): one value for "
          "every net, or one per --control (repeat, or 0.7,0.5).", metavar="FLOAT", repeat=True, json_words=_NUMBERS),
    Field("control_start", numbers(0.0, 1.0), (int, float, list), "Fraction of the steps at which each net starts "
          "steering (default 0); one or one per --control.", metavar="FLOAT", repeat=True, json_words=_NUMBERS),
    Field("control_end", numbers(0.0, 1.0), (int, float, list), "Fraction of the steps at which each net stops "
          "(default 1); one or one per --control.", metavar="FLOAT", repeat=True, json_words=_NUMBERS),
    Field("controlnet_model", names, (str, list), "The net for each --control, in order (hub repo id, repo@revision "
          "or local folder; '-' keeps the preset's). Default: the preset's net for the type.", path="weights",
          metavar="REPO|DIR", repeat=True),
    Field("canny_low", integer(0, 1000), (int,), "Canny's lower hysteresis threshold (default 100).", metavar="INT"),
    Field("canny_high", integer(1, 1000), (int,), "Canny's upper hysteresis threshold (default 200).", metavar="INT"),
)


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


@dataclass(frozen=True)
class Controls:
    """A request's ControlNets, at its output size, with their record."""

    units: tuple[ControlUnit, ...]
    width: int
    height: int
    record: list = field(default_factory=list, compare=False, hash=False)

    def maps(self) -> list:
        return [control_map(u, self.width, self.height) for u in self.units]


@lru_cache(maxsize=32)
def _map(unit: ControlUnit, width: int, height: int):
    image = fit(load_rgb(unit.image), width, height)
    return CONTROL_TYPES[unit.type].preprocess(image, unit)


def control_map(unit: ControlUnit, width: int, height: int):
    """The map that steers the net: the input fitted to the output size, then preprocessed (canny); made once."""
    return _map(unit, width, height).copy()


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


def _net_config(model: str, revision: str | None) -> dict | None:
    """The net's config.json, from its folder or the HF cache (never the network)."""
    if Path(model).is_dir():
        path = Path(model) / "config.json"
        if not path.is_file():
            raise UsageError(f"--controlnet-model {model}: not a diffusers ControlNet folder (no config.json)")
        if not any(Path(model).glob("*.safetensors")) and any(Path(model).glob("*.bin")):
            raise UsageError(f"--controlnet-model {model}: has only pickle .bin weights, which can run arbitrary code "
                             f"when loaded; imagegen loads safetensors only (convert it, or use a safetensors copy)")
    else:
        path = cached_file(model, "config.json", revision)
        if path is None:  # not cached yet: loading downloads it, or explains why it cannot
            return None
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = None
    if not isinstance(config, dict):
        raise UsageError(f"--controlnet-model {model}: its config.json is not readable JSON")
    return config


@lru_cache(maxsize=64)
def check_net(model: str, revision: str | None, family) -> None:
    """Refuse a net of another family (or kind) before any weights load."""
    config = _net_config(model, revision)
    if config is None or family.owns_controlnet(config):
        return
    cls = config.get("_class_name")
    if cls == "ControlNetUnionModel" or config.get("num_mode"):
        raise UsageError(f"--controlnet-model {model}: union ControlNets (several modes in one net) are not supported "
                         f"yet; use a single-type net")
    owner = next((f for f in FAMILIES.values() if f.owns_controlnet(config)), None)
    if owner is None:
        raise UsageError(f"--controlnet-model {model}: {cls!r} is not a ControlNet imagegen runs ("
                         + ", ".join(f"{f.controlnet_class} for {f.name}" for f in FAMILIES.values() if f.controlnet_class)
                         + ")")
    raise UsageError(f"--controlnet-model {model}: a {owner.name} ControlNet ({cls}) cannot steer a {family.name} model")


def _chosen_net(kind: str, given: str | None, ctx: ResolveContext, flag: str) -> str:
    if given is not None and given not in PRESET_DEFAULT:
        return given
    if CONTROL_TYPES[kind].needs_model:
        raise UsageError(f"{flag}: a raw map needs --controlnet-model (a net trained on that kind of map)")
    chosen = ctx.preset.tables.get("controlnet", {}).get(kind)
    if chosen is None:
        have = ", ".join(sorted(ctx.preset.tables.get("controlnet", {}))) or "none"
        raise UsageError(f"{flag}: preset {ctx.preset.name!r} has no {kind} ControlNet for {ctx.family.name} (it has: "
                         f"{have}); pass --controlnet-model REPO_OR_FOLDER")
    return chosen


def _unit_record(unit: ControlUnit, controls: Controls, family) -> dict:
    return {
        "type": unit.type,
        "image": unit.image.record(),
        "preprocess": unit.preprocess(),
        "map_sha256": pixels_sha256(control_map(unit, controls.width, controls.height)),
        "model": {"id": unit.model, "revision": resolved_revision(unit.model, unit.revision),
                  "class": family.controlnet_class},
        "scale": unit.scale,
        "start": unit.start,
        "end": unit.end,
    }


_OPTIONAL_TEXT = (str, type(None))
_NUMBER = (int, float)
_UNIT_SHAPE = {
    "type": str,
    "image": {"path": str, "sha256": str},
    "preprocess": {"low_threshold": (int, type(None)), "high_threshold": (int, type(None))},
    "model": {"id": str, "revision": _OPTIONAL_TEXT},
    "scale": _NUMBER, "start": _NUMBER, "end": _NUMBER,
}


class ControlNet(Adapter):
    name = "control"
    fields = FIELDS
    preset_table = "controlnet"
    variant = "controlnet"
    record_shape = [_UNIT_SHAPE]

    def check_preset_table(self, table, where: str) -> dict:
        """[controlnet]: one default net per control type, e.g. canny = "diffusers/controlnet-canny-sdxl-1.0"."""
        if not isinstance(table, dict):
            raise UsageError(f"{where}: controlnet: must be a table ([controlnet]) of control type = repo id")
        allowed = [t for t, spec in CONTROL_TYPES.items() if not spec.needs_model]
        for key, value in table.items():
            if key not in allowed:
                raise UsageError(f"{where}: controlnet: unknown control type {key!r}{closest(key, allowed)}; valid: "
                                 f"{', '.join(allowed)}")
            if not isinstance(value, str) or not value.strip():
                raise UsageError(f"{where}: controlnet.{key}: must be a repo id or folder, got {value!r}")
        return dict(table)

    def resolve(self, given: dict, ctx: ResolveContext) -> Controls | None:
        """Every input checked (files opened and hashed, counts, nets known) and the maps made: no weights load."""
        controls = given.get("control") or ()
        if not controls:  # settings without a net: a batch's flags are every line's defaults, plain lines included
            return None
        family = ctx.family
        if family.controlnet_class is None:
            raise UsageError(f"--control: {family.name} models have no ControlNet support in diffusers")
        if family.pipeline_class(ctx.task, self.variant) is None:
            able = [t for (t, v) in family.pipelines if v == self.variant]
            raise UsageError(f"--control: diffusers has no {family.label} ControlNet pipeline for {ctx.task} (it has "
                             f"one for {', '.join(able)})")
        count = len(controls)
        if count > family.controlnets:
            raise UsageError(f"--control given {count} times: {family.label}'s ControlNet pipelines take "
                             f"{family.controlnets} net{'s' if family.controlnets > 1 else ''} in imagegen")
        scales = _per_net(given.get("control_scale"), count, 1.0, "--control-scale")
        starts = _per_net(given.get("control_start"), count, 0.0, "--control-start")
        ends = _per_net(given.get("control_end"), count, 1.0, "--control-end")
        models = given.get("controlnet_model") or ()
        if models and len(models) != count:
            raise UsageError(
                f"--controlnet-model: {len(models)} models for {count} --control inputs; give one per --control in "
                f"order ('-' keeps the preset's net for that one)"
            )
        low, high = given.get("canny_low") or CANNY_LOW, given.get("canny_high") or CANNY_HIGH
        if low >= high:
            raise UsageError(f"--canny-low {low} must be below --canny-high {high}")
        units = []
        for i, (kind, path) in enumerate(controls):
            flag = f"--control {kind}:{path}"
            if starts[i] >= ends[i]:
                raise UsageError(f"--control-start {starts[i]:g} must be below --control-end {ends[i]:g} ({flag})")
            chosen = _chosen_net(kind, models[i] if models else None, ctx, flag)
            image = check_image(path, label=flag)
            name, revision = split_revision(chosen)
            name = canonical_weights(name, "--controlnet-model")
            check_net(name, revision, family)
            units.append(ControlUnit(
                type=kind, image=image, model=name, revision=revision, scale=scales[i], start=starts[i], end=ends[i],
                canny_low=low if kind == "canny" else None, canny_high=high if kind == "canny" else None,
            ))
        spec = Controls(units=tuple(units), width=ctx.width, height=ctx.height)
        spec.record.extend(_unit_record(unit, spec, family) for unit in spec.units)
        return spec

    def adjust(self, spec: Controls, merged: dict, top: dict, family) -> list[str]:
        """Canny thresholds given for nets that find no edges are ignored (and not recorded): say so."""
        given = [f"--{k.replace('_', '-')}" for k in ("canny_low", "canny_high") if top.get(k) is not None]
        if given and not any(unit.type == "canny" for unit in spec.units):
            return [f"{' and '.join(given)} apply to canny controls only; ignored for "
                    f"{', '.join(sorted({unit.type for unit in spec.units}))}"]
        return []

    def key(self, spec: Controls) -> tuple:
        return tuple(unit.net_key() for unit in spec.units)

    def components(self, spec: Controls, loaded) -> dict:
        nets = [_load_net(loaded, *unit.net_key()) for unit in spec.units]
        return {"controlnet": nets[0] if len(nets) == 1 else nets}

    def call_arguments(self, spec: Controls, family, task: str, count: int = 1) -> dict:
        maps, units = spec.maps(), spec.units
        one = len(units) == 1
        return {
            family.control_argument(task): maps[0] if one else maps,
            "controlnet_conditioning_scale": units[0].scale if one else [u.scale for u in units],
            "control_guidance_start": units[0].start if one else [u.start for u in units],
            "control_guidance_end": units[0].end if one else [u.end for u in units],
        }

    def during_call(self, pipe, spec: Controls, family, seeds: list[int]):
        return family.controlnet_call(pipe, seeds)

    def extras(self, spec: Controls) -> list[tuple[str, Any]]:
        maps = spec.maps()
        if len(maps) == 1:
            return [("control", maps[0])]
        return [(f"control-{i}", m) for i, m in enumerate(maps, 1)]

    def hash_value(self, spec: Controls) -> Any:
        return [[u.type, u.image.sha256, u.model, u.revision, u.scale, u.start, u.end, u.preprocess()]
                for u in spec.units]

    def a1111(self, part: list) -> dict[str, str]:
        pairs = {}
        for i, unit in enumerate(part):
            # The sd-webui-controlnet extension's spelling, so A1111 tools show the units.
            thresholds = unit["preprocess"]
            fields = {"Module": unit["type"], "Model": unit["model"]["id"], "Weight": f"{unit['scale']:g}",
                      "Resize Mode": "Crop and Resize", "Guidance Start": f"{unit['start']:g}",
                      "Guidance End": f"{unit['end']:g}"}
            if "low_threshold" in thresholds:
                fields.update({"Threshold A": thresholds["low_threshold"], "Threshold B": thresholds["high_threshold"]})
            pairs[f"ControlNet {i}"] = ", ".join(f"{k}: {v}" for k, v in fields.items())
        return pairs

    def replay(self, part: list) -> dict:
        if not part:
            return {}
        fields = {
            "control": [f"{u['type']}:{u['image']['path']}" for u in part],
            "control_scale": [u["scale"] for u in part],
            "control_start": [u["start"] for u in part],
            "control_end": [u["end"] for u in part],
            "controlnet_model": [pinned(u["model"]) for u in part],
        }
        canny = next((u["preprocess"] for u in part if u["type"] == "canny"), None)
        if canny:
            fields["canny_low"], fields["canny_high"] = canny.get("low_threshold"), canny.get("high_threshold")
        return fields

    def inputs(self, part: list) -> dict[str, str]:
        return {u["image"]["path"]: u["image"]["sha256"] for u in part}

    def map_paths(self, part: list, image, weights) -> list:
        return [{**u, "image": {**u["image"], "path": image(u["image"]["path"])},
                 "model": weights(u["model"], "--controlnet-model")} for u in part]


def _load_net(loaded, model: str, revision: str | None):
    """Load (or reuse, for this loaded model) one ControlNet: safetensors only, no remote code; errors in one line."""
    key = ("controlnet", model, revision)
    if key not in loaded.cache:
        import warnings

        import diffusers
        import torch

        cls = getattr(diffusers, loaded.family.controlnet_class)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # FluxPosEmbed deprecation notice
                net = cls.from_pretrained(model, revision=revision, dtype=getattr(torch, loaded.dtype),
                                          use_safetensors=True)
        except Exception as exc:
            raise load_error(model, revision, exc, flag="--controlnet-model") from exc
        loaded.cache[key] = net.to(loaded.device).eval()
    return loaded.cache[key]
