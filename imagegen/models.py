"""Where models are found and loaded: configs read without weights, safe from_pretrained, one-line load errors."""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from .errors import RunError, UsageError
from .families import FAMILIES, PIPELINE_CLASS_TO_FAMILY

_SHA = re.compile(r"[0-9a-f]{40}")


@dataclass(frozen=True)
class ModelInfo:
    """What a model's configs say, read without loading weights (None where they could not be read)."""

    model: str
    family: str | None = None
    pipeline_class: str | None = None
    multiple: int | None = None  # width and height must be multiples of this
    max_side: int | None = None  # SD3's positional embedding caps the image side
    local: bool = False


BUILTIN = "builtin:"


def builtin_models() -> dict[str, Path]:
    """Models shipped inside the package, by the name that follows ``builtin:``."""
    return {"demo": Path(__file__).resolve().parent / "demo" / "model"}


def _is_local(model: str) -> bool:
    return model.startswith((".", "/", "~", BUILTIN)) or os.path.isdir(os.path.expanduser(model))


def local_path(model: str) -> Path:
    """The folder of a local or built-in model."""
    if model.startswith(BUILTIN):
        name = model[len(BUILTIN):]
        models = builtin_models()
        if name not in models:
            raise UsageError(f"--model {model}: no such built-in model; choose from "
                             f"{', '.join(BUILTIN + n for n in sorted(models))}")
        return models[name]
    return Path(model).expanduser()


def _read_json(path: str | Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def canonical_model(model: str) -> str:
    """A local folder as an absolute path (so a recipe replays from anywhere); a repo id or builtin: name as given."""
    if _is_local(model):
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
    from .presets import preset_files

    return name in preset_files()


def _config_reader(model: str, revision: str | None):
    """A function reading a JSON file of the model by relative path, from its folder or the HF cache only."""
    if _is_local(model):
        root = local_path(model)
        if not root.is_dir():
            raise UsageError(f"--model {model}: no such folder")
        if not (root / "model_index.json").is_file():
            raise UsageError(f"--model {model}: not a diffusers pipeline folder (no model_index.json)")
        return lambda rel: _read_json(root / rel)

    def read(rel: str) -> dict | None:
        from huggingface_hub import constants, hf_hub_download
        from huggingface_hub.utils import logging as hub_logging

        hub_logging.set_verbosity_error()  # its retry warnings would break the one-line error promise

        for local_only in (True, False):
            if not local_only and constants.HF_HUB_OFFLINE:
                break
            try:
                return _read_json(hf_hub_download(model, rel, revision=revision, local_files_only=local_only))
            except Exception:  # not cached, or no network: loading fetches it or explains why it cannot
                continue
        return None

    return read


@lru_cache(maxsize=16)
def inspect_model(model: str, revision: str | None = None) -> ModelInfo:
    """Family and size multiple from model_index.json and the VAE/transformer configs; no weights are read."""
    read = _config_reader(model, revision)
    index = read("model_index.json")
    if index is None:
        return ModelInfo(model=model, local=_is_local(model))
    pipeline_class = index.get("_class_name")
    family = PIPELINE_CLASS_TO_FAMILY.get(pipeline_class)
    if family is None:
        where = f"--model {model}"
        raise UsageError(
            f"{where}: pipeline {pipeline_class!r} is not supported; imagegen runs "
            f"{', '.join(sorted({f.pipeline_class for f in FAMILIES.values()}))}"
        )
    multiple = max_side = None
    vae = read("vae/config.json")
    if vae and vae.get("block_out_channels"):
        scale = 2 ** (len(vae["block_out_channels"]) - 1)
        multiple = scale
        if family == "sd3":
            transformer = read("transformer/config.json") or {}
            patch = int(transformer.get("patch_size", 2))
            multiple *= patch
            max_side = int(transformer.get("pos_embed_max_size", 96)) * patch * scale
        elif family == "flux":
            multiple *= 2  # Flux packs latents in 2x2 patches
        multiple = math.lcm(multiple, FAMILIES[family].pipeline_multiple)
    return ModelInfo(model=model, family=family, pipeline_class=pipeline_class, multiple=multiple,
                     max_side=max_side, local=_is_local(model))


# ---- devices and dtypes


def resolve_device(device: str) -> str:
    """'auto' picks cuda > mps > cpu; an explicit device must exist."""
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: CUDA is not available on this machine; use --device cpu or auto")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UsageError("--device mps: MPS is not available on this machine; use --device cpu or auto")
    return device


def resolve_dtype(dtype: str, device: str, preset_dtype: str = "auto") -> str:
    """'auto' is float32 on CPU and the preset's dtype (else float16) on a GPU."""
    if dtype != "auto":
        return dtype
    if device == "cpu":
        return "float32"
    if preset_dtype != "auto":
        return preset_dtype
    return "bfloat16" if device.startswith("cuda") and _bf16_ok() else "float16"


def _bf16_ok() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


# ---- loading


@dataclass
class LoadedModel:
    """A pipeline on its device, and the facts about it that go into metadata."""

    pipe: object
    model: str
    family: str
    revision: str | None
    variant: str | None
    dtype: str
    device: str
    pipeline_class: str
    native_scheduler: dict  # the scheduler config the model shipped with: every swap starts from it
    derived: dict = field(default_factory=dict)  # the ControlNet pipeline sharing this one's modules, by its nets


_LOADED: dict[tuple, LoadedModel] = {}


def load_model(model: str, *, family: str, revision: str | None, variant: str | None, dtype: str, device: str) -> LoadedModel:
    """Load (or reuse) a pipeline with safetensors only, no remote code, and `dtype=`; errors become one line."""
    key = (model, family, revision, variant, dtype, device)
    if key in _LOADED:
        return _LOADED[key]
    _LOADED.clear()  # one pipeline at a time: a second model would double the memory
    from . import controlnet, ip_adapter

    controlnet.clear_cache()
    ip_adapter.clear_cache()

    quiet_libraries()
    import diffusers
    import torch

    cls = getattr(diffusers, FAMILIES[family].pipeline_class)
    path = str(local_path(model)) if _is_local(model) else model
    try:
        pipe = cls.from_pretrained(
            path,
            revision=revision,
            variant=variant,
            dtype=getattr(torch, dtype),
            use_safetensors=True,
        )
    except Exception as exc:  # diffusers wraps hub errors in OSError/ValueError: explain the cause in one line
        raise load_error(model, revision, exc) from exc
    try:
        pipe.to(device)
    except torch.OutOfMemoryError as exc:
        raise RunError(f"{model}: out of memory moving the model to {device} in {dtype}; try a smaller dtype") from exc
    pipe.set_progress_bar_config(disable=True)
    if device == "cpu":
        from .batching import make_batch_invariant

        make_batch_invariant(pipe)
    loaded = LoadedModel(
        pipe=pipe,
        model=model,
        family=family,
        revision=resolved_revision(model, revision),
        variant=variant,
        dtype=dtype,
        device=device,
        pipeline_class=type(pipe).__name__,
        native_scheduler=dict(pipe.scheduler.config),
    )
    _LOADED[key] = loaded
    return loaded


def pipeline_for(loaded: LoadedModel, req) -> object:
    """The pipeline that runs `req`: the loaded one, with the request's IP-Adapter loaded into (or unloaded from) its
    denoiser, or the family's ControlNet pipeline built from it with `from_pipe`: the same module objects, so the
    base weights are in memory once whatever mix of plain, ControlNet and IP-Adapter requests a run holds."""
    from .ip_adapter import ensure_adapter

    base = loaded.pipe
    changed = ensure_adapter(base, req.ip_adapter, loaded.family, loaded.dtype, loaded.device)
    if changed:
        loaded.derived.clear()  # built with the old image encoder
        _make_invariant(loaded, base)
    if not req.control:
        return base
    key = tuple(unit.net_key() for unit in req.control)
    if key not in loaded.derived:
        import warnings

        from diffusers import AutoPipelineForText2Image

        from .controlnet import load_controlnet

        nets = [load_controlnet(m, r, loaded.family, loaded.dtype, loaded.device) for m, r in key]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pipe = AutoPipelineForText2Image.from_pipe(base, controlnet=nets[0] if len(nets) == 1 else nets)
        pipe.set_progress_bar_config(disable=True)
        _make_invariant(loaded, pipe)
        loaded.derived.clear()  # one ControlNet pipeline at a time (the nets themselves stay cached)
        loaded.derived[key] = pipe
    return loaded.derived[key]


def _make_invariant(loaded: LoadedModel, pipe) -> None:
    if loaded.device == "cpu":
        from .batching import make_batch_invariant

        make_batch_invariant(pipe)


def quiet_libraries() -> None:
    """Silence diffusers' and transformers' own bars and warnings: imagegen reports progress and errors itself."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def resolved_revision(model: str, revision: str | None) -> str | None:
    """The commit sha of a hub model's snapshot in the cache; None for a local folder."""
    if _is_local(model):
        return None
    if revision and _SHA.fullmatch(revision):
        return revision
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model, revision=revision, local_files_only=True)).name
    except Exception:
        return revision


def _causes(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def load_error(model: str, revision: str | None, exc: Exception) -> Exception:
    """Turn a from_pretrained failure into a one-line ImagegenError saying what to do."""
    from huggingface_hub import errors as hub

    chain = list(_causes(exc))
    text = " ".join(str(e) for e in chain)
    at = f"{model}" + (f"@{revision}" if revision else "")
    if any(isinstance(e, hub.GatedRepoError) for e in chain) or "gated" in text.lower():
        return RunError(
            f"{at} is a gated repo: accept its licence at https://huggingface.co/{model} "
            f"and log in with `hf auth login` (or set HF_TOKEN), then run again"
        )
    if any(isinstance(e, hub.RevisionNotFoundError) for e in chain):
        return UsageError(f"--revision {revision}: {model} has no such revision")
    pickle_only = not _is_local(model) or any(local_path(model).rglob("*.bin"))
    if pickle_only and "safetensors" in text and any(s in text for s in ("Could not find", "use_safetensors", "no file named")):
        return RunError(
            f"{at} has no safetensors weights (only pickle .bin files, which can run arbitrary code when loaded); "
            f"imagegen loads safetensors only: convert it (diffusers' convert scripts or `safetensors` "
            f"convert) or use a safetensors copy"
        )
    if any(isinstance(e, hub.RepositoryNotFoundError) for e in chain):
        return UsageError(f"--model {model}: no such model on the Hugging Face hub (or it is private: log in)")
    offline = (
        any(isinstance(e, (hub.LocalEntryNotFoundError, hub.OfflineModeIsEnabled, ConnectionError)) for e in chain)
        or "not fully cached" in text
        or "cached" in text and "offline" in text
    )
    if offline and not _is_local(model):
        return RunError(not_cached_message(model, revision))
    if _is_local(model):
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return RunError(f"--model {model}: cannot load this folder: {first}")
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return RunError(f"{at}: cannot load: {first}")


def not_cached_message(model: str, revision: str | None) -> str:
    """What to do about a hub model that is neither cached nor downloadable."""
    at = f"{model}" + (f"@{revision}" if revision else "")
    return (
        f"{at} is not in the Hugging Face cache ({_hub_cache()}) and the hub cannot be reached"
        f"{' (HF_HUB_OFFLINE is set)' if os.environ.get('HF_HUB_OFFLINE') else ''}: download it on a "
        f"connected machine with `hf download {model}` and copy the cache, or pass --model DIR "
        f"(or try the built-in demo model, which needs no download: --preset demo)"
    )


def _hub_cache() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)
