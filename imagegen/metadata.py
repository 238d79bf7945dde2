"""The image recipe: the imagegen/1 record, its A1111 `parameters` text, and reading either back as a request."""

from __future__ import annotations

import json
import math
import os
import platform
import re
from pathlib import Path

from .adapters import ADAPTERS
from .errors import UsageError
from .hub import FILE_SUFFIXES, resolved_revision
from .inputs import read_image
from .paths import MB, read_regular
from .readback import SCHEMA, check_record, sidecar_image_name
from .request import FIELDS, Request
from .schedulers import SAMPLERS, SCHEDULES, is_known

PNG_KEY = "imagegen"  # the PNG text chunk holding the JSON record
A1111_KEY = "parameters"


def versions() -> dict:
    """Library versions that affect the pixels."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for package in ("imagegen", "diffusers", "torch", "transformers", "accelerate", "safetensors", "pillow"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = None
    return out


def _jsonable(value):
    """Scheduler configs hold numpy scalars, tuples and FrozenDicts: make them plain JSON."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return _jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # strict JSON has no Infinity/NaN (DPM++'s lambda_min_clipped is -inf)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def build_record(req, loaded, *, seed: int, scheduler_config: dict, scheduler_class: str, timings: dict,
                 batch: dict, lib_versions: dict) -> dict:
    """The full recipe of one image: everything needed to make it again, and how it was made."""
    return {
        "schema": SCHEMA,
        "mode": req.mode.name,
        "prompt": req.prompt,
        "negative": req.negative,
        "prompt_syntax": req.prompt_syntax,
        "seed": seed,
        "steps": req.steps,
        "cfg": req.cfg,
        "guidance": req.guidance,
        "width": req.width,
        "height": req.height,
        "scheduler": {"name": req.scheduler.name, "class": scheduler_class, "config": _jsonable(scheduler_config)},
        "model": {
            "id": loaded.model,
            "revision": loaded.revision,
            "variant": loaded.variant,
            "family": loaded.family.name,
            "pipeline_class": loaded.pipeline_class,
            "preset": req.preset,
            "text_encoders": loaded.text_encoders,
            **_single_file(req),
        },
        "runtime": {"dtype": loaded.dtype, "device": loaded.device, "rng": "cpu", **loaded.options.record(),
                    "memory": loaded.memory},
        **{name: spec.record for name, spec in req.adapters},  # computed once, when the request was resolved
        "batch": batch,
        "versions": lib_versions,
        "timings": timings,
    }


def _single_file(req) -> dict:
    """A single-file model's architecture source, and the repo that lent the components it lacks."""
    if req.config is None:
        return {}
    out: dict = {"config": {"id": req.config}}
    if req.base is not None:
        repo, revision, variant = req.base
        out["base"] = {"id": repo, "revision": resolved_revision(repo, revision), "variant": variant}
    return out


def _a1111_value(value) -> str:
    text = str(value)
    return json.dumps(text) if any(c in text for c in ",:\n") else text


def a1111_parameters(record: dict) -> str:
    """A1111's `parameters` text: prompt, 'Negative prompt: ...', then one line of 'Key: value' pairs."""
    sampler, _, schedule = _split_scheduler(record["scheduler"]["name"])
    pairs = {
        "Steps": record["steps"],
        "Sampler": sampler,
        "Schedule type": schedule or "Automatic",
        "CFG scale": f"{record['cfg']:g}",
        "Seed": record["seed"],
        "Size": f"{record['width']}x{record['height']}",
        "Model": _model_name(record["model"]["id"]),
    }
    if record["model"].get("sha256"):
        pairs["Model hash"] = record["model"]["sha256"][:10]
    if record["model"].get("revision"):
        pairs["Model revision"] = record["model"]["revision"][:10]
    if record.get("guidance") is not None:
        pairs["Distilled CFG Scale"] = f"{record['guidance']:g}"
    for adapter in ADAPTERS:
        if record.get(adapter.name):
            pairs.update(adapter.a1111(record[adapter.name]))
    pairs["RNG"] = "CPU"
    pairs["Version"] = f"imagegen {record['versions'].get('imagegen') or ''}".strip()
    lines = [record["prompt"]]
    if record.get("negative"):
        lines.append(f"Negative prompt: {record['negative']}")
    lines.append(", ".join(f"{k}: {_a1111_value(v)}" for k, v in pairs.items()))
    return "\n".join(lines)


def _model_name(ident: str) -> str:
    """A1111's `Model:` is a name, never a path: a local folder's last component, a checkpoint's file name without
    its extension (as A1111 1.6+ writes it), a hub repo id as it is."""
    if ident.startswith(("/", "~", ".")) or "\\" in ident:
        ident = re.split(r"[\\/]", ident.rstrip("/\\"))[-1] or ident
    stem, ext = os.path.splitext(ident)
    return stem if stem and ext.lower() in FILE_SUFFIXES else ident


def _split_scheduler(name: str) -> tuple[str, str, str | None]:
    """'DPM++ 2M Karras' -> ('DPM++ 2M', ' ', 'Karras'), using the registry's schedule names."""
    for schedule in SCHEDULES.values():
        if name.endswith(" " + schedule.a1111):
            return name[: -len(schedule.a1111) - 1], " ", schedule.a1111
    return name, "", None


# The regex A1111 itself uses to read the last line (modules/infotext_utils.py).
_A1111_PAIR = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def parse_parameters(text: str) -> dict:
    """Read A1111 `parameters` text back the way A1111 does: {'Prompt', 'Negative prompt', 'Steps', ...}."""
    *lines, last = text.strip().split("\n")
    if len(_A1111_PAIR.findall(last)) < 3:
        lines.append(last)
        last = ""
    prompt, negative, in_negative = [], [], False
    for line in lines:
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[len("Negative prompt:"):].strip()
        (negative if in_negative else prompt).append(line)
    result = {"Prompt": "\n".join(prompt), "Negative prompt": "\n".join(negative)}
    for key, value in _A1111_PAIR.findall(last):
        value = value.strip()
        if value.startswith('"') and value.endswith('"'):
            value = json.loads(value)
        result[key.strip()] = value
    return result


# ---- reading a record back


def read_record(path: str | Path) -> tuple[dict, Path]:
    """The imagegen/1 record of a PNG (its chunk, else its sidecar) or of a sidecar JSON, and the image path."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{path}: no such file")
    if path.suffix.lower() == ".json":
        try:
            record = json.loads(read_regular(path, label=str(path), limit=16 * MB).decode("utf-8"))
        except (OSError, ValueError) as exc:
            raise UsageError(f"{path}: not a readable JSON sidecar ({getattr(exc, 'strerror', None) or exc})") from None
        except RecursionError:
            raise UsageError(f"{path}: not a readable JSON sidecar (nested too deeply)") from None
        check_record(record, str(path))
        name = sidecar_image_name(record, str(path))
        return record, path.with_name(name) if name else path.with_suffix(".png")
    else:
        image = path
        record = _png_record(path)
        if record is None:
            sidecar = path.with_suffix(".json")
            if not sidecar.exists():
                raise UsageError(
                    f"{path}: no imagegen metadata (no '{PNG_KEY}' chunk and no {sidecar.name}); "
                    f"was it written with --metadata none?"
                )
            return read_record(sidecar)[0], image
    check_record(record, str(path))
    return record, image


def _png_text(path: Path) -> dict:
    with read_image(path, label=str(path)) as im:
        text = getattr(im, "text", {})
    return {k: v for k, v in text.items() if isinstance(v, str)}


def _png_record(path: Path) -> dict | None:
    text = _png_text(path).get(PNG_KEY)
    if text is None:
        return None
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        raise UsageError(f"{path}: its '{PNG_KEY}' chunk is not valid JSON") from None


def a1111_only(path: str | Path) -> str | None:
    """The A1111 `parameters` text of a PNG that has no imagegen record (no chunk, no sidecar), else None."""
    path = Path(path)
    if path.suffix.lower() == ".json" or not path.is_file():
        return None
    text = _png_text(path)
    if PNG_KEY in text or path.with_suffix(".json").exists():
        return None
    return text.get(A1111_KEY)


# A1111 `parameters` keys a replay reads -> the request field; other keys are left out (see a1111_layer).
_A1111_FIELDS = {"Steps": "steps", "CFG scale": "cfg", "Seed": "seed", "Size": "size"}


def a1111_layer(text: str, where: str) -> tuple[Request, list[str]]:
    """A1111 text as the replayed layer (prompt, negative, steps, sampler and schedule type, CFG, seed, size), and
    the keys it leaves out."""
    parsed = parse_parameters(text)
    values = {"prompt": parsed.pop("Prompt"), "negative": parsed.pop("Negative prompt")}
    for key, name in _A1111_FIELDS.items():
        if key in parsed:
            try:
                values[name] = FIELDS[name].parse(parsed.pop(key))
            except ValueError as exc:
                raise UsageError(f"{where}: A1111 parameters {key!r}: {exc}") from None
    sampler, schedule = parsed.pop("Sampler", None), parsed.pop("Schedule type", None)
    if sampler:
        name = sampler if schedule in (None, "", "Automatic") else f"{sampler} {schedule}"
        values["scheduler"] = _a1111_scheduler(name, where)
    return Request(**values), sorted(parsed)


def _a1111_scheduler(name: str, where: str) -> str:
    """The sampler (and schedule type) if imagegen knows it; else one line with the closest names."""
    import difflib

    if is_known(name):
        return name
    known = [s.a1111 for s in SAMPLERS.values()]
    known += [f"{s} {schedule.a1111}" for s in known for schedule in SCHEDULES.values()]
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    samplers = ", ".join(s.a1111 for s in SAMPLERS.values())
    hint = f"closest: {', '.join(close)}" if close else f"known samplers: {samplers}"
    raise UsageError(f"{where}: A1111 parameters 'Sampler': {name!r} is not a sampler imagegen knows; {hint} "
                     f"(see `imagegen schedulers`)")


def recorded_inputs(record: dict) -> dict[str, str]:
    """Every input image the record names -> its recorded sha256."""
    out: dict[str, str] = {}
    for adapter in ADAPTERS:
        if record.get(adapter.name):
            out.update(adapter.inputs(record[adapter.name]))
    return out


def record_to_request(record: dict, where: str):
    """The replay layer: the recorded recipe of one image as a Request (validated like any other input)."""
    values = {name: f.read(record) for name, f in FIELDS.items() if f.replay is not None}
    for adapter in ADAPTERS:
        try:
            values.update(adapter.replay(record.get(adapter.name)))
        except (KeyError, TypeError, AttributeError) as exc:
            raise UsageError(f"{where}: metadata {adapter.name!r} is malformed ({exc!r} missing)") from None
    return Request.from_mapping(values, where=where)
