"""The init image of img2img and inpaint (and outpaint, an inpaint of a grown canvas): its fields, the image and mask
opened, hashed and prepared before any weights load, the call arguments of the family's Img2Img and Inpaint
pipelines, the finished composite, and its record, A1111 text and replay. It implements the adapter protocol, so
prompt-file lines, hashes, portable paths and `reproduce` treat it as they treat a control map."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from .. import canvas
from ..errors import UsageError
from ..fields import Field, choice, integer, name, names, number
from ..inputs import InputImage, check_image, load_rgb
from ..output import pixels_sha256
from .base import Adapter, ResolveContext

DEFAULT_STRENGTH = {"image2image": 0.75, "inpaint": 1.0}  # A1111's img2img default; diffusers' inpaint default
DEFAULT_BLUR = 4  # A1111's "Mask blur"
MASKED_PADDING = 32  # A1111's "Only masked padding, pixels"
AREAS = {"whole": "Whole picture", "masked": "Only masked"}  # --inpaint-area -> A1111's words


def parse_strength(value: Any) -> float:
    """A denoising strength in (0, 1]: 0 would return the input unchanged."""
    try:
        strength = number(0.0, 1.0)(value)  # refuses bools, non-numbers, nan and the out-of-range
    except ValueError:
        strength = 0.0
    if strength == 0:
        raise ValueError(f"must be above 0 and at most 1 (0 keeps the input unchanged), got {value!r}")
    return strength


def image_names(value: Any) -> str | tuple[str, ...]:
    """One image path (a string), or several (a tuple: an edit's references)."""
    paths = names(value)
    return paths[0] if len(paths) == 1 else paths


def parse_extend(value: Any) -> tuple[int, int, int, int]:
    """'L,T,R,B' pixels (or one number for every side, or a list) -> (left, top, right, bottom)."""
    parts = value if isinstance(value, (list, tuple)) else re.split(r"[,;\s]+", str(value).strip())
    try:
        numbers = [int(p) if not isinstance(p, bool) else None for p in parts]
    except (TypeError, ValueError):
        numbers = [None]
    if None in numbers or len(numbers) not in (1, 4):
        raise ValueError(f"must be LEFT,TOP,RIGHT,BOTTOM pixels such as 0,0,256,0, got {value!r}")
    if any(n < 0 for n in numbers):
        raise ValueError(f"must not be negative (it grows the canvas; crop the image to shrink it), got {value!r}")
    if len(numbers) == 1:
        numbers *= 4
    if not any(numbers):
        raise ValueError("grows nothing: give at least one side more than 0 pixels")
    if max(numbers) > 8192:
        raise ValueError(f"must be at most 8192 pixels a side, got {max(numbers)}")
    return tuple(numbers)


FIELDS = (
    Field("image", image_names, (str, list), "The init image (img2img, inpaint): what the picture starts from; the "
          "output size defaults to its size, rounded to the model's multiple. For edit: a reference image (repeat "
          "for several, where the model takes them).", path="image", metavar="FILE", repeat=True, items=(str,)),
    Field("mask", name, (str,), "Inpaint mask, any size (resized to the image): white is repainted, black kept.",
          path="image", metavar="FILE"),
    Field("strength", parse_strength, (int, float), "Denoising strength in (0, 1]: how far from the init image the "
          "picture may go. Default: 0.75 for img2img, 1 for inpaint.", metavar="FLOAT", preset=True),
    Field("resize", choice({k: k for k in canvas.RESIZE_MODES}, "crop, fit or stretch"), (str,),
          "How the init image (and its mask) meet --size: "
          + "; ".join(f"{k}: {v}" for k, v in canvas.RESIZE_MODES.items()) + ". Default: crop"),
    Field("mask_blur", integer(0, 256), (int,), f"Blur the mask edge by this many pixels, as A1111 does (default "
          f"{DEFAULT_BLUR}); the pixels outside the mask stay the input's own.", metavar="PX", preset=True),
    Field("extend", parse_extend, (str, list), "Outpaint: grow the canvas by LEFT,TOP,RIGHT,BOTTOM pixels "
          "(rounded up to the model's multiple); the new area is filled and repainted, the original pixels stay.",
          metavar="L,T,R,B", json_words='"L,T,R,B" or [l, t, r, b]', items=(int,)),
    Field("extend_fill", choice({k: k for k in canvas.FILLS}, "edge or noise"), (str,),
          "What the grown area starts as: " + "; ".join(f"{k}: {v}" for k, v in canvas.FILLS.items())
          + ". Default: edge"),
    Field("inpaint_area", choice({k: k for k in AREAS}, "whole or masked"), (str,),
          "whole: denoise the whole picture (the default; the model sees all of it, so the repaint fits in); "
          f"masked: only the mask's box plus {MASKED_PADDING} px, upscaled to the output size (A1111's 'Only "
          "masked', more detail for a small mask)."),
)


@dataclass(frozen=True)
class InitSpec:
    """A request's init image, mask and how they are prepared."""

    task: str  # "image2image" or "inpaint"
    image: InputImage
    mask: InputImage | None
    strength: float
    resize: str
    blur: int
    extend: tuple[int, int, int, int] | None  # as given
    grown: tuple[int, int, int, int] | None  # as applied (rounded to the multiple)
    fill: str
    area: str
    width: int
    height: int
    size_from: str  # "image" or "--size"
    record: dict = field(default_factory=dict, compare=False, hash=False)

    def prepared(self) -> tuple:
        """(init image, pipeline mask, overlay mask) at the output size; the masks None for img2img."""
        return _prepared(self)


@lru_cache(maxsize=32)
def _prepared(spec: InitSpec) -> tuple:
    image = load_rgb(spec.image)
    mask = None
    if spec.mask is not None:
        mask = load_rgb(spec.mask).convert("L")
        if mask.size != image.size:
            mask = canvas.resize(mask, image.width, image.height, "stretch", is_mask=True)
    if spec.grown:
        image, mask = canvas.extend_canvas(image, mask, spec.grown, spec.fill, spec.image.sha256)
    image = canvas.resize(image, spec.width, spec.height, spec.resize)
    if mask is None:
        return image, None, None
    mask = canvas.resize(mask, spec.width, spec.height, spec.resize, is_mask=True)
    return image, canvas.blurred(mask, spec.blur), canvas.overlay_mask(mask, spec.blur)


def _one(image: str | tuple[str, ...], task: str) -> str:
    """The init image; several --image values are an edit's references, which img2img and inpaint do not take."""
    if isinstance(image, str):
        return image
    mode = "img2img" if task == "image2image" else task
    raise UsageError(f"--image given {len(image)} times: {mode} starts from one image (several are reference images "
                     f"for `imagegen edit`, on a preset that edits)")


def check_steps(steps: int, strength: float, flags: tuple[str, str]) -> None:
    """diffusers runs int(steps x strength) steps of an img2img or inpaint pass: refuse one that would run none."""
    if int(steps * strength) < 1:
        strength_flag, steps_flag = flags
        raise UsageError(f"{strength_flag} {strength:g} with {steps_flag} {steps} runs no step (about steps x strength "
                         f"run); raise {steps_flag} to at least {math.ceil(1 / strength)} or {strength_flag}")


def _mask_checked(path: str, label: str) -> InputImage:
    """The mask, refused when it asks for nothing (all black) or for everything (all white: that is img2img)."""
    mask = check_image(path, label=label)
    low, high = _extrema(mask)
    if high == 0:
        raise UsageError(f"{label}: the mask is entirely black, so nothing would be repainted; paint white where the "
                         f"picture should change")
    if low == 255:
        raise UsageError(f"{label}: the mask is entirely white, so everything would be repainted; use "
                         f"`imagegen img2img` (no mask) for that")
    return mask


@lru_cache(maxsize=256)
def _extrema(mask: InputImage) -> tuple[int, int]:
    return load_rgb(mask).convert("L").getextrema()


class InitImage(Adapter):
    name = "init"
    panel = "Init image"
    fields = FIELDS
    record_shape = {"image": {"path": str, "sha256": str}, "strength": (int, float), "resize": str,
                    "mask": (dict, type(None)), "extend": (dict, type(None))}

    def default_size(self, given: dict, multiple: int, task: str, family) -> tuple[int, int] | None:
        """Without --size: the init image's size (grown by --extend), rounded to the model's multiple."""
        if given.get("image") is None or task not in DEFAULT_STRENGTH:
            return None
        image = check_image(_one(given["image"], task), label=f"--image {given['image']}")
        width, height = image.width, image.height
        if given.get("extend"):
            left, top, right, bottom = canvas.grown(given["extend"], width, height, multiple)
            width, height = width + left + right, height + top + bottom
        return canvas.round_to(width, multiple), canvas.round_to(height, multiple)

    def resolve(self, given: dict, ctx: ResolveContext) -> InitSpec | None:
        """The image and mask opened, decoded and hashed, the mask checked, and both prepared: no weights load."""
        if given.get("image") is None or ctx.task not in DEFAULT_STRENGTH:
            return None
        image = check_image(_one(given["image"], ctx.task), label=f"--image {given['image']}")
        mask = _mask_checked(given["mask"], f"--mask {given['mask']}") if given.get("mask") else None
        extend = given.get("extend")
        spec = InitSpec(
            task=ctx.task, image=image, mask=mask,
            strength=given.get("strength") or DEFAULT_STRENGTH[ctx.task],
            resize=given.get("resize") or "crop",
            blur=DEFAULT_BLUR if given.get("mask_blur") is None else given["mask_blur"],
            extend=extend, grown=canvas.grown(extend, image.width, image.height, ctx.multiple) if extend else None,
            fill=given.get("extend_fill") or "edge", area=given.get("inpaint_area") or "whole",
            width=ctx.width, height=ctx.height, size_from="--size" if ctx.size_given else "image",
        )
        check_steps(given["steps"], spec.strength, ("--strength", "--steps"))
        init, mask_image, _ = spec.prepared()
        if mask_image is not None and mask_image.getextrema()[1] == 0:
            what = f"--mask {given['mask']}" if given.get("mask") else f"--extend {','.join(map(str, extend))}"
            raise UsageError(f"{what}: after --resize {spec.resize} to {ctx.width}x{ctx.height} nothing is left to "
                             f"repaint; use --resize fit or stretch, or a larger --size")
        spec.record.update(_record(spec, init, mask_image))
        return spec

    def adjust(self, spec: InitSpec, merged: dict, top: dict, family) -> list[str]:
        ignored = [f"--{k.replace('_', '-')}" for k in ("mask_blur", "inpaint_area", "extend_fill")
                   if top.get(k) is not None and spec.task != "inpaint"]
        if top.get("extend_fill") is not None and spec.task == "inpaint" and not spec.extend:
            ignored.append("--extend-fill")
        return [f"{', '.join(ignored)} ignored: {'it applies' if len(ignored) == 1 else 'they apply'} to "
                f"{'--extend' if ignored == ['--extend-fill'] else 'inpaint'} only"] if ignored else []

    def call_arguments(self, spec: InitSpec, family, task: str, count: int = 1) -> dict:
        init, mask, _ = spec.prepared()
        # One copy per image: given a single image, diffusers VAE-samples it once with the first image's generator
        # (and SD3 fails), so an image would depend on its micro-batch; per image, each draws with its own.
        kwargs = {"image": [init] * count, "strength": spec.strength}
        if mask is not None:
            kwargs["mask_image"] = [mask] * count
            if spec.area == "masked":
                kwargs["padding_mask_crop"] = MASKED_PADDING
        return kwargs

    def rare_arguments(self, spec: InitSpec) -> dict[str, str]:
        return {"padding_mask_crop": "--inpaint-area masked"} if spec.area == "masked" and spec.mask else {}

    def finish(self, spec: InitSpec, images: list, run) -> list:
        """Inpaint: every unmasked pixel back to the input's own (diffusers' apply_overlay, with the mask clipped to
        itself so the blur softens the seam only inside it)."""
        init, mask, overlay = spec.prepared()
        if mask is None:
            return images
        return [canvas.composite(image, init, overlay) for image in images]

    def hash_value(self, spec: InitSpec) -> Any:
        return [spec.task, spec.image.sha256, spec.mask.sha256 if spec.mask else None, spec.strength, spec.resize,
                spec.blur if spec.mask or spec.extend else None, spec.grown, spec.fill if spec.extend else None,
                spec.area if spec.task == "inpaint" else None, spec.width, spec.height]

    def a1111(self, part: dict) -> dict[str, str]:
        pairs = {"Denoising strength": f"{part['strength']:g}"}
        if part.get("mask") is not None:
            pairs["Mask blur"] = part["mask"]["blur"]
            if part["mask"]["area"] == "masked":
                pairs.update({"Inpaint area": AREAS["masked"], "Masked area padding": MASKED_PADDING})
        if part.get("extend"):
            pairs["Outpaint"] = "{}px left, {}px up, {}px right, {}px down".format(*part["extend"]["applied"])
        return pairs

    def replay(self, part: dict | None) -> dict:
        if not part:
            return {}
        fields = {"image": part["image"]["path"], "strength": part["strength"], "resize": part["resize"]}
        if part.get("mask") is not None:
            mask = part["mask"]
            fields.update({"mask_blur": mask["blur"], "inpaint_area": mask["area"]})
            if mask.get("path") is not None:
                fields["mask"] = mask["path"]
        if part.get("extend"):
            fields.update({"extend": part["extend"]["given"], "extend_fill": part["extend"]["fill"]})
        return fields

    def inputs(self, part: dict) -> dict[str, str]:
        found = {part["image"]["path"]: part["image"]["sha256"]}
        if (part.get("mask") or {}).get("path") is not None:
            found[part["mask"]["path"]] = part["mask"]["sha256"]
        return found

    def map_paths(self, part: dict, image, weights) -> dict:
        mapped = {**part, "image": {**part["image"], "path": image(part["image"]["path"])}}
        if (part.get("mask") or {}).get("path") is not None:
            mapped["mask"] = {**part["mask"], "path": image(part["mask"]["path"])}
        return mapped


def _record(spec: InitSpec, init, mask) -> dict:
    """The init part of the record: every input's hash and size, how each was prepared, and what came of it."""
    record: dict = {
        "image": spec.image.record(),
        "strength": spec.strength,
        "resize": spec.resize,
        "size_from": spec.size_from,
        "prepared_sha256": pixels_sha256(init),
        "mask": None,
        "extend": None,
    }
    if mask is not None:
        source = spec.mask.record() if spec.mask else {"path": None, "sha256": None}
        record["mask"] = {**source, "resized_to": [spec.width, spec.height], "blur": spec.blur, "area": spec.area,
                          "prepared_sha256": pixels_sha256(mask)}
    if spec.extend:
        record["extend"] = {"given": list(spec.extend), "applied": list(spec.grown), "fill": spec.fill}
    return record
