"""How the memory and speed settings are applied to a loaded pipeline, each through diffusers' own machinery: CPU
offload (model, group, sequential), VAE tiling and slicing, the attention backend, and a denoiser cache (First Block
Cache, TaylorSeer). They form one frozen key: a loaded model is reused only with the same settings."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from .errors import UsageError
from .quiet import quiet_backends

OFFLOADS = ("none", "model", "group", "sequential")
SWITCHES = ("off", "on")
# cache name -> (its diffusers config class, the option a :VALUE sets, that option's type, default shown in help)
CACHES = {
    "fbcache": ("FirstBlockCacheConfig", "threshold", float),  # skip the other blocks while the first changes little
    "taylorseer": ("TaylorSeerCacheConfig", "cache_interval", int),  # predict features between full steps
}
NOT_YET = {"magcache": "needs per-model calibration (mag_ratios)",
           "fastercache": "needs per-model attention identifiers"}
# --quantize: torchao's weight-only configs, applied to the denoiser (the largest component) as it loads
QUANTS = {"int8": "Int8WeightOnlyConfig", "fp8": "Float8WeightOnlyConfig"}
QUANTS_LATER = {"nf4": "bitsandbytes' 4-bit NormalFloat (CUDA only)", "int4": "torchao's int4 (CUDA kernels)",
                "gguf": "a GGUF transformer"}


@dataclass(frozen=True)
class LoadOptions:
    """The settings that change how a loaded pipeline runs (part of the loaded model's key)."""

    offload: str = "none"
    vae_tiling: str = "off"
    vae_slicing: str = "off"
    attention: str = "auto"
    cache: str = "none"
    quantize: str = "none"

    @classmethod
    def of(cls, req) -> LoadOptions:
        """The request's settings (its attributes of the same names: the Memory and speed fields)."""
        return cls(**{f.name: getattr(req, f.name) for f in fields(cls)})

    def record(self) -> dict:
        """What the image's record says ran."""
        return asdict(self)

    def quantization(self, family):
        """diffusers' TorchAoConfig for the denoiser, or None (imports torchao only when asked)."""
        if self.quantize == "none":
            return None
        quiet_backends()
        import torchao.quantization
        from diffusers import TorchAoConfig

        return TorchAoConfig(getattr(torchao.quantization, QUANTS[self.quantize])())


def parse_quantize(value) -> str:
    """'none', 'int8', 'fp8'; the kinds to come are refused with what they need."""
    if not isinstance(value, str):
        raise ValueError(f"must be a quantization name, got {value!r}")
    name = value.strip().lower()
    if name == "none" or name in QUANTS:
        return name
    later = QUANTS_LATER.get(name.partition(":")[0])
    if later:
        raise ValueError(f"{name}: {later} is not supported yet; choose none, {', '.join(QUANTS)}")
    raise ValueError(f"unknown quantization {name!r}; choose none, {', '.join(QUANTS)}")


def parse_cache(value) -> str:
    """'none', 'fbcache', 'fbcache:0.08', 'taylorseer:4' -> its canonical spelling; raises ValueError."""
    if not isinstance(value, str):
        raise ValueError(f"must be a cache name, got {value!r}")
    name, _, arg = value.strip().lower().partition(":")
    if name == "none" and not arg:
        return "none"
    if name in NOT_YET:
        raise ValueError(f"{name} is not supported yet ({NOT_YET[name]}); use {' or '.join(CACHES)}")
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


def check(options: LoadOptions, denoiser_class: str | None) -> None:
    """Refuse, before loading, a cache the model's denoiser takes no hooks for and an attention backend that is not
    installed (imports diffusers only when one is asked for)."""
    quiet_backends()
    if options.quantize != "none":
        import importlib.util

        if importlib.util.find_spec("torchao") is None:
            raise UsageError(f"--quantize {options.quantize}: needs torchao (pip install torchao)")
    if options.cache != "none" and denoiser_class:
        import diffusers
        from diffusers.models.cache_utils import CacheMixin

        cls = getattr(diffusers, denoiser_class, None)
        if cls is None or not issubclass(cls, CacheMixin):
            raise UsageError(f"--cache {options.cache}: {denoiser_class} takes no cache hooks in diffusers (they "
                             f"apply to transformers such as Flux's); leave --cache out")
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


def check_device(options: LoadOptions, device: str) -> None:
    """Sequential offload moves single layers to the GPU: with no GPU there is nowhere to move them."""
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
    if options.cache != "none" and denoiser is not None:
        import diffusers.hooks

        name, _, arg = options.cache.partition(":")
        config_class, option, kind = CACHES[name]
        denoiser.enable_cache(getattr(diffusers.hooks, config_class)(**({option: kind(arg)} if arg else {})))
