"""The request types every command shares: a partial `Request` (one layer of settings; imagegen.resolve merges the
layers) and the complete, typed `ResolvedRequest` one run carries out. Both are derived from the field table."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, make_dataclass
from datetime import date
from pathlib import Path
from typing import Any

from .adapters import ADAPTERS
from .errors import UsageError, closest
from .fields import CORE_FIELDS, DEFAULT_NAME, MAX_SEED, Field
from .output import render_name, slug
from .runtime import LoadOptions

# Every request field: the core ones, then each adapter's, in registry order.
FIELDS: dict[str, Field] = {f.name: f for f in (*CORE_FIELDS, *(f for a in ADAPTERS for f in a.fields))}
PARSERS = {name: f.parse for name, f in FIELDS.items()}
LINE_FIELDS = tuple(name for name, f in FIELDS.items() if f.line)  # what one prompt-file line may set
PRESET_FIELDS = tuple(name for name, f in FIELDS.items() if f.preset)  # what a preset's [defaults] may set


def _from_mapping(cls, data: dict, *, where: str | None, allowed: set[str] | None = None):
    """Validate a mapping (a prompt-file line, a sidecar, flags); errors name `where`, the key and the choices.

    With where=None the keys are command-line flags and errors name them as such (--batch-size).
    """
    allowed = allowed if allowed is not None else set(FIELDS)
    values = {}
    for key, raw in data.items():
        if key not in allowed:
            raise UsageError(
                f"{where}: unknown key {key!r}{closest(key, allowed)}; valid keys: {', '.join(sorted(allowed))}"
            )
        if raw is None:
            continue
        try:
            values[key] = FIELDS[key].parse(raw)
        except ValueError as exc:
            label = FIELDS[key].flag if where is None else f"{where}: {key}"
            raise UsageError(f"{label}: {exc}") from None
    return cls(**values)


def _given(self) -> dict[str, Any]:
    """Only the fields that were given."""
    return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}


# A partial request: every field None means "not given". Built from the field table, so a new field is one entry.
Request = make_dataclass(
    "Request",
    [(name, Any, field(default=None)) for name in FIELDS],
    frozen=True,
    namespace={"from_mapping": classmethod(_from_mapping), "given": _given,
               "__doc__": "A partial request: every field None means \"not given\"; layers are merged by resolve."},
)
Request.__module__ = __name__

# Built-in defaults: the bottom layer, below any preset.
DEFAULTS = Request(prompt_syntax="a1111", negative="", n=1, batch_size=1, dtype="auto", device="auto", out="outputs", name=DEFAULT_NAME,
                   metadata="portable", memory="auto", **asdict(LoadOptions()))
DEFAULT_PRESET = "sdxl"


def _plain(value: Any) -> Any:
    """A typed value (scheduler choice, family) as the plain name a hash or key holds."""
    return value if value is None or isinstance(value, (str, int, float, bool, tuple, list)) else value.name


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
    scheduler: Any  # imagegen.schedulers.SchedulerChoice
    n: int
    batch_size: int
    preset: str
    family: Any  # imagegen.families.Family
    model: str
    revision: str | None
    variant: str | None
    dtype: str  # "auto" until the device is known
    device: str
    out: str
    name: str
    metadata: str
    mode: Any  # imagegen.modes.Mode
    multiple: int = 8
    gpu_dtype: str = "auto"  # the preset's dtype, used on a GPU when dtype is auto
    notes: tuple[str, ...] = ()  # things the user should be told (true CFG turned on, ...)
    adapters: tuple[tuple[str, Any], ...] = ()  # (adapter name, its resolved spec), in registry order
    pipeline_variant: str | None = None  # the preset's pipeline variant for the mode ("fill"), if any
    prompt_syntax: str = "a1111"  # how the prompt is read (imagegen.prompts): "a1111" or "plain"
    # A single-file model: where its architecture comes from (--config, or the base repo), the complete local folder
    # of configs and tokenizers made from it, and the (repo, revision, variant) lending the components it lacks.
    config: str | None = None
    config_folder: str | None = None
    base: tuple | None = None
    # Memory and speed (imagegen.fit, imagegen.runtime)
    memory: str = "auto"
    offload: str = "none"
    vae_tiling: str = "off"
    vae_slicing: str = "off"
    attention: str = "auto"
    cache: str = "none"
    quantize: str = "none"
    compile: str = "none"

    @property
    def seeds(self) -> list[int]:
        """One seed per image: seed, seed+1, ..."""
        return [(self.seed + i) % (MAX_SEED + 1) for i in range(self.n)]

    @property
    def size(self) -> str:
        return f"{self.width}x{self.height}"

    def adapter(self, name: str) -> Any | None:
        """The resolved spec of the named adapter, or None when this request does not use it."""
        return dict(self.adapters).get(name)

    def hash_values(self, seed: int) -> dict:
        """What decides this image's pixels: the hashed fields and each adapter's content (absent when unused)."""
        values = {attr: _plain(getattr(self, attr)) for f in FIELDS.values() for attr in f.hashed
                  if f.unhashed is None or getattr(self, attr) != f.unhashed}
        values["seed"] = seed
        by_name = {a.name: a for a in ADAPTERS}
        values.update({name: by_name[name].hash_value(spec) for name, spec in self.adapters})
        return values

    def group_key(self) -> tuple:
        """Images with equal keys can share one pipeline call (and its scheduler, size and step count)."""
        shaping = tuple(_plain(getattr(self, attr)) for f in FIELDS.values() for attr in f.call)
        return (self.family.name, self.mode.name, *shaping, bool(self.negative), self.adapters)

    def file_name(self, index: int, seed: int) -> str:
        """The image's file name (without extension) from the --name template."""
        values = {
            "index": index,
            "seed": seed,
            "prompt": slug(self.prompt),
            "preset": slug(self.preset),
            "scheduler": self.scheduler.slug,
            "steps": self.steps,
            "cfg": f"{self.cfg:g}",
            "width": self.width,
            "height": self.height,
            "model": slug(Path(self.model).name),
            "date": date.today().strftime("%Y%m%d"),
        }
        return render_name(self.name, values)
