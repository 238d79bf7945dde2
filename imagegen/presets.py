"""Presets: strictly validated TOML files naming a model and its defaults; built-in, user-added, or a path."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UsageError, closest
from .families import FAMILIES
from .paths import builtin_presets_dir, user_presets_dir
from .request import PARSERS, Request

# Top-level keys of a preset file, and the request fields its [defaults] table may set.
PRESET_KEYS = {"name", "description", "family", "model", "revision", "variant", "dtype", "schedulers", "defaults",
               "controlnet", "ip_adapter"}
# [ip_adapter]: where the family's adapter and its image encoder are published, and the default --ip-scale.
IP_ADAPTER_KEYS = {"model", "subfolder", "weight", "image_encoder", "image_encoder_subfolder", "scale"}
DEFAULT_KEYS = {"steps", "cfg", "guidance", "size", "scheduler", "negative"}
REQUIRED_KEYS = {"family", "model", "defaults"}
REQUIRED_DEFAULTS = {"steps", "cfg", "size", "scheduler"}
# The preset a `--model DIR` of each family takes its defaults from when no --preset is given.
FAMILY_PRESETS = {"sdxl": "sdxl", "sd3": "sd3", "flux": "flux-schnell"}


@dataclass(frozen=True)
class Preset:
    """A named model and the defaults that suit it."""

    name: str
    family: str
    model: str
    description: str
    revision: str | None
    variant: str | None
    dtype: str  # the dtype used on a GPU when --dtype is auto
    schedulers: tuple[str, ...]  # the samplers allowed; empty: every sampler the family supports
    defaults: Request
    source: Path
    controlnets: dict = field(default_factory=dict)  # control type -> ControlNet repo (or repo@revision)
    ip_adapter: dict | None = None  # the [ip_adapter] table

    def request(self) -> Request:
        """The preset as a request layer."""
        return Request(**{**self.defaults.given(), "preset": self.name})

    def check_scheduler(self, choice) -> None:
        """Refuse a sampler the preset does not allow, listing those it does."""
        if self.schedulers and choice.sampler.slug not in self.schedulers:
            from .schedulers import SAMPLERS

            allowed = ", ".join(SAMPLERS[s].a1111 for s in self.schedulers)
            raise UsageError(f"--scheduler: preset {self.name!r} allows {allowed}; got {choice.name!r}")


def _fail(where: str, message: str) -> UsageError:
    return UsageError(f"{where}: {message}")


def parse_preset(data: dict, source: Path, name: str | None = None) -> Preset:
    """Validate a preset's TOML table; every error names the file and the key."""
    from .schedulers import resolve_scheduler

    where = str(source)
    if unknown := sorted(set(data) - PRESET_KEYS):
        key = unknown[0]
        raise _fail(where, f"unknown key {key!r}{closest(key, PRESET_KEYS)}; valid keys: {', '.join(sorted(PRESET_KEYS))}")
    if missing := sorted(REQUIRED_KEYS - set(data)):
        raise _fail(where, f"missing key {missing[0]!r}")

    def text(key: str, default=None):
        value = data.get(key, default)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise _fail(where, f"{key}: must be a non-empty string, got {value!r}")
        return value

    family = text("family")
    if family not in FAMILIES:
        raise _fail(where, f"family: unknown family {family!r}{closest(family, FAMILIES)}; valid: {', '.join(FAMILIES)}")
    dtype = data.get("dtype", "auto")
    try:
        dtype = PARSERS["dtype"](dtype)
    except ValueError as exc:
        raise _fail(where, f"dtype: {exc}") from None

    defaults_table = data["defaults"]
    if not isinstance(defaults_table, dict):
        raise _fail(where, "defaults: must be a table ([defaults])")
    defaults = Request.from_mapping(defaults_table, where=f"{where}: defaults", allowed=DEFAULT_KEYS)
    if missing := sorted(REQUIRED_DEFAULTS - set(defaults.given())):
        raise _fail(where, f"defaults: missing key {missing[0]!r}")
    scheduler = resolve_scheduler(defaults.scheduler, family, where=f"{where}: defaults.scheduler")
    defaults = Request(**{**defaults.given(), "scheduler": scheduler.name})

    raw_schedulers = data.get("schedulers", [])
    if not isinstance(raw_schedulers, list) or not all(isinstance(s, str) for s in raw_schedulers):
        raise _fail(where, f"schedulers: must be a list of scheduler names, got {raw_schedulers!r}")
    allowed = []
    for entry in raw_schedulers:
        choice = resolve_scheduler(entry, family, where=f"{where}: schedulers")
        if choice.schedule is not None:
            raise _fail(where, f"schedulers: list samplers without a schedule type ({choice.sampler.a1111!r}, not {entry!r})")
        allowed.append(choice.sampler.slug)
    if allowed and scheduler.sampler.slug not in allowed:
        raise _fail(where, f"defaults.scheduler: {scheduler.name!r} is not in this preset's schedulers list")

    controlnets = _controlnet_table(data.get("controlnet", {}), where)
    ip_adapter = _ip_adapter_table(data.get("ip_adapter"), where)

    preset_name = text("name", name or source.stem)
    return Preset(
        name=preset_name,
        family=family,
        model=text("model"),
        description=text("description") or "",
        revision=text("revision"),
        variant=text("variant"),
        dtype=dtype,
        schedulers=tuple(allowed),
        defaults=defaults,
        source=source,
        controlnets=controlnets,
        ip_adapter=ip_adapter,
    )


def _controlnet_table(table, where: str) -> dict:
    """[controlnet]: one default net per control type, e.g. canny = "diffusers/controlnet-canny-sdxl-1.0"."""
    from .controlnet import CONTROL_TYPES

    if not isinstance(table, dict):
        raise _fail(where, "controlnet: must be a table ([controlnet]) of control type = repo id")
    allowed = [t for t, spec in CONTROL_TYPES.items() if not spec.needs_model]
    for key, value in table.items():
        if key not in allowed:
            raise _fail(where, f"controlnet: unknown control type {key!r}{closest(key, allowed)}; valid: {', '.join(allowed)}")
        if not isinstance(value, str) or not value.strip():
            raise _fail(where, f"controlnet.{key}: must be a repo id or folder, got {value!r}")
    return dict(table)


def _ip_adapter_table(table, where: str) -> dict | None:
    """[ip_adapter]: model, subfolder, weight (.safetensors), image_encoder, image_encoder_subfolder, scale."""
    if table is None:
        return None
    if not isinstance(table, dict):
        raise _fail(where, "ip_adapter: must be a table ([ip_adapter])")
    if unknown := sorted(set(table) - IP_ADAPTER_KEYS):
        key = unknown[0]
        raise _fail(where, f"ip_adapter: unknown key {key!r}{closest(key, IP_ADAPTER_KEYS)}; valid keys: "
                           f"{', '.join(sorted(IP_ADAPTER_KEYS))}")
    for key in ("model", "image_encoder"):
        if key not in table:
            raise _fail(where, f"ip_adapter: missing key {key!r}")
    for key, value in table.items():
        if key == "scale":
            try:
                PARSERS["ip_scale"](value)
            except ValueError as exc:
                raise _fail(where, f"ip_adapter.scale: {exc}") from None
        elif not isinstance(value, str) or not value.strip():
            raise _fail(where, f"ip_adapter.{key}: must be a non-empty string, got {value!r}")
    if "weight" in table and not table["weight"].endswith(".safetensors"):
        raise _fail(where, f"ip_adapter.weight: {table['weight']!r} is not a .safetensors file (pickle weights can run "
                           f"arbitrary code when loaded)")
    return dict(table)


def read_preset_file(path: Path) -> Preset:
    """Read and validate one preset file."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"--preset {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--preset {path}: cannot read it ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path}: not valid TOML: {exc}") from None
    return parse_preset(data, path)


def preset_files() -> dict[str, Path]:
    """Every preset name -> its file; a user preset overrides a built-in of the same name."""
    found: dict[str, Path] = {}
    for folder in (builtin_presets_dir(), user_presets_dir()):
        if folder.is_dir():
            for path in sorted(folder.glob("*.toml")):
                found[path.stem] = path
    return found


def list_presets() -> list[Preset]:
    """Every available preset, validated."""
    return [read_preset_file(path) for path in preset_files().values()]


def load_preset(name_or_path: str) -> Preset:
    """A preset by name, or from a .toml path; an unknown name lists the available ones."""
    if name_or_path.endswith(".toml") or "/" in name_or_path or "\\" in name_or_path:
        return read_preset_file(Path(name_or_path).expanduser())
    files = preset_files()
    if name_or_path not in files:
        lowered = {n.lower(): n for n in files}
        if name_or_path.lower() in lowered:
            return read_preset_file(files[lowered[name_or_path.lower()]])
        raise UsageError(
            f"--preset: unknown preset {name_or_path!r}{closest(name_or_path, files)}; "
            f"available: {', '.join(sorted(files)) or 'none'} (add your own in {user_presets_dir()})"
        )
    return read_preset_file(files[name_or_path])


def preset_for_family(family: str, *, where: str) -> Preset:
    """The preset whose defaults a bare `--model` of this family uses."""
    try:
        return load_preset(FAMILY_PRESETS[family])
    except UsageError as exc:
        raise UsageError(f"{where}: no default preset for family {family!r} ({exc})") from None
