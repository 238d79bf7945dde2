"""What imagegen knows about each model family: pipeline class, noise schedule kind, size multiple, CFG meaning."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import UsageError, closest


@dataclass(frozen=True)
class Family:
    """One model family (architecture), independent of any particular checkpoint."""

    name: str
    pipeline_class: str
    flow: bool  # flow-matching (rectified flow) models need flow-aware schedulers
    default_multiple: int  # used only when the model's configs cannot be read
    pipeline_multiple: int  # what the diffusers pipeline itself insists on, whatever the configs say
    text_encoders: int
    cfg_help: str
    # What diffusers supports on the family's txt2img pipelines (checked before any weights load).
    controlnet: bool = True
    ip_adapter: bool = True
    ip_adapter_images: int = 4  # reference images one adapter takes


_CLASSIC_CFG = "classifier-free guidance; on when > 1, and the negative prompt acts through it"

FAMILIES: dict[str, Family] = {
    "sdxl": Family(
        name="sdxl",
        pipeline_class="StableDiffusionXLPipeline",
        flow=False,
        default_multiple=8,
        pipeline_multiple=8,  # StableDiffusionXLPipeline.check_inputs
        text_encoders=2,
        cfg_help=_CLASSIC_CFG,
    ),
    "sd3": Family(
        name="sd3",
        pipeline_class="StableDiffusion3Pipeline",
        flow=True,
        default_multiple=16,
        pipeline_multiple=1,
        text_encoders=3,
        cfg_help=_CLASSIC_CFG,
        ip_adapter_images=1,  # SD3's pipelines encode one reference image (a second breaks its batch shapes)
    ),
    "flux": Family(
        name="flux",
        pipeline_class="FluxPipeline",
        flow=True,
        default_multiple=16,
        pipeline_multiple=1,
        text_encoders=2,
        cfg_help=(
            "Flux is guidance-distilled: 1 (the default) is off; > 1 turns on true CFG "
            "(true_cfg_scale, with the negative prompt; a second transformer pass per step, about 2x cost). "
            "Flux-dev's distilled guidance embedding is --guidance"
        ),
    ),
}

# model_index.json `_class_name` -> family; the pipelines a user's diffusers folder may declare.
PIPELINE_CLASS_TO_FAMILY: dict[str, str] = {
    "StableDiffusionXLPipeline": "sdxl",
    "StableDiffusionXLImg2ImgPipeline": "sdxl",
    "StableDiffusionXLInpaintPipeline": "sdxl",
    "StableDiffusion3Pipeline": "sd3",
    "StableDiffusion3Img2ImgPipeline": "sd3",
    "StableDiffusion3InpaintPipeline": "sd3",
    "FluxPipeline": "flux",
    "FluxImg2ImgPipeline": "flux",
    "FluxInpaintPipeline": "flux",
}


def get_family(name: str, *, where: str = "family") -> Family:
    """The family called `name`, or a UsageError listing the known ones."""
    try:
        return FAMILIES[name.lower()]
    except KeyError:
        raise UsageError(
            f"{where}: unknown model family {name!r}{closest(name, FAMILIES)}; known: {', '.join(FAMILIES)}"
        ) from None


def cfg_help_text() -> str:
    """One paragraph for `--help`: what --cfg does on each family."""
    groups: dict[str, list[str]] = {}
    for family in FAMILIES.values():
        groups.setdefault(family.cfg_help, []).append(family.name)
    return ". ".join(f"{' and '.join(names)}: {text}" for text, names in groups.items())
