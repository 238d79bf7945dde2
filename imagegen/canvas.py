"""Preparing an init image and its mask for img2img and inpaint: resized to the output size (crop, fit or stretch),
grown for outpainting (--extend, the new area filled and masked), the mask blurred as A1111 does, and the finished
image composited so that every unmasked pixel is the input's own. Pillow and OpenCV do the pixel work."""

from __future__ import annotations

import hashlib

from .inputs import fit

RESIZE_MODES = {
    "crop": "scale to cover the output size, then centre-crop (A1111's 'Crop and resize'): no distortion",
    "fit": "scale to fit inside, then fill the margins from the edge pixels (A1111's 'Resize and fill')",
    "stretch": "scale to the output size exactly (A1111's 'Just resize')",
}
FILLS = {
    "edge": "the border pixels stretched outward (OpenCV's BORDER_REPLICATE)",
    "noise": "random colour noise (fixed by the input's hash, so a replay fills it the same way)",
}


def round_to(value: int, multiple: int) -> int:
    """The nearest multiple (at least one multiple)."""
    return max(multiple, round(value / multiple) * multiple)


def grown(extend: tuple[int, int, int, int], width: int, height: int, multiple: int) -> tuple[int, int, int, int]:
    """--extend L,T,R,B with each grown axis rounded up so the canvas is a multiple of `multiple`; the extra pixels go
    to the side that was extended (the right or bottom one when both were)."""
    left, top, right, bottom = extend

    def pad(size: int, a: int, b: int) -> tuple[int, int]:
        if not a and not b:
            return a, b
        extra = -(size + a + b) % multiple
        return (a, b + extra) if b else (a + extra, b)

    left, right = pad(width, left, right)
    top, bottom = pad(height, top, bottom)
    return left, top, right, bottom


def _replicate(pixels, top: int, bottom: int, left: int, right: int, value=None):
    import cv2

    if value is None:
        return cv2.copyMakeBorder(pixels, top, bottom, left, right, cv2.BORDER_REPLICATE)
    return cv2.copyMakeBorder(pixels, top, bottom, left, right, cv2.BORDER_CONSTANT, value=value)


def extend_canvas(image, mask, extend: tuple[int, int, int, int], fill: str, seed_text: str):
    """The image on a larger canvas (the new area filled) and the mask with the new area white."""
    import numpy as np
    from PIL import Image

    left, top, right, bottom = extend
    pixels = np.asarray(image)
    canvas = _replicate(pixels, top, bottom, left, right)
    if fill == "noise":
        rng = np.random.default_rng(int(hashlib.sha256(seed_text.encode()).hexdigest()[:16], 16))
        noise = rng.integers(0, 256, canvas.shape, dtype=np.uint8)
        keep = np.zeros(canvas.shape[:2], dtype=bool)
        keep[top : top + pixels.shape[0], left : left + pixels.shape[1]] = True
        canvas = np.where(keep[..., None], canvas, noise)
    old = np.asarray(mask) if mask is not None else np.zeros(pixels.shape[:2], dtype=np.uint8)
    grown_mask = _replicate(np.ascontiguousarray(old), top, bottom, left, right, value=255)
    return Image.fromarray(np.ascontiguousarray(canvas)), Image.fromarray(grown_mask)


def resize(image, width: int, height: int, how: str, *, is_mask: bool = False):
    """`image` brought to width x height by a --resize mode; a mask is resized exactly as its image is."""
    from PIL import Image

    if image.size == (width, height):
        return image
    if how == "stretch":
        return image.resize((width, height), Image.Resampling.LANCZOS)
    if how == "crop":
        return fit(image, width, height)  # the control maps' 'Crop and resize'
    scale = min(width / image.width, height / image.height)
    w, h = min(width, max(1, round(image.width * scale))), min(height, max(1, round(image.height * scale)))
    scaled = image.resize((w, h), Image.Resampling.LANCZOS)
    import numpy as np

    left, top = (width - w) // 2, (height - h) // 2
    # A mask's margins are kept (black): 'fit' adds context around the picture, it does not ask for it to be drawn.
    value = 0 if is_mask else None
    padded = _replicate(np.asarray(scaled), top, height - h - top, left, width - w - left, value=value)
    return Image.fromarray(np.ascontiguousarray(padded))


def blurred(mask, radius: int):
    """The mask as the pipeline gets it: Gaussian-blurred by --mask-blur pixels, as diffusers' VaeImageProcessor.blur
    does (PIL's GaussianBlur; done here so that preparing an input never has to import diffusers and torch)."""
    from PIL import ImageFilter

    return mask.filter(ImageFilter.GaussianBlur(radius)) if radius else mask


def overlay_mask(mask, radius: int):
    """Where the generated pixels show in the finished image: the blurred mask, but never outside the given mask, so
    every pixel the mask leaves black is the input's own (the seam is softened inside the repainted area only)."""
    from PIL import ImageChops

    return ImageChops.darker(blurred(mask, radius), mask)


def composite(generated, init, mask):
    """The finished inpaint: diffusers' own VaeImageProcessor.apply_overlay pastes the input back where `mask` is
    black (and blends where it is grey)."""
    from diffusers.image_processor import VaeImageProcessor

    if generated.size != init.size:  # padding_mask_crop has already pasted its region back at the full size
        return generated
    return VaeImageProcessor().apply_overlay(mask, init, generated)
