"""Loading a single-file checkpoint with diffusers' own `from_single_file`: the file's components converted from its
original layout, the architecture from a config folder (imagegen.checkpoints.configs), and the components the file
lacks (a transformer-only Flux file's text encoders and VAE) from the preset's repo, as ComfyUI users work."""

from __future__ import annotations

from typing import Any

from ..errors import RunError, UsageError
from . import inspect_checkpoint
from .configs import reader, weight_components


def load_checkpoint(cls, path: str, *, config: str, family, base: tuple | None, dtype: str, quantization=None):
    """`cls` (a diffusers pipeline class) from the checkpoint at `path`; `config` is a complete local config folder,
    `base` the (repo, revision, variant) lending the components the file has not, `quantization` a diffusers
    quantization config for the denoiser."""
    import torch

    checkpoint = inspect_checkpoint(path, family=family)
    read = reader(config)
    index = read("model_index.json") or {}
    torch_dtype = getattr(torch, dtype)
    given: dict[str, Any] = {}
    try:
        converted = family.convert_checkpoint(lambda: _tensors(path), read)
        if converted is not None or quantization is not None:
            # diffusers' pipeline-level from_single_file takes no quantization config: the denoiser loads on its own
            model = _class(index[family.denoiser])
            given[family.denoiser] = model.from_single_file(
                path if converted is None else converted, config=config, subfolder=family.denoiser, dtype=torch_dtype,
                **({"quantization_config": quantization} if quantization is not None else {}))
    except Exception as exc:
        raise _mismatch(checkpoint, config, exc) from exc
    for name in weight_components(index, family):
        if name not in checkpoint.components and name not in given:
            given[name] = _borrow(name, _class(index[name]), config, base, torch_dtype, checkpoint)
    try:
        pipe = cls.from_single_file(path, config=config, local_files_only=True, dtype=torch_dtype,
                                    **family.load_kwargs, **given)
    except Exception as exc:  # a shape or key mismatch: the file is not the architecture its configs describe
        raise _mismatch(checkpoint, config, exc) from exc
    _materialize(pipe)
    return pipe


def load_gguf(file: str, *, config: str, family, dtype: str, revision: str | None = None):
    """The denoiser from a GGUF file (city96's FLUX.1 and SD3.5 files) through diffusers' GGUFQuantizationConfig:
    its weights stay quantized and are dequantized to `dtype` as each layer runs; `config` is the folder or repo
    whose denoiser config it takes."""
    import torch
    from diffusers import GGUFQuantizationConfig
    from diffusers.models.model_loading_utils import load_gguf_checkpoint

    torch_dtype = getattr(torch, dtype)
    read = reader(config)
    index = read("model_index.json") or {}
    try:
        converted = family.convert_checkpoint(lambda: load_gguf_checkpoint(file), read)
        return _class(index[family.denoiser]).from_single_file(
            file if converted is None else converted, config=config, subfolder=family.denoiser, dtype=torch_dtype,
            quantization_config=GGUFQuantizationConfig(compute_dtype=torch_dtype),
            **({"revision": revision} if revision else {}))
    except Exception as exc:  # a shape or key mismatch (diffusers says little more than an IndexError)
        raise UsageError(f"--quantize gguf:{file}: does not load into the {family.label} transformer of {config} "
                         f"({type(exc).__name__}: {_first(exc)}); it may be another size or variant of the "
                         f"family") from exc


def _mismatch(checkpoint, config: str, exc: Exception) -> UsageError:
    return UsageError(f"--model {checkpoint.path.name} ({checkpoint.kind.name}): does not load into the architecture "
                      f"of {config} ({_first(exc)}); if it is another architecture (a fine-tune "
                      f"with changed shapes, a v-prediction or distilled variant), pass --config DIR_OR_REPO with its "
                      f"diffusers configs")


def _tensors(path: str) -> dict:
    from safetensors.torch import load_file

    return load_file(path)


def _class(spec: list):
    import importlib

    return getattr(importlib.import_module(spec[0]), spec[1])


def _borrow(name: str, cls, config: str, base: tuple | None, torch_dtype, checkpoint):
    """A component the file lacks: from the --config folder when it holds its weights, else the preset's repo."""
    sources = [(config, None, None)] + ([base] if base else [])
    errors = []
    for repo, revision, variant in sources:
        for var in dict.fromkeys((variant, None)):
            try:
                return cls.from_pretrained(repo, subfolder=name, revision=revision, variant=var, dtype=torch_dtype,
                                           use_safetensors=True)
            except Exception as exc:  # not there (config folders hold no weights): try the next source
                errors.append(exc)
    where = base[0] if base else config
    raise RunError(f"--model {checkpoint.path.name} ({checkpoint.kind.name}) holds no {name}, which comes "
                   f"from {where}: not in the Hugging Face cache or not downloadable ({_first(errors[-1])}); pull it "
                   f"with `imagegen models pull {checkpoint.kind.preset}`, or pass --config DIR holding it")


def _first(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _materialize(pipe) -> None:
    """diffusers leaves tied weights of a single-file T5 (SD3's text_encoder_3 embed_tokens) on the meta device;
    tying them again points them at the loaded shared embedding."""
    for name, module in pipe.components.items():
        params = getattr(module, "parameters", None)
        if params is None or not any(p.is_meta for p in params()):
            continue
        if hasattr(module, "tie_weights"):
            module.tie_weights()
        if any(p.is_meta for p in module.parameters()):
            raise UsageError(f"--model: the checkpoint lacks part of its {name} (weights left unloaded); pass "
                             f"--config with the diffusers folder of its architecture")
