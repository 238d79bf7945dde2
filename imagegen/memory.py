"""Memory plans, made without loading anything: what each component of a model weighs in each dtype and quantization
(from its safetensors headers where the weights are on disk, else from the architecture built on the meta device from
its configs), what a size and batch add while it runs, and the fastest way of running it that fits a VRAM figure.

The estimate, in bytes (every constant below is named, and rough: a plan, not a measurement):
  weights of a component  = its parameters x bytes per parameter of the dtype or quantization (QUANT_BYTES)
  denoiser activations    = batch x tokens x width x bytes per value x ACTIVATION_FACTOR[denoiser kind], where
                            tokens = (width px / scale / patch) x (height px / scale / patch) (the VAE's scale, the
                            family's latent patch), width = a transformer's heads x head dim or a UNet's first block
                            channels, and the batch is doubled where CFG runs cond and uncond in one call
  VAE decode peak         = images x pixels x the VAE's first block channels x bytes per value x VAE_DECODE_FACTOR
                            (fp32 where the VAE config asks to upcast from fp16); with tiling and slicing one image
                            and one tile of the VAE's sample_size at a time
  text encoders           = their weights only (their activations at 77-512 tokens are tens of MB)
  every peak              + RESERVE (the CUDA context and the allocator's fragmentation)
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable

from .errors import UsageError

GiB = 2**30
# Bytes per parameter. int8 (bitsandbytes LLM.int8) keeps a scale per row, nf4 an absmax per 64-value block.
INT8_OVERHEAD = 0.01
NF4_OVERHEAD = 0.03
QUANT_BYTES = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "int8": 1.0 + INT8_OVERHEAD, "fp8": 1.0,
               "nf4": 0.5 * (1 + NF4_OVERHEAD), "int4": 0.5}
DTYPE_KEYS = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
# Live values per token and width at a denoiser step's peak: a UNet keeps its skip connections and works at full
# latent resolution with its narrowest width; a transformer's MLP is 4x wide and its attention runs in SDPA.
ACTIVATION_FACTOR = {"unet": 50, "transformer": 40}
# Live full-resolution maps, in units of the decoder's last block width, while its last up block runs (the
# upsampled input at twice that width, a resnet's norm, activation and convolution outputs).
VAE_DECODE_FACTOR = 8
RESERVE = GiB // 2
# Group offload with a CUDA stream holds the running block and prefetches the next.
GROUP_RESIDENT_BLOCKS = 2
DEFAULT_SIZE = (1024, 1024)

# The plan's steps, fastest first; a step keeps the VAE tiling of the steps before it. The int8 and nf4 steps
# quantize the biggest component and move the components with model offload (diffusers' documented recipe:
# bitsandbytes modules cannot be group-offloaded); group and sequential offload run unquantized.
STEPS = ("none", "vae-tiling", "model-offload", "int8", "group-offload", "nf4", "sequential-offload")
STEP_NOTES = {
    "none": "every component on the GPU",
    "vae-tiling": "every component on the GPU, the VAE decoding one image and one tile at a time",
    "model-offload": "one component on the GPU at a time (the largest one and its activations at the peak)",
    "int8": "model offload, with the biggest component quantized to int8",
    "group-offload": "each component's blocks moved to the GPU as they run (a block's weights and activations)",
    "nf4": "model offload, with the biggest component quantized to nf4",
    "sequential-offload": "each layer moved to the GPU as it runs (the largest layer and activations): slowest",
}


@dataclass(frozen=True)
class Component:
    """One model component of a pipeline: its parameters, where the figure came from, and its largest parts."""

    name: str
    role: str  # "denoiser", "vae" or "encoder"
    source: str  # "headers" (safetensors headers on disk) or "configs" (built on the meta device)
    parameters: int
    stored: int | None  # bytes as stored, from the headers; None from configs
    dtype: str  # the runtime dtype's key in QUANT_BYTES
    largest_block: int  # parameters of its largest repeated block (what group offload moves)
    outside_blocks: int  # parameters in no block (embeddings, norms: kept with every block)
    largest_layer: int  # parameters of its largest layer (what sequential offload moves)

    def bytes(self, kind: str | None = None) -> int:
        """What its weights take in a dtype or quantization (default: its runtime dtype)."""
        return round(self.parameters * QUANT_BYTES[kind or self.dtype])

    def sizes(self) -> dict[str, int | None]:
        """Its bytes as stored and in every dtype and quantization."""
        return {"stored": self.stored, **{k: self.bytes(k) for k in QUANT_BYTES}}


@dataclass(frozen=True)
class Activations:
    """What running adds to the weights, in bytes, and the figures the formula took."""

    denoiser: int  # one denoiser step's peak
    decode: int  # the VAE decoding the whole batch
    decode_tiled: int  # the VAE decoding one image, one tile at a time
    batch: int  # images per denoiser call, CFG's doubling included
    tokens: int
    width: int
    value_bytes: int
    factor: int
    tile: int  # the VAE's tile side in pixels (its sample_size): tiling helps only above it


@dataclass(frozen=True)
class Estimate:
    """A model at a size, batch and dtype: its components and activations."""

    name: str
    family: Any  # imagegen.families.Family
    model: str | None  # the repo, folder or file
    size: tuple[int, int]
    batch: int
    dtype: str
    cfg: float
    components: tuple[Component, ...]
    activations: Activations


@dataclass(frozen=True)
class StepPeak:
    """One step of the plan: its estimated peak and whether it fits."""

    step: str
    peak: int
    fits: bool


@dataclass(frozen=True)
class Plan:
    """The fastest step that fits (None when none does), every step considered, and the VRAM planned for."""

    vram: int
    steps: tuple[StepPeak, ...]
    chosen: str | None
    quantized: str | None  # the component the int8 and nf4 steps quantize


# ---- the plan


def choose(components: Iterable[Component], activations: Activations, vram_bytes: int) -> Plan:
    """The first step of STEPS whose estimated peak fits in `vram_bytes`, with every step's peak."""
    parts = tuple(components)
    biggest = max(parts, key=lambda c: c.bytes()).name if parts else None
    steps = tuple(StepPeak(s, p, p <= vram_bytes) for s in STEPS for p in [peak(s, parts, activations)])
    return Plan(vram_bytes, steps, next((s.step for s in steps if s.fits), None), biggest)


def peak(step: str, components: tuple[Component, ...], act: Activations) -> int:
    """A step's estimated peak in bytes (the formulas in this module's docstring)."""

    def work(c: Component) -> int:  # what runs beside a component's weights while it is on the GPU
        if c.role == "denoiser":
            return act.denoiser
        return (act.decode if step == "none" else act.decode_tiled) if c.role == "vae" else 0

    if step in ("none", "vae-tiling"):  # every component resident, the largest working set on top
        return sum(c.bytes() for c in components) + max(map(work, components), default=0) + RESERVE
    biggest = max(components, key=lambda c: c.bytes(), default=None)

    def share(c: Component, params: int) -> int:
        return round(params * QUANT_BYTES[c.dtype])

    resident = {  # the weights on the GPU while one component runs
        "model-offload": lambda c: c.bytes(),
        "int8": lambda c: c.bytes("int8" if c is biggest else None),
        "nf4": lambda c: c.bytes("nf4" if c is biggest else None),
        "group-offload": lambda c: share(c, c.outside_blocks + GROUP_RESIDENT_BLOCKS * c.largest_block),
        "sequential-offload": lambda c: share(c, c.largest_layer),
    }
    if step not in resident:
        raise ValueError(f"unknown step {step!r}; steps: {', '.join(STEPS)}")
    return max((resident[step](c) + work(c) for c in components), default=0) + RESERVE


def device_vram() -> int | None:
    """The free memory of the current CUDA device, or None without one (torch is imported only here)."""
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return None
    import torch

    if not torch.cuda.is_available():
        return None
    return int(torch.cuda.mem_get_info()[0])


# ---- the estimate


def estimate(model_or_preset: str, size: tuple[int, int] | None = None, batch: int = 1, dtype: str | None = None,
             *, cfg: float | None = None, preset: str | None = None) -> Estimate:
    """A model's components and activations at a size, batch and dtype, from headers or configs (nothing loads).

    `model_or_preset` is a preset name or .toml, a .safetensors file, a diffusers folder or a hub repo id. What is
    not given comes from, in this order: `preset` (its defaults), the model's own preset (the one a preset name is,
    the one a checkpoint's kind or a folder's family runs with), then DEFAULT_SIZE, bfloat16 and CFG off."""
    from .presets import load_preset

    target = _target(model_or_preset)
    defaults = load_preset(preset) if preset else target.preset
    family = target.family or (defaults.family if defaults else None)
    if family is None:
        raise UsageError(f"{model_or_preset}: cannot tell its model family from its files; name it with --preset")
    if defaults is None and (name := family.class_presets.get(target.kind or "", family.default_preset)):
        defaults = load_preset(name)
    size = size or (defaults.defaults.size if defaults else DEFAULT_SIZE)
    chosen = dtype if dtype not in (None, "auto") else defaults.dtype if defaults else "auto"
    chosen = "bfloat16" if chosen == "auto" else chosen  # a GPU plan: auto's GPU choice, where bf16 runs
    cfg = cfg if cfg is not None else defaults.defaults.cfg if defaults else 1.0
    components = _components(target, family, DTYPE_KEYS[chosen])
    activations = _activations(target.read, family, size, batch, chosen, cfg)
    return Estimate(model_or_preset, family, target.model, tuple(size), batch, chosen, cfg, components, activations)


@dataclass(frozen=True)
class _Target:
    """What a name points at: configs to read, the weights on disk (if any), the family and the preset."""

    model: str | None
    read: Callable[[str], dict | None]
    weights: Any  # imagegen.hubcache.WeightsInfo, or None when nothing is on disk
    family: Any
    preset: Any
    kind: str | None


def _target(name: str) -> _Target:
    from .checkpoints import weights_format
    from .checkpoints.configs import reader
    from .families import family_of_pipeline
    from .hubcache import scan_cache, weights_info
    from .presets import load_preset, scan_presets

    path = Path(name).expanduser()
    is_preset = name.endswith(".toml") or ("/" not in name and "\\" not in name and not path.exists())
    if is_preset or not (path.is_file() or path.is_dir()):
        if not is_preset and _looks_like_path(name):
            raise UsageError(f"--model {name}: no such file or folder")
        preset = load_preset(name) if is_preset else next((p for p in scan_presets()[0] if p.model == name), None)
        repo = preset.model if is_preset else name
        info = weights_info(name) if scan_cache().get(repo) is not None else None
        model, configs, kind = repo, repo, None
    else:
        if path.is_file():
            weights_format(name, "--model")  # a pickle or GGUF refused as the loader refuses it
        info = weights_info(name)
        preset = load_preset(info.preset) if info.preset else None
        model, kind = str(info.path), info.kind
        configs = info.repo if info.source == "file" else name  # a checkpoint's architecture: its base repo's
    read = reader(configs)
    index = read("model_index.json")
    if index is None:
        raise UsageError(f"{name}: no model_index.json in it, in the Hugging Face cache or in the configs shipped "
                         f"with imagegen; plan reads a whole pipeline (pull its configs: imagegen models pull "
                         f"{configs} --configs-only)")
    family = (info.family if info else None) or family_of_pipeline(index.get("_class_name")) or \
        (preset.family if preset else None)
    return _Target(model, read, info, family, preset, kind or index.get("_class_name"))


def _looks_like_path(name: str) -> bool:
    """Whether a name is meant as a file or folder (not a repo id): a weights file, or a relative or home path."""
    return name.lower().endswith((".safetensors", ".sft", ".ckpt")) or name.startswith((".", "/", "~", "\\"))


def _components(target: _Target, family, dtype: str) -> tuple[Component, ...]:
    """Every weight component the pipeline loads: from the headers on disk, else from its configs."""
    from .checkpoints.configs import weight_components

    index = target.read("model_index.json") or {}
    on_disk = _on_disk(target.weights, target.preset)
    out = []
    for name in weight_components(index, family):
        role = "denoiser" if name == family.denoiser else "vae" if name == "vae" else "encoder"
        if name in on_disk:
            tensors, source = _header_tensors(target.weights.path, on_disk[name], family, name), "headers"
        else:
            tensors, source = _meta_tensors(*index[name], json.dumps(target.read(f"{name}/config.json") or {})), \
                "configs"
        out.append(_component(name, role, source, tensors, dtype))
    return tuple(out)


def _on_disk(info, preset) -> dict[str, tuple[str, ...]]:
    """Component name -> its safetensors files (none for a single-file checkpoint's parts), one variant each."""
    from .hubcache import one_variant  # the loader's choice among variants (fp16, plain), shared with models info

    if info is None:
        return {}
    if info.source == "file":
        return {c.name: () for c in info.components}
    # A component is the folder holding its files (a plain folder's weights are listed file by file)
    folders: dict[str, list[str]] = {}
    for c in info.components:
        for f in c.files:
            folders.setdefault(f.rpartition("/")[0] or c.name, []).append(f)
    variant = preset.variant if preset is not None else None
    return {name: tuple(one_variant(sorted(files), variant)) for name, files in folders.items()}


def _header_tensors(root, files: tuple[str, ...], family, name: str) -> tuple[tuple[str, int, int], ...]:
    """(name, parameters, bytes) of each tensor a component's safetensors headers list."""
    from .checkpoints import DTYPE_BYTES, read_header

    if files:
        headers = [read_header(Path(root) / f, "plan").tensors for f in files]
    else:  # a single-file checkpoint: the component's tensors by the family's name prefixes
        pattern = re.compile(family.checkpoint_parts[name])
        headers = [{k: v for k, v in read_header(root, "plan").tensors.items() if pattern.search(k)}]
    return tuple((key, math.prod(shape), math.prod(shape) * DTYPE_BYTES.get(dtype, 0))
                 for tensors in headers for key, (dtype, shape) in tensors.items())


@lru_cache(maxsize=64)  # a config's architecture is built once per process
def _meta_tensors(library: str, class_name: str, config: str) -> tuple[tuple[str, int, int], ...]:
    """(name, parameters, 0) of each parameter of a component built on the meta device from its config."""
    import importlib

    import torch

    try:
        cls = getattr(importlib.import_module(library), class_name)
    except (ImportError, AttributeError):
        raise UsageError(f"{library} has no {class_name} (from the model's model_index.json); update {library}") \
            from None
    with torch.device("meta"):
        if library == "diffusers":
            module = cls.from_config(json.loads(config))
        else:
            module = cls(cls.config_class(**json.loads(config)))
    return tuple((name, p.numel(), 0) for name, p in module.named_parameters())


def _component(name: str, role: str, source: str, tensors, dtype: str) -> Component:
    """A component from its tensors: totals, its largest repeated block and its largest layer."""
    # A block is the first numbered module with siblings (transformer_blocks.7, down_blocks.1, encoder.layers.3);
    # a single-file checkpoint's conditioner.embedders.0 has none and is not one.
    siblings: dict[str, set[str]] = {}
    for tensor, _, _ in tensors:
        parts = tensor.split(".")
        for i, part in enumerate(parts[:-1]):
            if part.isdigit():
                siblings.setdefault(".".join(parts[:i]), set()).add(part)
    blocks: dict[str | None, int] = {}
    layers: dict[str, int] = {}
    for tensor, params, _ in tensors:
        parts = tensor.split(".")
        block = next((".".join(parts[:i + 1]) for i, part in enumerate(parts[:-1])
                      if part.isdigit() and len(siblings[".".join(parts[:i])]) > 1), None)
        blocks[block] = blocks.get(block, 0) + params
        layers[tensor.rpartition(".")[0]] = layers.get(tensor.rpartition(".")[0], 0) + params
    outside = blocks.pop(None, 0)
    stored = sum(b for _, _, b in tensors) if source == "headers" else None
    return Component(name, role, source, sum(p for _, p, _ in tensors), stored, dtype,
                     max(blocks.values(), default=0), outside, max(layers.values(), default=0))


def _activations(read, family, size: tuple[int, int], batch: int, dtype: str, cfg: float) -> Activations:
    """The denoiser's and the VAE's working memory at this size and batch (the module docstring's formulas)."""
    vae = read("vae/config.json") or {}
    channels = vae.get("block_out_channels") or [128, 256, 512, 512]
    scale = family.vae_scale(read) or 8
    patch = family.latent_patch(read, scale)[0]
    width_px, height_px = size
    tokens = math.ceil(width_px / scale / patch) * math.ceil(height_px / scale / patch)
    config = read(f"{family.denoiser}/config.json") or {}
    width = family.denoiser_width(config) or 320
    # Classic CFG runs cond and uncond as one batch; true CFG (a second, separate pass) does not double it.
    doubled = cfg > 1 and "true_cfg_scale" not in family.guidance_arguments(cfg, None, [""])
    calls = batch * (2 if doubled else 1)
    value = int(QUANT_BYTES[DTYPE_KEYS[dtype]])
    factor = ACTIVATION_FACTOR.get(family.denoiser, max(ACTIVATION_FACTOR.values()))
    denoiser = calls * tokens * width * value * factor
    decode_value = 4 if dtype == "float16" and vae.get("force_upcast") else value  # diffusers upcasts fp16 VAEs
    tile = vae.get("sample_size") or 512
    tile = tile[0] if isinstance(tile, (list, tuple)) else tile
    per_pixel = channels[0] * decode_value * VAE_DECODE_FACTOR
    decode = batch * width_px * height_px * per_pixel
    decode_tiled = min(width_px, tile) * min(height_px, tile) * per_pixel
    return Activations(denoiser, decode, decode_tiled, calls, tokens, width, value, factor, tile)
