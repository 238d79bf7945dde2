"""What a model is, read from its configs without loading weights: its family, size rule, and canonical id."""

from __future__ import annotations

import re

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from .checkpoints import inspect_checkpoint, weights_format
from .checkpoints.configs import is_folder, reader
from .errors import UsageError
from .families import FAMILIES, family_of_pipeline
from .hub import BUILTIN, cached_file, is_file, is_local, local_path, read_json
from .presets import preset_files


@dataclass(frozen=True)
class ModelInfo:
    """What a model's configs say, read without loading weights (None where they could not be read)."""

    model: str
    family: Any = None  # imagegen.families.Family
    pipeline_class: str | None = None
    multiple: int | None = None  # width and height must be multiples of this
    max_side: int | None = None  # e.g. SD3's positional embedding caps the image side
    guidance_embeds: bool | None = None  # the denoiser takes --guidance (None: unknown, configs not readable)
    local: bool = False
    lora_widths: tuple = ()  # (regex of LoRA tensor names, the input width the model gives them), from its configs
    checkpoint: Any = None  # imagegen.checkpoints.Checkpoint, for a single-file model
    config: str | None = None  # where a single file's architecture comes from: --config, or a base repo
    denoiser_class: str | None = None  # the denoiser's diffusers class, from its config.json
    components: tuple[str, ...] = ()  # its model components (model_index.json's diffusers and transformers entries)


def canonical_model(model: str) -> str:
    """A local folder as an absolute path (so a recipe replays from anywhere); a repo id or builtin: name as given."""
    if is_file(model):
        path = local_path(model)
        if not path.is_file():
            raise UsageError(f"--model {model}: no such file")
        weights_format(str(path), "--model")
        return str(path.resolve())
    if is_local(model):
        path = local_path(model)
        if not path.is_dir():
            raise UsageError(f"--model {model}: no such folder")
        return model if model.startswith(BUILTIN) else str(path.resolve())
    if "/" not in model:
        raise UsageError(
            f"--model {model}: no such folder, and not a hub repo id (org/name)"
            + (f"; did you mean --preset {model}?" if _preset_exists(model) else "")
        )
    return model


def _preset_exists(name: str) -> bool:
    return name in preset_files()


def _config_reader(model: str, revision: str | None):
    """A function reading a JSON file of the model by relative path, from its folder or the HF cache (or the hub)."""
    if is_local(model):
        root = local_path(model)
        if not root.is_dir():
            raise UsageError(f"--model {model}: no such folder")
        if not (root / "model_index.json").is_file():
            raise UsageError(f"--model {model}: not a diffusers pipeline folder (no model_index.json)")
        return lambda rel: read_json(root / rel)

    def read(rel: str) -> dict | None:
        path = cached_file(model, rel, revision, network=True)
        return read_json(path) if path else None

    return read


@lru_cache(maxsize=16)
def inspect_model(model: str, revision: str | None = None, config: str | None = None) -> ModelInfo:
    """Family and size rule from model_index.json and the component configs; no weights are read. A single file's
    configs are `config`'s (--config, or the preset's repo), else those of the base repo its tensor names point to."""
    if is_file(model):
        return _inspect_file(model, config)
    if config is not None:
        raise UsageError(f"--config {config}: only a single-file checkpoint takes --config; {model} has its own "
                         f"configs")
    read = _config_reader(model, revision)
    index = read("model_index.json")
    if index is None:
        if is_local(model):
            raise UsageError(f"--model {model}: its model_index.json is not a readable JSON object")
        return ModelInfo(model=model)
    family = _family(index, f"--model {model}")
    return _info(model, family, index, read, local=is_local(model))


def _family(index: dict, where: str):
    pipeline_class = index.get("_class_name")
    family = family_of_pipeline(pipeline_class)
    if family is None:
        known = sorted({f.pipeline_class() for f in FAMILIES.values()})
        raise UsageError(f"{where}: pipeline {pipeline_class!r} is not supported; imagegen runs {', '.join(known)}")
    return family


def _info(model: str, family, index: dict, read, **extra) -> ModelInfo:
    multiple, max_side = family.size_rule(read)
    return ModelInfo(model=model, family=family, pipeline_class=index.get("_class_name"), multiple=multiple,
                     max_side=max_side, guidance_embeds=family.guidance_embedded(read),
                     lora_widths=family.lora_widths(read),
                     denoiser_class=(read(f"{family.denoiser}/config.json") or {}).get("_class_name"),
                     components=_model_components(index), **extra)


def _model_components(index: dict) -> tuple[str, ...]:
    """The entries of model_index.json holding weights (not tokenizers, schedulers or image processors)."""
    return tuple(k for k, v in index.items() if isinstance(v, list) and len(v) == 2 and v[0] in (
        "diffusers", "transformers") and not re.search(r"Tokenizer|Scheduler|Processor|Extractor", str(v[1])))


def _inspect_file(model: str, config: str | None) -> ModelInfo:
    """A single-file checkpoint: its family from --config (or the preset) when given, else from its header."""
    family = None
    if config is not None:
        index = reader(config)("model_index.json")
        if index is None:
            where = "--config" if is_folder(config) else "--config/--preset"
            raise UsageError(f"{where} {config}: no readable model_index.json (not a diffusers folder, or a repo "
                             f"neither cached nor shipped with imagegen); give the diffusers folder or repo of the "
                             f"checkpoint's architecture")
        family = _family(index, f"--config {config}")
    checkpoint = inspect_checkpoint(model, family=family)
    if checkpoint.kind.unsupported:
        raise UsageError(f"--model {checkpoint.path.name} ({checkpoint.kind.name}): {checkpoint.kind.unsupported}")
    source = config or checkpoint.kind.repo
    read = reader(source)
    index = read("model_index.json") or {}
    return _info(model, checkpoint.family, index, read, local=True, checkpoint=checkpoint, config=source)
