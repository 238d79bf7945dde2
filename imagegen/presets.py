"""Presets: strictly validated TOML files naming a model and its defaults; built-in, user-added, or a path."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .adapters import ADAPTERS
from .errors import UsageError, closest
from .families import FAMILIES
from .modes import MODES
from .paths import MB, builtin_presets_dir, read_regular, user_presets_dir
from .request import PARSERS, PRESET_FIELDS, Request
from .schedulers import SAMPLERS, resolve_scheduler

# Top-level keys of a preset file: its own, then one table per adapter ([controlnet], [ip_adapter]).
TABLES = {a.preset_table: a for a in ADAPTERS if a.preset_table}
PRESET_KEYS = {"name", "description", "family", "model", "revision", "variant", "dtype", "schedulers", "defaults",
               "modes", "pipelines", *TABLES}
REQUIRED_KEYS = {"family", "model", "defaults"}
REQUIRED_DEFAULTS = {"steps", "cfg", "size", "scheduler"}


@dataclass(frozen=True)
class Preset:
    """A named model and the defaults that suit it."""

    name: str
    family: Any  # imagegen.families.Family
    model: str
    description: str
    revision: str | None
    variant: str | None
    dtype: str  # the dtype used on a GPU when --dtype is auto
    schedulers: tuple[str, ...]  # the samplers allowed; empty: every sampler the family supports
    defaults: Request
    source: Path
    tables: dict = field(default_factory=dict)  # adapter table name -> its validated table
    modes: tuple[str, ...] = ()  # the modes it can run; empty: every mode its family has a pipeline for
    pipelines: dict = field(default_factory=dict)  # mode -> the family's pipeline variant it runs ("fill")

    def can(self, mode) -> bool:
        """Whether this preset runs `mode` (its own list, and a pipeline for it in its family)."""
        if self.modes and mode.name not in self.modes:
            return False
        return self.family.pipeline_class(mode.task, self.pipelines.get(mode.name)) is not None

    def pipeline_variant(self, mode) -> str | None:
        """The family's pipeline variant this preset runs `mode` with; refuses a mode it cannot run, naming the
        presets that can."""
        if not self.can(mode):
            able = [p for p in scan_presets()[0] if p.can(mode)]
            kin = [p for p in able if p.family is self.family]  # this family's first: the likely fix
            raise UsageError(f"preset {self.name!r} cannot do {mode.name}; presets that can: "
                             f"{', '.join(p.name for p in kin or able) or 'none'}")
        return self.pipelines.get(mode.name)

    def request(self) -> Request:
        """The preset as a request layer."""
        return Request(**{**self.defaults.given(), "preset": self.name})

    def check_scheduler(self, choice) -> None:
        """Refuse a sampler the preset does not allow, listing those it does."""
        if self.schedulers and choice.sampler.slug not in self.schedulers:
            allowed = ", ".join(SAMPLERS[s].a1111 for s in self.schedulers)
            raise UsageError(f"--scheduler: preset {self.name!r} allows {allowed}; got {choice.name!r}")


def _fail(where: str, message: str) -> UsageError:
    return UsageError(f"{where}: {message}")


def parse_preset(data: dict, source: Path, name: str | None = None) -> Preset:
    """Validate a preset's TOML table; every error names the file and the key."""
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
    family = FAMILIES[family]
    try:
        dtype = PARSERS["dtype"](data.get("dtype", "auto"))
    except ValueError as exc:
        raise _fail(where, f"dtype: {exc}") from None
    defaults, scheduler = _defaults(data["defaults"], family, where)
    allowed = _schedulers(data.get("schedulers", []), family, where)
    if allowed and scheduler.sampler.slug not in allowed:
        raise _fail(where, f"defaults.scheduler: {scheduler.name!r} is not in this preset's schedulers list")
    tables = {key: adapter.check_preset_table(data[key], where) for key, adapter in TABLES.items() if key in data}
    modes, pipelines = _modes(data.get("modes", []), data.get("pipelines", {}), family, where)
    return Preset(
        name=text("name", name or source.stem),
        family=family,
        model=text("model"),
        description=text("description") or "",
        revision=text("revision"),
        variant=text("variant"),
        dtype=dtype,
        schedulers=tuple(allowed),
        defaults=defaults,
        source=source,
        tables=tables,
        modes=modes,
        pipelines=pipelines,
    )


def _modes(modes, pipelines, family, where: str) -> tuple[tuple[str, ...], dict]:
    """modes = [...] (what the preset can run) and [pipelines] mode = variant (the family's pipeline it runs with)."""
    if not isinstance(modes, list) or not all(isinstance(m, str) for m in modes):
        raise _fail(where, f"modes: must be a list of mode names ({', '.join(MODES)}), got {modes!r}")
    for mode in modes:
        if mode not in MODES:
            raise _fail(where, f"modes: unknown mode {mode!r}{closest(mode, MODES)}; valid: {', '.join(MODES)}")
    if not isinstance(pipelines, dict):
        raise _fail(where, "pipelines: must be a table ([pipelines]) of mode = pipeline variant")
    for mode, variant in pipelines.items():
        if mode not in MODES:
            raise _fail(where, f"pipelines: unknown mode {mode!r}{closest(mode, MODES)}; valid: {', '.join(MODES)}")
        variants = sorted(v for (task, v) in family.pipelines if task == MODES[mode].task and v)
        if variant not in variants:
            raise _fail(where, f"pipelines.{mode}: {family.name} has no {variant!r} pipeline for {mode}; valid: "
                               f"{', '.join(variants) or 'none'}")
    return tuple(modes), dict(pipelines)


def _defaults(table, family, where: str):
    """[defaults]: the request fields a preset may set, the four required ones included; the scheduler canonical."""
    if not isinstance(table, dict):
        raise _fail(where, "defaults: must be a table ([defaults])")
    defaults = Request.from_mapping(table, where=f"{where}: defaults", allowed=set(PRESET_FIELDS))
    if missing := sorted(REQUIRED_DEFAULTS - set(defaults.given())):
        raise _fail(where, f"defaults: missing key {missing[0]!r}")
    scheduler = resolve_scheduler(defaults.scheduler, family, where=f"{where}: defaults.scheduler")
    return Request(**{**defaults.given(), "scheduler": scheduler.name}), scheduler


def _schedulers(raw, family, where: str) -> list[str]:
    """schedulers = [...]: the samplers the preset allows, by slug."""
    if not isinstance(raw, list) or not all(isinstance(s, str) for s in raw):
        raise _fail(where, f"schedulers: must be a list of scheduler names, got {raw!r}")
    allowed = []
    for entry in raw:
        choice = resolve_scheduler(entry, family, where=f"{where}: schedulers")
        if choice.schedule is not None:
            raise _fail(where, f"schedulers: list samplers without a schedule type ({choice.sampler.a1111!r}, not {entry!r})")
        allowed.append(choice.sampler.slug)
    return allowed


def read_preset_file(path: Path) -> Preset:
    """Read and validate one preset file."""
    try:
        data = tomllib.loads(read_regular(path, label=f"--preset {path}", limit=MB).decode("utf-8"))
    except FileNotFoundError:
        raise UsageError(f"--preset {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--preset {path}: cannot read it ({getattr(exc, 'strerror', None) or exc})") from None
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
    """Every available preset, validated; a broken one raises (scan_presets lists the rest instead)."""
    return [read_preset_file(path) for path in preset_files().values()]


def scan_presets() -> tuple[list[Preset], list[str]]:
    """Every preset that reads and validates, and one line for each file that does not (naming it and the problem)."""
    good, bad = [], []
    for path in preset_files().values():
        try:
            good.append(read_preset_file(path))
        except UsageError as exc:
            bad.append(str(exc).removeprefix("--preset "))  # listing, not a flag: "<file>: <problem>"
    return good, bad


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
