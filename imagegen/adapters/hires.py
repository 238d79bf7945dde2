"""Hires fix, as A1111 does it: generate at the base size, upscale (the latents, or the image with Lanczos), then an
img2img pass at the larger size with the same loaded modules (the family's Img2Img pipeline, built with from_pipe)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..canvas import round_to
from ..errors import UsageError
from ..fields import Field, choice, integer, number
from .base import Adapter, ResolveContext
from .init_image import check_steps, parse_strength

UPSCALERS = {"latent": "Latent", "lanczos": "Lanczos"}  # --hires-upscaler -> A1111's name
DEFAULT_STRENGTH = 0.5

FIELDS = (
    Field("hires", number(1.0, 8.0), (int, float), "Hires fix (txt2img): generate at --size, upscale by this factor, "
          "then refine with an img2img pass (A1111's 'Upscale by').", metavar="SCALE"),
    Field("hires_strength", parse_strength, (int, float), f"Denoising strength of the hires pass, in (0, 1] (default "
          f"{DEFAULT_STRENGTH:g}).", metavar="FLOAT", preset=True),
    Field("hires_steps", integer(1, 1000), (int,), "Steps of the hires pass (default: --steps; as in img2img, about "
          "steps x strength of them run).", metavar="INT", preset=True),
    Field("hires_upscaler", choice({k: k for k in UPSCALERS}, "latent or lanczos"), (str,),
          "latent: upscale the latents (bilinear, A1111's 'Latent'); lanczos: decode, upscale the image with "
          "Lanczos, encode again. Default: latent (lanczos where the img2img pipeline takes no latents)", preset=True),
)


@dataclass(frozen=True)
class HiresSpec:
    scale: float
    upscaler: str
    strength: float
    steps: int
    width: int  # the final size
    height: int
    record: dict = field(default_factory=dict, compare=False, hash=False)


class Hires(Adapter):
    name = "hires"
    panel = "Hires fix"
    fields = FIELDS
    record_shape = {"scale": (int, float), "upscaler": str, "strength": (int, float), "steps": int,
                    "width": int, "height": int}

    def resolve(self, given: dict, ctx: ResolveContext) -> HiresSpec | None:
        scale = given.get("hires")
        if scale is None:
            return None
        if ctx.task != "text2image":
            raise UsageError("--hires is txt2img's hires fix; for an init image, run img2img at the larger --size")
        if scale <= 1:
            raise UsageError(f"--hires {scale:g}: the scale must be above 1 (1 would not upscale)")
        if given.get("control"):
            raise UsageError("--hires with --control is not supported yet: the ControlNet img2img pass would need the "
                             "map at the hires size; leave out one of them")
        if ctx.family.pipeline_class("image2image", ctx.variant) is None:
            raise UsageError(f"--hires: {ctx.family.name} has no img2img pipeline in diffusers for its second pass")
        width, height = round_to(ctx.width * scale, ctx.multiple), round_to(ctx.height * scale, ctx.multiple)
        if ctx.max_side and max(width, height) > ctx.max_side:
            raise UsageError(f"--hires {scale:g}: {width}x{height} is over this model's {ctx.max_side} px a side")
        upscaler = given.get("hires_upscaler") or ("latent" if ctx.family.latent_hires else "lanczos")
        if upscaler == "latent" and not ctx.family.latent_hires:
            raise UsageError(f"--hires-upscaler latent: {ctx.family.label}'s img2img pipeline takes images, not "
                             f"latents; use --hires-upscaler lanczos")
        spec = HiresSpec(scale=scale, upscaler=upscaler,
                         strength=given.get("hires_strength") or DEFAULT_STRENGTH,
                         steps=given.get("hires_steps") or given["steps"], width=width, height=height)
        steps_flag = "--hires-steps" if given.get("hires_steps") else "--steps"
        check_steps(spec.steps, spec.strength, ("--hires-strength", steps_flag))
        spec.record.update(scale=spec.scale, upscaler=spec.upscaler, strength=spec.strength, steps=spec.steps,
                           width=width, height=height)
        return spec

    def call_arguments(self, spec: HiresSpec, family, task: str, count: int = 1) -> dict:
        return {"output_type": "latent"} if spec.upscaler == "latent" else {}

    def finish(self, spec: HiresSpec, images: Any, run) -> list:
        """The second pass: upscaled, then img2img at spec.strength for spec.steps, with the same seeds."""
        import torch

        first = run.reqs[0]
        if spec.upscaler == "latent":
            latents = first.family.unpacked_latents(run.pipe, images, first.width, first.height)
            factor = first.width // latents.shape[-1]
            image = torch.nn.functional.interpolate(
                latents, size=(spec.height // factor, spec.width // factor), mode="bilinear", align_corners=False,
                antialias=False)  # per image: the result does not depend on the micro-batch
        else:
            from PIL import Image

            image = [im.resize((spec.width, spec.height), Image.Resampling.LANCZOS) for im in images]
        return run.again("image2image", {"image": image, "strength": spec.strength, "width": spec.width,
                                         "height": spec.height, "num_inference_steps": spec.steps})

    def hash_value(self, spec: HiresSpec) -> Any:
        return [spec.scale, spec.upscaler, spec.strength, spec.steps]

    def a1111(self, part: dict) -> dict[str, str]:
        return {"Denoising strength": f"{part['strength']:g}", "Hires upscale": f"{part['scale']:g}",
                "Hires steps": part["steps"], "Hires upscaler": UPSCALERS.get(part["upscaler"], part["upscaler"])}

    def replay(self, part: dict | None) -> dict:
        if not part:
            return {}
        return {"hires": part["scale"], "hires_upscaler": part["upscaler"], "hires_strength": part["strength"],
                "hires_steps": part["steps"]}

