"""How the memory and speed settings are applied to a loaded pipeline, each through diffusers' own machinery: CPU
offload (model, group, sequential), VAE tiling and slicing, the attention backend, and a denoiser cache (First Block
Cache, TaylorSeer). They form one frozen key: a loaded model is reused only with the same settings."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

from . import quantize
from .errors import UsageError
from .quiet import quiet_backends

OFFLOADS = ("none", "model", "group", "sequential", "auto")  # auto: the memory plan's (imagegen.fit), else none
MEMORY_MODES = ("auto", "off")  # --memory (imagegen.fit)
COMPILES = ("none", "regional", "full")  # regional: diffusers' compile_repeated_blocks; full: the whole denoiser
SWITCHES = ("off", "on")
# cache name -> (its diffusers config class, the option a :VALUE sets, that option's type)
CACHES = {
    "fbcache": ("FirstBlockCacheConfig", "threshold", float),  # skip the other blocks while the first changes little
    "taylorseer": ("TaylorSeerCacheConfig", "cache_interval", int),  # predict features between full steps
    "magcache": ("MagCacheConfig", "threshold", float),  # skip blocks while the calibrated magnitude error is small
    "fastercache": ("FasterCacheConfig", "spatial_attention_block_skip_range", int),  # reuse attention outputs
}


@dataclass(frozen=True)
class LoadOptions:
    """The settings that change how a loaded pipeline runs (part of the loaded model's key)."""

    offload: str = "none"
    vae_tiling: str = "off"
    vae_slicing: str = "off"
    attention: str = "auto"
    cache: str = "none"
    quantize: str = "none"
    compile: str = "none"

    @classmethod
    def of(cls, req) -> LoadOptions:
        """The request's settings (its attributes of the same names: the Memory and speed fields)."""
        return cls(**{f.name: getattr(req, f.name) for f in fields(cls)})

    def concrete(self) -> LoadOptions:
        """The settings as they run when no memory plan chose for them (--offload auto: none)."""
        return replace(self, offload="none") if self.offload == "auto" else self

    def record(self) -> dict:
        """What the image's record says ran."""
        return asdict(self)


def parse_compile(value) -> str:
    """'none', 'regional' (what a bare --compile means) or 'full'; a boolean from a preset or record too."""
    if value is True or value is False:
        return "regional" if value else "none"
    name = str(value).strip().lower()
    if name in COMPILES:
        return name
    raise ValueError(f"unknown compile mode {value!r}; choose {', '.join(COMPILES)} (a bare --compile means "
                     f"regional: put it after the prompt or file)")


def parse_cache(value) -> str:
    """'none', 'fbcache', 'fbcache:0.08', 'taylorseer:4' -> its canonical spelling; raises ValueError."""
    if not isinstance(value, str):
        raise ValueError(f"must be a cache name, got {value!r}")
    name, _, arg = value.strip().lower().partition(":")
    if name == "none" and not arg:
        return "none"
    if name not in CACHES:
        raise ValueError(f"unknown cache {name!r}; choose none, {', '.join(f'{c}[:VALUE]' for c in CACHES)}")
    if not arg:
        return name
    kind = CACHES[name][2]
    try:
        number = kind(arg)
    except ValueError:
        raise ValueError(f"{name}:{arg}: the {CACHES[name][1]} must be a {kind.__name__}") from None
    if number <= 0:
        raise ValueError(f"{name}:{arg}: the {CACHES[name][1]} must be above 0")
    return f"{name}:{number:g}"


def check(options: LoadOptions, info) -> None:
    """Refuse, before loading, what the model or this install cannot do: a quantization of a component it has not
    or by a backend not installed, a cache its denoiser takes no hooks for, an attention backend not installed
    (imports diffusers only when one is asked for). `info` is the model's imagegen.models.ModelInfo."""
    quiet_backends()
    denoiser_class = info.denoiser_class
    if options.quantize != "none" and info.family is not None:
        quantize.check(options.quantize, info.family, info.components, info.checkpoint is not None)
    if options.cache != "none" and denoiser_class:
        import diffusers
        from diffusers.models.cache_utils import CacheMixin

        cls = getattr(diffusers, denoiser_class, None)
        if cls is None or not issubclass(cls, CacheMixin):
            raise UsageError(f"--cache {options.cache}: {denoiser_class} takes no cache hooks in diffusers (they "
                             f"apply to transformers such as Flux's); leave --cache out")
        _check_cache_family(options.cache, info.family)
    if options.attention != "auto":
        from diffusers.models.attention_dispatch import AttentionBackendName, _check_attention_backend_requirements

        names = [b.value for b in AttentionBackendName]
        if options.attention not in names:
            raise UsageError(f"--attention {options.attention}: unknown backend; choose auto, {', '.join(names)}")
        try:
            _check_attention_backend_requirements(AttentionBackendName(options.attention))
        except (RuntimeError, ImportError) as exc:
            first = (str(exc).strip().splitlines() or [""])[0]
            raise UsageError(f"--attention {options.attention}: not available here ({first}); use auto or native") \
                from None


def _check_cache_family(cache: str, family) -> None:
    """MagCache needs magnitude ratios calibrated for the model, FasterCache the names of its attention blocks: the
    family gives them, or the cache is refused."""
    name = cache.partition(":")[0]
    if family is None:
        return
    if not family.cache_hooks:
        raise UsageError(f"--cache {cache}: {family.label}'s pipelines do not set the cache context diffusers' cache "
                         f"hooks read; leave --cache out")
    if name == "magcache" and not family.mag_ratios:
        raise UsageError(f"--cache {cache}: MagCache needs magnitude ratios calibrated for the model, and diffusers "
                         f"has none for {family.label}; use fbcache or taylorseer")
    if name == "fastercache" and not family.attention_blocks:
        raise UsageError(f"--cache {cache}: FasterCache needs the names of {family.label}'s attention blocks, which "
                         f"imagegen does not know; use fbcache or taylorseer")


def check_device(options: LoadOptions, device: str) -> None:
    """Sequential offload moves single layers to the GPU: with no GPU there is nowhere to move them. nf4 and int4
    have CUDA kernels only."""
    quantize.check_device(options.quantize, device, options.offload)
    if options.offload == "sequential" and device == "cpu":
        raise UsageError("--offload sequential: needs a GPU (it streams each layer onto it); on the CPU there is "
                         "nothing to offload to: leave it out, or use model or group")


def place(pipe, options: LoadOptions, device: str) -> None:
    """Move the pipeline to `device`, or let diffusers' offload hooks move each part when it runs."""
    import torch

    if options.offload == "none":
        pipe.to(device)
    elif options.offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif options.offload == "group":  # one block group on the device at a time, copied on a side stream on CUDA
        pipe.enable_group_offload(onload_device=torch.device(device), offload_type="block_level",
                                  num_blocks_per_group=1, use_stream=device.startswith("cuda"))
    else:
        pipe.enable_sequential_cpu_offload(device=device)


def apply(pipe, family, options: LoadOptions) -> None:
    """The VAE, attention and cache settings, on a pipeline already placed."""
    vae = getattr(pipe, "vae", None)
    if vae is not None and options.vae_tiling == "on":
        vae.enable_tiling()
    if vae is not None and options.vae_slicing == "on":
        vae.enable_slicing()
    denoiser = getattr(pipe, family.denoiser, None)
    if options.attention != "auto" and denoiser is not None:
        denoiser.set_attention_backend(options.attention)
    if options.cache != "none" and not options.cache.startswith("magcache") and denoiser is not None:
        denoiser.enable_cache(cache_config(pipe, family, options.cache, steps=0))  # MagCache: before_call
    if options.compile != "none" and denoiser is not None:
        compile_denoiser(denoiser, family, options.compile)


def cache_config(pipe, family, cache: str, *, steps: int):
    """diffusers' config object for a --cache value; MagCache's depends on the step count (its ratios are
    interpolated to it), FasterCache reads the pipeline's current timestep."""
    import diffusers.hooks

    name, _, arg = cache.partition(":")
    config_class, option, kind = CACHES[name]
    settings = {option: kind(arg)} if arg else {}
    if name == "magcache":
        from diffusers.hooks import mag_cache

        settings.update(mag_ratios=getattr(mag_cache, family.mag_ratios), num_inference_steps=steps)
    elif name == "fastercache":
        denoiser = getattr(pipe, family.denoiser)
        denoiser._imagegen_pipe = pipe  # the pipeline calling it now (before_call: img2img's shares the denoiser)
        settings.update(current_timestep_callback=lambda: _current_timestep(denoiser._imagegen_pipe),
                        is_guidance_distilled=family.distilled_guidance,
                        spatial_attention_block_identifiers=family.attention_blocks,
                        spatial_attention_timestep_skip_range=(-1, 681), attention_weight_callback=lambda _: 0.5)
    return getattr(diffusers.hooks, config_class)(**settings)


def _current_timestep(pipe):
    """The timestep the denoiser is being called at, from the scheduler (diffusers' Flux img2img, inpaint and Fill
    pipelines keep no current_timestep of their own). Before the first step it is reported as infinite: diffusers'
    FasterCache would otherwise skip attention on its first call when that timestep lies inside its range (an
    img2img start) and find nothing cached."""
    scheduler = pipe.scheduler
    index = getattr(scheduler, "step_index", None)  # a scheduler keeping none: never inside the range, never skipped
    if index is None:
        return float("inf")
    return scheduler.timesteps[min(index, len(scheduler.timesteps) - 1)]


def before_call(pipe, family, options: LoadOptions, steps: int) -> None:
    """Per call: MagCache's ratios are interpolated to the call's step count, so its hooks are set for it here
    (again when the count changes); FasterCache reads the timestep of the pipeline calling (txt2img's or a mode's)."""
    denoiser = getattr(pipe, family.denoiser, None)
    if denoiser is not None and options.cache.startswith("fastercache"):
        denoiser._imagegen_pipe = pipe  # whose current timestep FasterCache reads
    if denoiser is None or not options.cache.startswith("magcache"):
        return
    if getattr(denoiser, "_imagegen_cache_steps", None) == steps:
        return
    if getattr(denoiser, "_imagegen_cache_steps", None) is not None:
        denoiser.disable_cache()
    denoiser.enable_cache(cache_config(pipe, family, options.cache, steps=steps))
    denoiser._imagegen_cache_steps = steps


def denoiser_calls(kwargs: dict) -> int:
    """How many times a pipeline call with these arguments runs the denoiser: its steps, the last `strength` of them
    for img2img and inpaint (diffusers' get_timesteps), twice each with true CFG (two passes a step)."""
    steps = kwargs.get("num_inference_steps") or 0
    if kwargs.get("strength") is not None:
        steps -= int(max(steps - min(steps * kwargs["strength"], steps), 0))
    return steps * (2 if (kwargs.get("true_cfg_scale") or 1) > 1 else 1)


def compile_denoiser(denoiser, family, mode: str) -> None:
    """torch.compile, lazily (the first call pays the warm-up): regional compiles each repeated block once through
    diffusers' compile_repeated_blocks (the family names the blocks where diffusers' class does not); full compiles
    the whole denoiser. IMAGEGEN_COMPILE_MODE and IMAGEGEN_COMPILE_BACKEND pass torch.compile's mode and backend."""
    import os

    settings = {"mode": os.environ.get("IMAGEGEN_COMPILE_MODE") or None,
                "backend": os.environ.get("IMAGEGEN_COMPILE_BACKEND", "inductor")}
    if mode == "regional" and not getattr(denoiser, "_repeated_blocks", None) and family.repeated_blocks:
        denoiser._repeated_blocks = list(family.repeated_blocks)  # read by compile_repeated_blocks
    if mode == "regional" and getattr(denoiser, "_repeated_blocks", None):
        denoiser.compile_repeated_blocks(**settings)
    else:  # full, or a denoiser with no repeated blocks named: the whole of it
        denoiser.compile(**settings)
