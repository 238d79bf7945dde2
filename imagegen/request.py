"""The one request model every command shares, its field validation, and the one place precedence is resolved."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field, fields
from typing import Any, Callable

from .errors import UsageError, closest

MAX_SEED = 2**63 - 1
DTYPES = {
    "auto": "auto",
    "float16": "float16", "fp16": "float16", "half": "float16",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
    "float32": "float32", "fp32": "float32", "float": "float32",
}
METADATA_MODES = ("full", "none")
DEFAULT_NAME = "{index:04d}-{seed}"


# ---- field parsers: each takes a raw value (from TOML, JSON or a flag) and returns it checked, or raises ValueError.

def _int(lo: int, hi: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ValueError(f"must be an integer from {lo} to {hi}, got {value!r}")
        try:
            number = int(value)
        except ValueError:
            raise ValueError(f"must be an integer from {lo} to {hi}, got {value!r}") from None
        if not lo <= number <= hi:
            raise ValueError(f"must be from {lo} to {hi}, got {number}")
        return number

    return parse


def _float(lo: float, hi: float) -> Callable[[Any], float]:
    def parse(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError(f"must be a number from {lo:g} to {hi:g}, got {value!r}")
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"must be a number from {lo:g} to {hi:g}, got {value!r}") from None
        if not lo <= number <= hi:  # also refuses nan
            raise ValueError(f"must be from {lo:g} to {hi:g}, got {value!r}")
        return number

    return parse


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a string, got {value!r}")
    return value


def _name(value: Any) -> str:
    value = _text(value).strip()
    if not value:
        raise ValueError("must not be empty")
    return value


def parse_seed(value: Any) -> int | None:
    """A seed from 0 to 2**63-1; -1 (A1111's spelling) means random."""
    if value in (-1, "-1", "random"):
        return None
    return _int(0, MAX_SEED)(value)


def parse_size(value: Any) -> tuple[int, int]:
    """'WIDTHxHEIGHT' (or [w, h]) -> (width, height)."""
    if isinstance(value, (list, tuple)) and len(value) == 2:
        w, h = value
    elif isinstance(value, str) and (m := re.fullmatch(r"\s*(\d+)\s*[xX×*]\s*(\d+)\s*", value)):
        w, h = m.groups()
    else:
        raise ValueError(f"must be WIDTHxHEIGHT such as 1024x768, got {value!r}")
    w, h = _int(16, 16384)(w), _int(16, 16384)(h)
    return (w, h)


def parse_dtype(value: Any) -> str:
    key = _text(value).lower()
    if key not in DTYPES:
        raise ValueError(f"must be one of {', '.join(sorted(set(DTYPES.values())))}, got {value!r}")
    return DTYPES[key]


def parse_device(value: Any) -> str:
    key = _text(value).lower()
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?|xpu(:\d+)?", key):
        raise ValueError(f"must be auto, cpu, cuda, cuda:N or mps, got {value!r}")
    return key


def parse_metadata(value: Any) -> str:
    key = _text(value).lower()
    if key not in METADATA_MODES:
        raise ValueError(f"must be one of {', '.join(METADATA_MODES)}, got {value!r}")
    return key


def _floats(lo: float, hi: float) -> Callable[[Any], tuple[float, ...]]:
    """One number or several (a list, or '0.7,0.5' / '0.7;0.5'): one per ControlNet."""
    one = _float(lo, hi)

    def parse(value: Any) -> tuple[float, ...]:
        parts = value if isinstance(value, (list, tuple)) else [value]
        out = []
        for part in parts:
            if isinstance(part, str):
                out.extend(one(p) for p in re.split(r"[,;]", part) if p.strip())
            else:
                out.append(one(part))
        if not out:
            raise ValueError("must be a number or a list of numbers")
        return tuple(out)

    return parse


def _names(value: Any) -> tuple[str, ...]:
    """One name or several (a list, a repeated flag, or 'a;b' in a CSV cell)."""
    parts = value if isinstance(value, (list, tuple)) else [value]
    out = []
    for part in parts:
        out.extend(p.strip() for p in _text(part).split(";") if p.strip())
    if not out:
        raise ValueError("must not be empty")
    return tuple(out)


def _control(value: Any):
    from .controlnet import parse_control

    return parse_control(value)


# Every request field and its parser. Prompt files, sidecars and presets are checked against this one table.
PARSERS: dict[str, Callable[[Any], Any]] = {
    "prompt": _text,
    "negative": _text,
    "seed": parse_seed,
    "steps": _int(1, 1000),
    "cfg": _float(0.0, 100.0),
    "guidance": _float(0.0, 100.0),
    "size": parse_size,
    "scheduler": _name,
    "n": _int(1, 100_000),
    "batch_size": _int(1, 1024),
    "preset": _name,
    "model": _name,
    "revision": _name,
    "variant": _name,
    "dtype": parse_dtype,
    "device": parse_device,
    "out": _name,
    "name": _name,
    "metadata": parse_metadata,
    # ControlNet: --control TYPE:IMAGE (repeatable) and one value, or one per net, of each setting.
    "control": _control,
    "control_scale": _floats(0.0, 10.0),
    "control_start": _floats(0.0, 1.0),
    "control_end": _floats(0.0, 1.0),
    "controlnet_model": _names,
    "canny_low": _int(0, 1000),
    "canny_high": _int(1, 1000),
    # IP-Adapter: reference images, strength, and where the adapter and its image encoder come from.
    "ip_adapter": _names,
    "ip_scale": _float(0.0, 5.0),
    "ip_adapter_model": _name,
    "ip_adapter_subfolder": _name,
    "ip_adapter_weight": _name,
    "image_encoder": _name,
    "image_encoder_subfolder": _name,
}


@dataclass(frozen=True)
class Request:
    """A partial request: every field None means "not given". Layers of these are merged by `resolve`."""

    prompt: str | None = None
    negative: str | None = None
    seed: int | None = None
    steps: int | None = None
    cfg: float | None = None
    guidance: float | None = None  # Flux-dev's distilled guidance embedding; not CFG
    size: tuple[int, int] | None = None
    scheduler: str | None = None
    n: int | None = None
    batch_size: int | None = None
    preset: str | None = None
    model: str | None = None
    revision: str | None = None
    variant: str | None = None
    dtype: str | None = None
    device: str | None = None
    out: str | None = None
    name: str | None = None
    metadata: str | None = None
    control: tuple[tuple[str, str], ...] | None = None
    control_scale: tuple[float, ...] | None = None
    control_start: tuple[float, ...] | None = None
    control_end: tuple[float, ...] | None = None
    controlnet_model: tuple[str, ...] | None = None
    canny_low: int | None = None
    canny_high: int | None = None
    ip_adapter: tuple[str, ...] | None = None
    ip_scale: float | None = None
    ip_adapter_model: str | None = None
    ip_adapter_subfolder: str | None = None
    ip_adapter_weight: str | None = None
    image_encoder: str | None = None
    image_encoder_subfolder: str | None = None

    @classmethod
    def from_mapping(cls, data: dict, *, where: str | None, allowed: set[str] | None = None) -> "Request":
        """Validate a mapping (a prompt-file line, a sidecar, flags); errors name `where`, the key and the choices.

        With where=None the keys are command-line flags and errors name them as such (--batch-size).
        """
        allowed = allowed if allowed is not None else set(PARSERS)
        values = {}
        for key, raw in data.items():
            if key not in allowed:
                raise UsageError(
                    f"{where}: unknown key {key!r}{closest(key, allowed)}; valid keys: {', '.join(sorted(allowed))}"
                )
            if raw is None:
                continue
            try:
                values[key] = PARSERS[key](raw)
            except ValueError as exc:
                label = f"--{key.replace('_', '-')}" if where is None else f"{where}: {key}"
                raise UsageError(f"{label}: {exc}") from None
        return cls(**values)

    def given(self) -> dict[str, Any]:
        """Only the fields that were given."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}


# Built-in defaults: the bottom layer, below any preset.
DEFAULTS = Request(
    negative="",
    n=1,
    batch_size=1,
    dtype="auto",
    device="auto",
    out="outputs",
    name=DEFAULT_NAME,
    metadata="full",
)
DEFAULT_PRESET = "sdxl"


@dataclass(frozen=True)
class ResolvedRequest:
    """A complete, validated request: what one generation run will do."""

    prompt: str
    negative: str
    seed: int
    seed_was_random: bool
    steps: int
    cfg: float
    guidance: float | None
    width: int
    height: int
    scheduler: str  # canonical name, e.g. "DPM++ 2M Karras"
    n: int
    batch_size: int
    preset: str
    family: str
    model: str
    revision: str | None
    variant: str | None
    dtype: str  # "auto" until the device is known
    device: str
    out: str
    name: str
    metadata: str
    multiple: int = 8
    gpu_dtype: str = "auto"  # the preset's dtype, used on a GPU when dtype is auto
    notes: tuple[str, ...] = field(default=())  # things the user should be told (true CFG turned on, ...)
    control: tuple = ()  # ControlUnit per net (imagegen.controlnet)
    ip_adapter: Any = None  # imagegen.ip_adapter.IPAdapter, or None

    @property
    def seeds(self) -> list[int]:
        """One seed per image: seed, seed+1, ..."""
        return [(self.seed + i) % (MAX_SEED + 1) for i in range(self.n)]

    @property
    def size(self) -> str:
        return f"{self.width}x{self.height}"


def check_companions(layer: Request) -> None:
    """Refuse ControlNet or IP-Adapter settings given without a --control or --ip-adapter for them to act on (a
    single run; in a batch the flags are every line's defaults, and plain lines ignore them)."""
    from .controlnet import SETTINGS
    from .ip_adapter import FIELDS

    for main, settings in (("control", SETTINGS), ("ip_adapter", FIELDS[1:])):
        given = [f for f in settings if getattr(layer, f) is not None]
        if given and getattr(layer, main) is None:
            flag = "--control TYPE:IMAGE" if main == "control" else "--ip-adapter IMAGE"
            raise UsageError(f"--{given[0].replace('_', '-')} needs {flag}")


def resolve(flags: Request, replay: Request | None = None, line: Request | None = None) -> ResolvedRequest:
    """Merge the layers and validate the result against the preset, the model and the scheduler registry.

    Precedence, lowest first:
        built-in defaults < preset < replayed metadata < command-line flags (or API arguments) < prompt-file line
    In a batch the flags are the defaults of every line, so a field a line sets beats the flag (a line can name
    its own preset, whose defaults then sit below the flags). A field that is None in a layer was not given there
    and does not override the layers below it.
    """
    from .models import canonical_model, inspect_model
    from .output import check_template
    from .presets import load_preset, preset_for_family
    from .schedulers import resolve_scheduler

    replay, line = replay or Request(), line or Request()
    top = {**replay.given(), **flags.given(), **line.given()}  # the layers above the preset, in precedence order
    if "model" in top:
        top["model"] = canonical_model(top["model"])

    model = top.get("model")
    if "preset" in top:
        preset = load_preset(top["preset"])
    elif model:
        info = inspect_model(model, top.get("revision"))
        if info.family is None:
            from .errors import RunError
            from .models import not_cached_message

            raise RunError(not_cached_message(model, top.get("revision")) + " (or name its --preset)")
        preset = preset_for_family(info.family, where=f"--model {model}")
    else:
        preset = load_preset(DEFAULT_PRESET)

    merged = {**DEFAULTS.given(), **preset.request().given(), **top}
    if model is None:
        merged["model"], merged["revision"] = preset.model, top.get("revision", preset.revision)
    if merged["model"] == preset.model:
        # Only the preset's own repo is known to carry its variant files; a user's folder rarely does.
        merged.setdefault("variant", preset.variant)

    if merged.get("prompt") is None:
        raise UsageError("a prompt is required")
    info = inspect_model(merged["model"], merged.get("revision"))
    if info.family and info.family != preset.family:
        raise UsageError(
            f"--model {merged['model']} is a {info.family} model but preset {preset.name!r} is for {preset.family}; "
            f"pick a {info.family} preset or leave out --preset"
        )
    family = preset.family

    choice = resolve_scheduler(merged["scheduler"], family)
    preset.check_scheduler(choice)

    check_template(merged["name"])
    width, height = merged["size"]
    if info.max_side and max(width, height) > info.max_side:
        raise UsageError(
            f"--size {width}x{height}: this model's positional embedding allows at most {info.max_side} px a side"
        )
    multiple = info.multiple or _family_multiple(family)
    if width % multiple or height % multiple:
        raise UsageError(
            f"--size {width}x{height}: width and height must be multiples of {multiple} for this model "
            f"(VAE scale factor x patch size); nearest: {_round(width, multiple)}x{_round(height, multiple)}"
        )

    from .controlnet import resolve_controls
    from .ip_adapter import FLUX_TRUE_CFG, resolve_ip_adapter

    control = resolve_controls(merged, preset, family)
    ip_adapter = resolve_ip_adapter(merged, preset, family)
    notes = []
    if family == "flux" and ip_adapter is not None and merged["cfg"] <= 1:
        if "cfg" in top:
            notes.append(f"flux: the IP-Adapter works through true CFG, which --cfg {merged['cfg']:g} leaves off; "
                         f"expect a weak effect (try --cfg {FLUX_TRUE_CFG:g})")
        else:
            merged["cfg"] = FLUX_TRUE_CFG
            notes.append(f"flux: the IP-Adapter needs true CFG: --cfg set to {FLUX_TRUE_CFG:g} (pass --cfg to choose)")
    if family == "flux" and merged["cfg"] > 1:
        notes.append(
            f"flux: --cfg {merged['cfg']:g} > 1 turns on true classifier-free guidance (true_cfg_scale) with the "
            f"negative prompt{' (empty)' if not merged['negative'] else ''}; each step runs the transformer twice"
        )
    if merged["negative"] and merged["cfg"] <= 1:
        notes.append(f"--cfg {merged['cfg']:g} turns guidance off, so the negative prompt has no effect; raise --cfg above 1")
    if merged.get("guidance") is not None and family != "flux":
        raise UsageError(f"--guidance is Flux's distilled guidance; {family} models use --cfg")

    seed = merged.get("seed")
    random_seed = seed is None
    if random_seed:
        seed = secrets.randbelow(2**32)

    return ResolvedRequest(
        prompt=merged["prompt"],
        negative=merged["negative"],
        seed=seed,
        seed_was_random=random_seed,
        steps=merged["steps"],
        cfg=merged["cfg"],
        guidance=merged.get("guidance"),
        width=width,
        height=height,
        scheduler=choice.name,
        n=merged["n"],
        batch_size=min(merged["batch_size"], merged["n"]),
        preset=preset.name,
        family=family,
        model=merged["model"],
        revision=merged.get("revision"),
        variant=merged.get("variant"),
        dtype=merged["dtype"],
        device=merged["device"],
        out=merged["out"],
        name=merged["name"],
        metadata=merged["metadata"],
        multiple=multiple,
        gpu_dtype=preset.dtype,
        notes=tuple(notes),
        control=control,
        ip_adapter=ip_adapter,
    )


def _family_multiple(family: str) -> int:
    from .families import get_family

    return get_family(family).default_multiple


def _round(value: int, multiple: int) -> int:
    return max(multiple, round(value / multiple) * multiple)
