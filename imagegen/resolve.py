"""The one place precedence is decided: the request's layers merged, then checked against the preset, the model's
configs, the scheduler registry, the family and the adapters. No weights load here."""

from __future__ import annotations

import secrets
from dataclasses import fields
from pathlib import Path

from . import runtime
from .adapters import ADAPTERS, ResolveContext
from .canvas import round_to
from .checkpoints.configs import config_folder, reader, weight_components
from .errors import RunError, UsageError
from .families import FAMILIES
from .hub import is_file, is_local, not_cached_message
from .loading import pipeline_parameters
from .models import canonical_model, inspect_model
from .modes import mode_for
from .output import check_template
from .presets import list_presets, load_preset
from .prompts import extract_tags, parse_attention
from .request import DEFAULT_PRESET, DEFAULTS, Request, ResolvedRequest

from .schedulers import resolve_scheduler

SPEED_FIELDS = tuple(f.name for f in fields(runtime.LoadOptions))


def check_companions(layer: Request) -> None:
    """Refuse an adapter's settings given without the field that turns it on (a single run; in a batch the flags are
    every line's defaults, and lines without the adapter ignore them)."""
    for adapter in ADAPTERS:
        if not adapter.needs_main:
            continue
        main, *settings = adapter.fields
        given = [f for f in settings if getattr(layer, f.name) is not None]
        if given and getattr(layer, main.name) is None:
            raise UsageError(f"{given[0].flag} needs {main.flag} {main.metavar}")


def resolve(flags: Request, replay: Request | None = None, line: Request | None = None, *,
            mode: str | None = None) -> ResolvedRequest:
    """Merge the layers and validate the result against the preset, the model and the scheduler registry.

    Precedence, lowest first:
        built-in defaults < preset < replayed metadata < command-line flags (or API arguments) < prompt-file line
    In a batch the flags are the defaults of every line, so a field a line sets beats the flag (a line can name
    its own preset, whose defaults then sit below the flags). A field that is None in a layer was not given there
    and does not override the layers below it. The mode follows from the fields (imagegen.modes); a command that
    names one (`mode`) is held to it.
    """
    replay, line = replay or Request(), line or Request()
    top = {**replay.given(), **flags.given(), **line.given()}  # the layers above the preset, in precedence order
    if "model" in top:
        top["model"] = canonical_model(top["model"])
    preset = _preset(top)
    merged = {**DEFAULTS.given(), **preset.request().given(), **top}
    if top.get("model") is None:
        merged["model"], merged["revision"] = preset.model, top.get("revision", preset.revision)
    if merged["model"] == preset.model:
        # Only the preset's own repo is known to carry its variant files; a user's folder rarely does.
        merged.setdefault("variant", preset.variant)
    if merged.get("prompt") is None:
        raise UsageError("a prompt is required")

    info = inspect_model(merged["model"], merged.get("revision"), _config(merged, top, preset))
    family = preset.family
    if info.family and info.family is not family:
        raise UsageError(
            f"--model {merged['model']} is a {info.family.name} model but preset {preset.name!r} is for "
            f"{family.name}; pick a {info.family.name} preset or leave out --preset"
        )
    _check_syntax(merged)
    run_mode = mode_for(merged, mode, preset.can)
    variant = preset.pipeline_variant(run_mode)  # refuses a mode the preset cannot do, naming presets that can
    scheduler = resolve_scheduler(merged["scheduler"], family, steps=merged["steps"])
    preset.check_scheduler(scheduler)
    check_template(merged["name"])
    width, height, multiple = _size(*_wanted_size(merged, top, info, family, run_mode.task), info, family)
    adapters, notes = _adapters(merged, top, ResolveContext(
        preset=preset, family=family, task=run_mode.task, width=width, height=height, presets_with=_presets_with(family),
        multiple=multiple, max_side=info.max_side, variant=variant, size_given="size" in top, model=info))
    _check_pipeline(family, run_mode, variant, adapters, merged["cfg"], preset, reader(info.config or merged["model"]))
    _check_guidance(merged, top, info, family, notes)
    _check_revision(merged, top, info)
    speed = {name: merged[name] for name in SPEED_FIELDS}
    runtime.check(runtime.LoadOptions(**speed), info)

    seed = merged.get("seed")
    random_seed = seed is None
    if random_seed:
        seed = secrets.randbelow(2**32)
    return ResolvedRequest(
        prompt=merged["prompt"], negative=merged["negative"], seed=seed, seed_was_random=random_seed,
        steps=merged["steps"], cfg=merged["cfg"], guidance=merged.get("guidance"), width=width, height=height,
        scheduler=scheduler, n=merged["n"], batch_size=min(merged["batch_size"], merged["n"]), preset=preset.name,
        family=family, model=merged["model"], revision=merged.get("revision"), variant=merged.get("variant"),
        dtype=merged["dtype"], device=merged["device"], out=merged["out"], name=merged["name"],
        metadata=merged["metadata"], mode=run_mode, multiple=multiple, gpu_dtype=preset.dtype, notes=tuple(notes),
        adapters=adapters, pipeline_variant=variant, prompt_syntax=merged["prompt_syntax"],
        **_single_file(info, preset), **speed, memory=merged["memory"],
    )


def _config(merged: dict, top: dict, preset) -> str | None:
    """Where a single file's architecture comes from: --config; else a named preset's repo when its configs can be
    read (cached or shipped); else (None) the base repo its tensor names point to."""
    if "config" in top or not is_file(merged["model"]):
        return top.get("config")
    if "preset" in top and reader(preset.model)("model_index.json") is not None:
        return preset.model
    return None


def _single_file(info, preset) -> dict:
    """A single file's config source, the local folder made from it (refused here, before weights, when its configs
    or tokenizers are missing), and where the components it lacks come from."""
    if info.checkpoint is None:
        return {}
    folder = config_folder(info.config, flag=f"--model {info.checkpoint.path.name}", preset=preset.name)
    index = reader(folder)("model_index.json") or {}
    lacks = set(weight_components(index, preset.family)) - set(info.checkpoint.components)
    base = (preset.model, preset.revision, preset.variant) if lacks else None
    _check_lent(info.checkpoint, sorted(lacks), folder, preset)
    return {"config": info.config, "config_folder": folder, "base": base}


def _check_lent(checkpoint, lacks: list[str], folder: str, preset) -> None:
    """Offline, the components a file lacks must be in the config folder or the HF cache: else one line now, not a
    load error after other weights have loaded."""
    from huggingface_hub import constants

    if not lacks or not constants.HF_HUB_OFFLINE or is_local(preset.model):
        return
    missing = [name for name in lacks if not any(Path(folder, name).glob("*.safetensors"))
               and not _cached_weights(preset.model, preset.revision, name)]
    if missing:
        raise RunError(f"--model {checkpoint.path.name} ({checkpoint.kind.name}) holds no {', '.join(missing)}, which "
                       f"come from {preset.model}: not in the Hugging Face cache, and HF_HUB_OFFLINE is set; run "
                       f"`imagegen models pull {preset.name}` on a connected machine, or pass --config DIR holding them")


def _cached_weights(repo: str, revision: str | None, name: str) -> bool:
    """Whether the HF cache holds safetensors weights of a repo's component (a configs-only pull has none)."""
    from huggingface_hub import snapshot_download

    try:
        snapshot = snapshot_download(repo, revision=revision, local_files_only=True)
    except Exception:  # not cached at all
        return False
    return any(Path(snapshot, name).glob("*.safetensors"))


def _check_syntax(merged: dict) -> None:
    """Under the a1111 syntax a malformed weight, like A1111's own parser would choke on, is one line, before loading."""
    if merged["prompt_syntax"] != "a1111":
        return
    for name, where in (("prompt", "the prompt"), ("negative", "--negative")):
        try:
            parse_attention(extract_tags(merged.get(name) or "")[0])
        except ValueError as exc:
            raise UsageError(f"{where}: {exc}") from None


def _wanted_size(merged: dict, top: dict, info, family, task: str) -> tuple[tuple[int, int], str]:
    """(size, where it came from): --size when given; else the size an init image implies (its own, rounded, or an
    edit's by its family's rule); else the preset's."""
    if "size" not in top:
        multiple = info.multiple or family.default_multiple
        for adapter in ADAPTERS:
            implied = adapter.default_size(merged, multiple, task, family)
            if implied is not None:
                image = merged["image"]
                return implied, f"--image {image if isinstance(image, str) else ', '.join(image)}"
    return merged["size"], "--size"


def _check_pipeline(family, mode, variant, adapters, cfg: float, preset, read) -> None:
    """Refuse, before loading, an adapter the mode's pipeline cannot take and a --cfg its pipeline (or the model,
    by its configs) has no CFG for."""
    shaping = [a for a in ADAPTERS if a.variant and a.name in dict(adapters)]
    if shaping and variant:
        raise UsageError(f"--{shaping[0].name}: preset {preset.name!r} runs {mode.name} with "
                         f"{family.pipeline_class(mode.task, variant)}, which takes no {shaping[0].variant}")
    cls = family.pipeline_class(mode.task, shaping[0].variant if shaping else variant)
    problem = family.cfg_problem(cls, cfg)
    if problem:
        raise UsageError(problem)
    if cfg > 1 and (why := family.cfg_ignored(read)):
        raise UsageError(f"--cfg {cfg:g}: {why}; use --cfg 1")
    by_name = {a.name: a for a in ADAPTERS}
    rare = {arg: why for name, spec in adapters for arg, why in by_name[name].rare_arguments(spec).items()}
    if rare:
        takes = pipeline_parameters(cls)  # imports diffusers: only for a setting some pipelines lack
        for arg, why in rare.items():
            if arg not in takes:
                raise UsageError(f"{why}: {cls} has no {arg}; leave it out")


def _check_guidance(merged: dict, top: dict, info, family, notes: list[str]) -> None:
    """--guidance only where the model has a guidance embedding; a preset's value a model ignores is dropped (and so
    left out of the record) with a note, a given one is refused: an ignored setting is never recorded as used."""
    if merged.get("guidance") is None:
        return
    if not family.distilled_guidance:
        takes = " and ".join(f.label + "'s" for f in FAMILIES.values() if f.distilled_guidance)
        raise UsageError(f"--guidance is {takes} distilled guidance; {family.name} models use --cfg")
    if info.guidance_embeds is False:
        if "guidance" in top:
            raise UsageError(f"--guidance: {merged['model']} has no guidance embedding (a timestep-distilled model "
                             f"such as FLUX.1-schnell), so it would be ignored; leave it out")
        notes.append(f"{merged['model']} has no guidance embedding: the preset's guidance "
                     f"{merged['guidance']:g} does not apply and is not recorded")
        merged["guidance"] = None


def _check_revision(merged: dict, top: dict, info) -> None:
    """--revision picks a hub commit; a local folder has none, and would silently ignore it."""
    if info.local and "revision" in top and merged.get("revision") is not None:
        raise UsageError(f"--revision {merged['revision']}: {merged['model']} is a local folder, which has no "
                         f"revisions; leave --revision out")


def _preset(top: dict):
    """The preset below the top layers: named, else the default one of the model's family, else the default."""
    model = top.get("model")
    if "preset" in top:
        return load_preset(top["preset"])
    if model:
        info = inspect_model(model, top.get("revision"), top.get("config"))
        if info.family is None:
            raise RunError(not_cached_message(model, top.get("revision")) + " (or name its --preset)")
        if info.checkpoint is not None:
            return load_preset(info.checkpoint.kind.preset)
        return _family_preset(info.family, model, info.pipeline_class)
    return load_preset(DEFAULT_PRESET)


def _family_preset(family, model: str, pipeline_class: str | None = None):
    try:
        return load_preset(family.class_presets.get(pipeline_class, family.default_preset))
    except UsageError as exc:
        raise UsageError(f"--model {model}: no default preset for family {family.name!r} ({exc})") from None


def _size(size: tuple[int, int], source: str, info, family) -> tuple[int, int, int]:
    """(width, height, multiple), checked against what the model's configs and the family's pipeline allow."""
    width, height = size
    if info.max_side and max(width, height) > info.max_side:
        if source != "--size":
            raise UsageError(f"{source}: the output would take its size, {width}x{height}, over this model's "
                             f"{info.max_side} px a side; pass a smaller --size")
        raise UsageError(
            f"--size {width}x{height}: this model's positional embedding allows at most {info.max_side} px a side"
        )
    multiple = info.multiple or family.default_multiple
    if width % multiple or height % multiple:
        raise UsageError(
            f"--size {width}x{height}: width and height must be multiples of {multiple} for this model "
            f"(VAE scale factor x patch size); nearest: {round_to(width, multiple)}x{round_to(height, multiple)}"
        )
    return width, height, multiple


def _adapters(merged: dict, top: dict, ctx: ResolveContext) -> tuple[tuple, list[str]]:
    """Each adapter the request uses, resolved (inputs checked, records made); and what the user should be told."""
    adapters, notes = [], []
    for adapter in ADAPTERS:
        spec = adapter.resolve(merged, ctx)
        if spec is not None:
            adapters.append((adapter.name, spec))
            notes.extend(adapter.adjust(spec, merged, top, ctx.family))
    notes.extend(ctx.family.cfg_notes(merged["cfg"], merged["negative"]))
    no_cfg = ctx.family.cfg_problem(ctx.family.pipeline_class(ctx.task, ctx.variant), 2.0)
    if merged["negative"] and merged["cfg"] <= 1 and not no_cfg:
        notes.append(f"--cfg {merged['cfg']:g} turns guidance off, so the negative prompt has no effect; raise --cfg "
                     f"above 1")
    return tuple(adapters), notes


def _presets_with(family):
    def names(table: str) -> list[str]:
        return [p.name for p in list_presets() if p.family is family and p.tables.get(table)]

    return names
