"""Where a model's weights are loaded: the device and dtype chosen, from_pretrained with safetensors only and no remote
code, one pipeline kept per process, and one-line errors for everything that can go wrong."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from . import quantize
from .checkpoints.configs import reader
from .checkpoints.load import load_checkpoint, load_gguf
from .errors import ImagegenError, OutOfMemory, UsageError
from .hub import is_local, load_error, local_path, resolved_revision
from .quiet import quiet_backends
from .runtime import LoadOptions, place
from .runtime import apply as apply_options


def resolve_device(device: str) -> str:
    """'auto' picks cuda > mps > cpu; an explicit device must exist."""
    import torch

    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "mps" if mps else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: CUDA is not available on this machine; use --device cpu or auto")
    if device == "mps" and not mps:
        raise UsageError("--device mps: MPS is not available on this machine; use --device cpu or auto")
    return device


def resolve_dtype(dtype: str, device: str, preset_dtype: str = "auto") -> str:
    """'auto' is float32 on CPU and the preset's dtype (else bfloat16 where supported, else float16) on a GPU."""
    if dtype != "auto":
        return dtype
    if device == "cpu":
        return "float32"
    if preset_dtype != "auto":
        return preset_dtype
    import torch

    bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return "bfloat16" if device.startswith("cuda") and bf16 else "float16"


@dataclass
class LoadedModel:
    """A pipeline on its device, what is applied to it, and the facts about it that go into metadata."""

    pipe: Any
    model: str
    family: Any  # imagegen.families.Family
    revision: str | None
    variant: str | None
    dtype: str
    device: str
    pipeline_class: str
    native_scheduler: dict  # the scheduler config the model shipped with: every swap starts from it
    derived: dict = field(default_factory=dict)  # a variant pipeline sharing this one's modules (from_pipe), by key
    applied: dict = field(default_factory=dict)  # in-place adapter name -> the key of what it loaded
    cache: dict = field(default_factory=dict)  # adapters' weights (nets, image encoders) loaded for this model
    options: LoadOptions = LoadOptions()  # memory and speed settings it runs with (imagegen.runtime)
    memory: dict = field(default_factory=lambda: {"mode": "off", "plan": None})  # --memory's plan (imagegen.fit)
    prompts: dict = field(default_factory=dict)  # encoded prompts, for families that encode each one (prompting.py)
    text_encoders: list = field(default_factory=list)  # what the record says of them (text_encoders_of)


_LOADED: dict[tuple, LoadedModel] = {}


def load_model(model: str, *, family, revision: str | None, variant: str | None, dtype: str,
               device: str, config_folder: str | None = None, base: tuple | None = None,
               options: LoadOptions = LoadOptions()) -> LoadedModel:
    """Load (or reuse) a pipeline with safetensors only, no remote code, and `dtype=`; errors become one line. A
    single-file model loads through diffusers' from_single_file with `config_folder` (imagegen.checkpoints)."""
    key = (model, family.name, revision, variant, dtype, device, config_folder, base, options)
    if key in _LOADED:
        return _LOADED[key]
    _LOADED.clear()  # one pipeline at a time: a second model would double the memory
    quiet_libraries()
    import diffusers
    import torch
    from diffusers import PipelineQuantizationConfig

    path = str(local_path(model)) if is_local(model) else model
    cls = getattr(diffusers, loading_class(config_folder or path, family))
    try:
        configs = quantize.configs(options.quantize, family, cls, dtype)
        if config_folder is not None:
            pipe = load_checkpoint(cls, path, config=config_folder, family=family, base=base, dtype=dtype,
                                   quantization=configs.get(family.denoiser))
        else:
            extra = {"quantization_config": PipelineQuantizationConfig(quant_mapping=configs)} if configs else {}
            if gguf := quantize.gguf_file(options.quantize):
                extra[family.denoiser] = load_gguf(gguf, config=path, family=family, dtype=dtype, revision=revision)
            pipe = cls.from_pretrained(path, revision=revision, variant=variant, dtype=getattr(torch, dtype),
                                       use_safetensors=True, **family.load_kwargs, **extra)
    except ImagegenError:
        raise
    except Exception as exc:  # diffusers wraps hub errors in OSError/ValueError: explain the cause in one line
        raise load_error(model, revision, exc) from exc
    family.prepare_pipeline(pipe)
    try:
        place(pipe, options, device)
    except torch.OutOfMemoryError as exc:
        unload()
        raise OutOfMemory(f"{model}: out of memory moving the model to {device} in {dtype}; try --offload model, "
                          f"--quantize int8 or a smaller dtype (imagegen plan shows what fits)") from exc
    apply_options(pipe, family, options)
    pipe.set_progress_bar_config(disable=True)
    make_invariant(pipe, device)
    loaded = LoadedModel(pipe=pipe, model=model, family=family, revision=resolved_revision(model, revision),
                         variant=variant, dtype=dtype, device=device, pipeline_class=type(pipe).__name__,
                         native_scheduler=dict(pipe.scheduler.config), options=options,
                         text_encoders=text_encoders_of(pipe))
    _LOADED[key] = loaded
    return loaded


def text_encoders_of(pipe) -> list[dict]:
    """Each text encoder of a pipeline: its component, class and parameter count (an LLM's 7 B are worth knowing)."""
    return [{"component": name, "class": type(module).__name__,
             "parameters": sum(p.numel() for p in module.parameters())}
            for name, module in pipe.components.items() if name.startswith("text_encoder") and module is not None]


def loading_class(source: str, family) -> str:
    """The pipeline class a model loads as: the one its model_index.json declares where it is one of the family's
    (an edit model's own components, such as Qwen-Image-Edit's processor, load with it), else the family's
    text-to-image class. Every other mode is built from it with from_pipe."""
    declared = (reader(source)("model_index.json") or {}).get("_class_name")
    return declared if declared in family.declared_by() else family.pipeline_class()


def unload() -> None:
    """Let the loaded pipeline go and hand its GPU memory back (before loading it another way)."""
    import gc

    _LOADED.clear()
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def make_invariant(pipe, device: str) -> None:
    """On CPU, fixed kernels make an image independent of its micro-batch (imagegen.invariance)."""
    if device == "cpu":
        from .invariance import make_batch_invariant

        make_batch_invariant(pipe)


def pipeline_parameters(class_name: str) -> set[str]:
    """The call arguments a diffusers pipeline class takes, read from its signature (no weights; diffusers imported
    quietly, for the rare setting only some pipelines have)."""
    import inspect

    quiet_libraries()
    import diffusers

    return set(inspect.signature(getattr(diffusers, class_name).__call__).parameters)


def quiet_libraries() -> None:
    """Silence diffusers' and transformers' own bars and log lines, errors included: imagegen turns their exceptions
    into its one-line errors, and a logged error before that would be a second line."""
    quiet_backends()
    import warnings

    import diffusers
    import transformers

    # diffusers' own deprecations of its internals (Chroma's transformer builds the deprecated FluxPosEmbed): nothing
    # a user of imagegen can act on
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"diffusers\.")

    diffusers.utils.logging.set_verbosity(diffusers.utils.logging.CRITICAL)
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity(transformers.utils.logging.CRITICAL)
    transformers.utils.logging.disable_progress_bar()
