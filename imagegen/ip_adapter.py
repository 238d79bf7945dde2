"""IP-Adapters: where the adapter and its image encoder are chosen, checked (safetensors only) and loaded."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .controlnet import canonical_weights, split_revision
from .errors import RunError, UsageError
from .inputs import InputImage, check_image, load_rgb

DEFAULT_SCALE = 1.0
FLUX_TRUE_CFG = 4.0  # XLabs' published example runs its adapter with true_cfg_scale 4
# The encoder class each family's adapters were trained with.
ENCODER_CLASSES = {"sdxl": "CLIPVisionModelWithProjection", "flux": "CLIPVisionModelWithProjection",
                   "sd3": "SiglipVisionModel"}
FIELDS = ("ip_adapter", "ip_scale", "ip_adapter_model", "ip_adapter_subfolder", "ip_adapter_weight", "image_encoder",
          "image_encoder_subfolder")


@dataclass(frozen=True)
class IPAdapter:
    """The image prompt of a request: reference images, the adapter and encoder that read them, and its strength."""

    images: tuple[InputImage, ...]
    scale: float
    model: str  # hub repo id or absolute folder
    revision: str | None
    subfolder: str | None
    weight: str
    image_encoder: str
    image_encoder_revision: str | None
    image_encoder_subfolder: str | None

    def weights_key(self) -> tuple:
        """What must be loaded into the pipeline (the scale is set per call)."""
        return (self.model, self.revision, self.subfolder, self.weight, self.image_encoder,
                self.image_encoder_revision, self.image_encoder_subfolder)


def _refuse_pickle(weight: str, where: str) -> None:
    if not weight.endswith(".safetensors"):
        raise UsageError(
            f"{where}: {weight!r} is not a .safetensors file; pickle weights (.bin, .pt, .pth, .ckpt) can run "
            f"arbitrary code when loaded, so imagegen loads safetensors adapters only (convert it with the "
            f"`safetensors` library, or use a safetensors copy)"
        )


def _local_weight(folder: Path, subfolder: str | None, weight: str | None) -> str:
    """The adapter file in a local folder: as named, else its one .safetensors file; pickle-only folders refused."""
    where = folder / subfolder if subfolder else folder
    if not where.is_dir():
        raise UsageError(f"--ip-adapter-subfolder {subfolder}: no such folder in {folder}")
    if weight:
        if not (where / weight).is_file():
            raise UsageError(f"--ip-adapter-weight {weight}: no such file in {where}")
        _refuse_pickle(weight, f"--ip-adapter-weight {weight}")
        return weight
    safe = sorted(p.name for p in where.glob("*.safetensors"))
    if len(safe) == 1:
        return safe[0]
    if safe:
        raise UsageError(f"--ip-adapter-model {folder}: holds {', '.join(safe)}; name one with --ip-adapter-weight")
    pickles = sorted(p.name for p in where.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
    if pickles:
        _refuse_pickle(pickles[0], f"--ip-adapter-model {folder}")
    raise UsageError(f"--ip-adapter-model {folder}: no .safetensors adapter in {where}")


def _check_encoder_folder(folder: Path, flag: str) -> None:
    if not (folder / "config.json").is_file():
        raise UsageError(f"{flag} {folder}: not a transformers model folder (no config.json)")
    if not any(folder.glob("*.safetensors")):
        if any(folder.glob("*.bin")):
            raise UsageError(f"{flag} {folder}: has only pickle .bin weights, which can run arbitrary code when "
                             f"loaded; imagegen loads safetensors only")
        raise UsageError(f"{flag} {folder}: no .safetensors weights")


def resolve_ip_adapter(merged: dict, preset, family: str) -> IPAdapter | None:
    """The request's IP-Adapter, every input checked (reference images hashed, files safetensors): no weights load."""
    from .families import get_family

    paths = merged.get("ip_adapter") or ()
    if not paths:
        return None
    capability = get_family(family)
    if not capability.ip_adapter:
        raise UsageError(f"--ip-adapter: {family} models have no IP-Adapter support in diffusers")
    if len(paths) > capability.ip_adapter_images:
        raise UsageError(
            f"--ip-adapter: {family}'s IP-Adapter takes {capability.ip_adapter_images} reference "
            f"image{'s' if capability.ip_adapter_images != 1 else ''}; got {len(paths)}"
        )
    table = preset.ip_adapter or {}
    model = merged.get("ip_adapter_model")
    overridden = model is not None
    if model is None:
        model = table.get("model")
        if model is None:
            raise UsageError(
                f"--ip-adapter: preset {preset.name!r} has no IP-Adapter{_others(family)}; pass --ip-adapter-model "
                f"REPO_OR_FOLDER (and --image-encoder)"
            )
    model, revision = split_revision(model)
    model = canonical_weights(model, "--ip-adapter-model")
    subfolder = merged.get("ip_adapter_subfolder", None if overridden else table.get("subfolder"))
    weight = merged.get("ip_adapter_weight", None if overridden else table.get("weight"))
    if os.path.isdir(model):
        weight = _local_weight(Path(model), subfolder, weight)
    else:
        weight = weight or "ip-adapter.safetensors"
        _refuse_pickle(weight, f"--ip-adapter-weight {weight}")

    encoder = merged.get("image_encoder")
    encoder_subfolder = merged.get("image_encoder_subfolder")
    if encoder is None:
        beside = Path(model, subfolder or "", "image_encoder")
        if overridden and os.path.isdir(model) and beside.is_dir():
            encoder = str(beside)
        elif table.get("image_encoder"):
            encoder = table["image_encoder"]
            encoder_subfolder = encoder_subfolder or table.get("image_encoder_subfolder")
        else:
            raise UsageError(f"--ip-adapter-model {model}: name its image encoder with --image-encoder REPO_OR_FOLDER "
                             f"(a {ENCODER_CLASSES[family]})")
    encoder, encoder_revision = split_revision(encoder)
    encoder = canonical_weights(encoder, "--image-encoder")
    if os.path.isdir(encoder):
        _check_encoder_folder(Path(encoder, encoder_subfolder or ""), "--image-encoder")

    scale = merged.get("ip_scale")
    if scale is None:
        scale = table.get("scale", DEFAULT_SCALE)
    images = tuple(check_image(p, label=f"--ip-adapter {p}") for p in paths)
    return IPAdapter(images=images, scale=scale, model=model, revision=revision, subfolder=subfolder, weight=weight,
                     image_encoder=encoder, image_encoder_revision=encoder_revision,
                     image_encoder_subfolder=encoder_subfolder)


def _others(family: str) -> str:
    from .presets import list_presets

    names = [p.name for p in list_presets() if p.family == family and p.ip_adapter]
    return f" (the {family} presets with one: {', '.join(names)})" if names else ""


# ---- at generation time

_ENCODERS: dict[tuple, Any] = {}


def _encoder(spec: IPAdapter, family: str, dtype: str, device: str):
    """The image encoder and its processor, loaded once per process."""
    import torch
    import transformers

    key = (spec.image_encoder, spec.image_encoder_revision, spec.image_encoder_subfolder, family, dtype, device)
    if key not in _ENCODERS:
        from .models import load_error

        cls = getattr(transformers, ENCODER_CLASSES[family])
        kwargs = {"revision": spec.image_encoder_revision, "subfolder": spec.image_encoder_subfolder or ""}
        try:
            encoder = cls.from_pretrained(spec.image_encoder, dtype=getattr(torch, dtype), use_safetensors=True,
                                          **kwargs)
            if family == "sd3":
                try:
                    processor = transformers.SiglipImageProcessor.from_pretrained(spec.image_encoder, **kwargs)
                except OSError:  # a folder without preprocessor_config.json: SigLIP's defaults at its resolution
                    size = encoder.config.image_size
                    processor = transformers.SiglipImageProcessor(size={"height": size, "width": size})
            else:  # as diffusers' loader builds it: CLIP preprocessing at the encoder's own resolution
                size = encoder.config.image_size
                processor = transformers.CLIPImageProcessor(size=size, crop_size=size)
        except Exception as exc:
            error = load_error(spec.image_encoder, spec.image_encoder_revision, exc)
            raise type(error)(f"image encoder: {error}".replace("--model ", "--image-encoder ", 1)) from exc
        _ENCODERS[key] = (encoder.to(device).eval(), processor)
    return _ENCODERS[key]


def ensure_adapter(pipe, spec: IPAdapter | None, family: str, dtype: str, device: str) -> bool:
    """Load `spec` into the pipeline's denoiser (unloading another first), or unload when None; True if it changed."""
    current = getattr(pipe, "_imagegen_ip_adapter", None)
    wanted = spec.weights_key() if spec else None
    if current == wanted:
        if spec is not None:
            pipe.set_ip_adapter_scale(spec.scale)
        return False
    if current is not None:
        pipe.unload_ip_adapter()
        pipe._imagegen_ip_adapter = None
    if spec is None:
        return True
    encoder, processor = _encoder(spec, family, dtype, device)
    pipe.register_modules(image_encoder=encoder, feature_extractor=processor)
    where = {"subfolder": spec.subfolder or ""}
    if family == "flux":
        where["image_encoder_pretrained_model_name_or_path"] = None  # registered above
    else:
        where["image_encoder_folder"] = None
    try:
        pipe.load_ip_adapter(spec.model, weight_name=spec.weight, revision=spec.revision, **where)
    except Exception as exc:
        from .models import load_error

        pipe.register_modules(image_encoder=None, feature_extractor=None)
        raise _adapter_error(spec, load_error(spec.model, spec.revision, exc), exc) from exc
    pipe.set_ip_adapter_scale(spec.scale)
    pipe._imagegen_ip_adapter = wanted
    return True


def _adapter_error(spec: IPAdapter, error: Exception, exc: Exception) -> Exception:
    text = " ".join(str(e) for e in (exc, exc.__cause__) if e)
    if "size mismatch" in text or "shape" in text.lower():
        return RunError(f"--ip-adapter-model {spec.model}: its weights do not fit this model (made for another "
                        f"model or size): {str(exc).splitlines()[0][:200]}")
    return type(error)(f"IP-Adapter: {error}".replace("--model ", "--ip-adapter-model ", 1))


def call_arguments(spec: IPAdapter) -> dict:
    """The pipeline arguments for the reference images (several images of one adapter are nested in one list)."""
    images = [load_rgb(i) for i in spec.images]
    return {"ip_adapter_image": images[0] if len(images) == 1 else [images]}


def clear_cache() -> None:
    _ENCODERS.clear()
