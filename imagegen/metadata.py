"""The image recipe: the imagegen/1 record, its A1111 `parameters` text, and reading either back as a request."""

from __future__ import annotations

import json
import math
import platform
import re
from functools import lru_cache
from pathlib import Path

from .errors import UsageError

SCHEMA = "imagegen/1"
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
        "prompt": req.prompt,
        "negative": req.negative,
        "seed": seed,
        "steps": req.steps,
        "cfg": req.cfg,
        "guidance": req.guidance,
        "width": req.width,
        "height": req.height,
        "scheduler": {"name": req.scheduler, "class": scheduler_class, "config": _jsonable(scheduler_config)},
        "model": {
            "id": loaded.model,
            "revision": loaded.revision,
            "variant": loaded.variant,
            "family": loaded.family,
            "pipeline_class": loaded.pipeline_class,
            "preset": req.preset,
        },
        "runtime": {"dtype": loaded.dtype, "device": loaded.device, "rng": "cpu"},
        **conditioning_record(req),
        "batch": batch,
        "versions": lib_versions,
        "timings": timings,
    }


@lru_cache(maxsize=256)
def resolved_revision(model: str, revision: str | None) -> str | None:
    """The commit a net or adapter resolves to in the HF cache, looked up once per run, not once per image."""
    from .models import resolved_revision as lookup

    return lookup(model, revision)


def conditioning_record(req) -> dict:
    """ControlNets and IP-Adapter: ids and revisions, input hashes, preprocessing, scales; empty when neither is used."""
    out: dict = {}
    if req.control:
        from .controlnet import NET_CLASSES, control_map
        from .output import pixels_sha256

        out["control"] = [
            {
                "type": unit.type,
                "image": unit.image.record(),
                "preprocess": unit.preprocess(),
                "map_sha256": pixels_sha256(control_map(unit, req.width, req.height)),
                "model": {"id": unit.model, "revision": resolved_revision(unit.model, unit.revision),
                          "class": NET_CLASSES[req.family]},
                "scale": unit.scale,
                "start": unit.start,
                "end": unit.end,
            }
            for unit in req.control
        ]
    if req.ip_adapter is not None:
        from .ip_adapter import ENCODER_CLASSES

        ip = req.ip_adapter
        out["ip_adapter"] = {
            "images": [image.record() for image in ip.images],
            "scale": ip.scale,
            "model": {"id": ip.model, "revision": resolved_revision(ip.model, ip.revision), "subfolder": ip.subfolder,
                      "weight": ip.weight},
            "image_encoder": {"id": ip.image_encoder,
                              "revision": resolved_revision(ip.image_encoder, ip.image_encoder_revision),
                              "subfolder": ip.image_encoder_subfolder, "class": ENCODER_CLASSES[req.family]},
        }
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
        "Model": record["model"]["id"],
    }
    if record["model"].get("revision"):
        pairs["Model revision"] = record["model"]["revision"][:10]
    if record.get("guidance") is not None:
        pairs["Distilled CFG Scale"] = f"{record['guidance']:g}"
    for i, unit in enumerate(record.get("control") or ()):
        # The sd-webui-controlnet extension's spelling, so A1111 tools show the units.
        thresholds = unit["preprocess"]
        fields = {"Module": unit["type"], "Model": unit["model"]["id"], "Weight": f"{unit['scale']:g}",
                  "Resize Mode": "Crop and Resize", "Guidance Start": f"{unit['start']:g}",
                  "Guidance End": f"{unit['end']:g}"}
        if "low_threshold" in thresholds:
            fields.update({"Threshold A": thresholds["low_threshold"], "Threshold B": thresholds["high_threshold"]})
        pairs[f"ControlNet {i}"] = ", ".join(f"{k}: {v}" for k, v in fields.items())
    if ip := record.get("ip_adapter"):
        pairs["IP-Adapter"] = f"{ip['model']['id']}/{ip['model'].get('subfolder') or ''}/{ip['model']['weight']}".replace("//", "/")
        pairs["IP-Adapter scale"] = f"{ip['scale']:g}"
    pairs["RNG"] = "CPU"
    pairs["Version"] = f"imagegen {record['versions'].get('imagegen') or ''}".strip()
    lines = [record["prompt"]]
    if record.get("negative"):
        lines.append(f"Negative prompt: {record['negative']}")
    lines.append(", ".join(f"{k}: {_a1111_value(v)}" for k, v in pairs.items()))
    return "\n".join(lines)


def _split_scheduler(name: str) -> tuple[str, str, str | None]:
    """'DPM++ 2M Karras' -> ('DPM++ 2M', ' ', 'Karras'), using the registry's schedule names."""
    from .schedulers import SCHEDULES

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
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UsageError(f"{path}: not a readable JSON sidecar ({exc})") from None
        image = path.with_suffix(".png")
        if isinstance(record, dict) and isinstance(record.get("output"), dict) and record["output"].get("file"):
            image = path.with_name(record["output"]["file"])
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


def _png_record(path: Path) -> dict | None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            text = getattr(im, "text", {}).get(PNG_KEY)
    except (OSError, UnidentifiedImageError) as exc:
        raise UsageError(f"{path}: not a readable image ({exc})") from None
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        raise UsageError(f"{path}: its '{PNG_KEY}' chunk is not valid JSON") from None


_REQUIRED = {
    "prompt": str, "negative": str, "seed": int, "steps": int, "cfg": (int, float), "width": int, "height": int,
    "scheduler": dict, "model": dict, "runtime": dict,
}


def check_record(record, where: str) -> None:
    """Strictly check a record read back: schema version and the fields a replay needs."""
    if not isinstance(record, dict):
        raise UsageError(f"{where}: metadata is not a JSON object")
    if record.get("schema") != SCHEMA:
        raise UsageError(f"{where}: schema {record.get('schema')!r} is not supported; this imagegen reads {SCHEMA!r}")
    for key, kind in _REQUIRED.items():
        if key not in record:
            raise UsageError(f"{where}: metadata lacks {key!r}")
        if not isinstance(record[key], kind) or isinstance(record[key], bool):
            raise UsageError(f"{where}: metadata {key!r} has the wrong type ({type(record[key]).__name__})")
    for outer, inner in (("scheduler", "name"), ("model", "id"), ("runtime", "dtype"), ("runtime", "device")):
        if not isinstance(record[outer].get(inner), str):
            raise UsageError(f"{where}: metadata lacks {outer}.{inner}")


def _pinned(model: dict) -> str:
    """A recorded net or adapter as `id@revision` when its revision is known, so a replay loads the same weights."""
    return f"{model['id']}@{model['revision']}" if model.get("revision") else model["id"]


def _conditioning_fields(record: dict, where: str) -> dict:
    """The recorded ControlNets and IP-Adapter as request fields."""
    fields: dict = {}
    try:
        units = record.get("control") or []
        if units:
            fields["control"] = [f"{u['type']}:{u['image']['path']}" for u in units]
            fields["control_scale"] = [u["scale"] for u in units]
            fields["control_start"] = [u["start"] for u in units]
            fields["control_end"] = [u["end"] for u in units]
            fields["controlnet_model"] = [_pinned(u["model"]) for u in units]
            canny = next((u["preprocess"] for u in units if u["type"] == "canny"), None)
            if canny:
                fields["canny_low"], fields["canny_high"] = canny["low_threshold"], canny["high_threshold"]
        ip = record.get("ip_adapter")
        if ip:
            fields.update({
                "ip_adapter": [image["path"] for image in ip["images"]],
                "ip_scale": ip["scale"],
                "ip_adapter_model": _pinned(ip["model"]),
                "ip_adapter_subfolder": ip["model"].get("subfolder"),
                "ip_adapter_weight": ip["model"]["weight"],
                "image_encoder": _pinned(ip["image_encoder"]),
                "image_encoder_subfolder": ip["image_encoder"].get("subfolder"),
            })
    except (KeyError, TypeError) as exc:
        raise UsageError(f"{where}: metadata 'control' / 'ip_adapter' is malformed ({exc!r} missing)") from None
    return fields


def recorded_inputs(record: dict) -> dict[str, str]:
    """Every input image the record names -> its recorded sha256."""
    out = {u["image"]["path"]: u["image"]["sha256"] for u in record.get("control") or ()}
    for image in (record.get("ip_adapter") or {}).get("images", ()):
        out[image["path"]] = image["sha256"]
    return out


def record_to_request(record: dict, where: str):
    """The replay layer: the recorded recipe of one image as a Request (validated like any other input)."""
    from .request import Request

    model = record["model"]
    return Request.from_mapping(
        {
            **_conditioning_fields(record, where),
            "prompt": record["prompt"],
            "negative": record["negative"],
            "seed": record["seed"],
            "steps": record["steps"],
            "cfg": record["cfg"],
            "guidance": record.get("guidance"),
            "size": (record["width"], record["height"]),
            "scheduler": record["scheduler"]["name"],
            "preset": model.get("preset"),
            "model": model["id"],
            "revision": model.get("revision"),
            "variant": model.get("variant"),
            "dtype": record["runtime"]["dtype"],
            "device": record["runtime"]["device"],
            "n": 1,
            "batch_size": 1,
        },
        where=where,
    )
