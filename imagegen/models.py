"""What a model is, read from its configs without loading weights: its family, size rule, and canonical id."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from .errors import UsageError
from .families import FAMILIES, family_of_pipeline
from .hub import BUILTIN, cached_file, is_local, local_path, read_json
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


def canonical_model(model: str) -> str:
    """A local folder as an absolute path (so a recipe replays from anywhere); a repo id or builtin: name as given."""
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
def inspect_model(model: str, revision: str | None = None) -> ModelInfo:
    """Family and size rule from model_index.json and the component configs; no weights are read."""
    read = _config_reader(model, revision)
    index = read("model_index.json")
    if index is None:
        if is_local(model):
            raise UsageError(f"--model {model}: its model_index.json is not a readable JSON object")
        return ModelInfo(model=model)
    pipeline_class = index.get("_class_name")
    family = family_of_pipeline(pipeline_class)
    if family is None:
        known = sorted({f.pipeline_class() for f in FAMILIES.values()})
        raise UsageError(f"--model {model}: pipeline {pipeline_class!r} is not supported; imagegen runs "
                         f"{', '.join(known)}")
    multiple, max_side = family.size_rule(read)
    return ModelInfo(model=model, family=family, pipeline_class=pipeline_class, multiple=multiple,
                     max_side=max_side, guidance_embeds=family.guidance_embedded(read), local=is_local(model),
                     lora_widths=family.lora_widths(read))
