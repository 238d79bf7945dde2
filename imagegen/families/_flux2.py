"""What FLUX.2 [dev] and [klein] share: their pipelines' image processor (Flux2ImageProcessor) and so how a reference
image is taken. Not a family (a module whose name starts with "_" is a family's helper)."""

from __future__ import annotations

import math

from ..errors import UsageError

REFERENCE_AREA = 1024 * 1024  # the pipelines shrink a larger reference (and so their default output) to this area
MIN_SIDE, MAX_ASPECT = 64, 8  # Flux2ImageProcessor.check_image_input refuses references outside these


def reference_size(width: int, height: int, label: str) -> tuple[int, int]:
    """The size a reference is given to the pipeline at: grown to 64 px on its short side where smaller (the pipeline
    refuses it mid-run, after loading); one past 8:1, which the pipeline refuses too, is refused here in one line."""
    if max(width, height) > MAX_ASPECT * min(width, height):
        raise UsageError(f"--image: a {width}x{height} reference; {label} takes aspect ratios up to {MAX_ASPECT}:1")
    scale = MIN_SIDE / min(width, height)
    return (width, height) if scale <= 1 else (round(width * scale), round(height * scale))


def edit_size(sizes: list[tuple[int, int]], multiple: int, label: str) -> tuple[int, int, str]:
    """The pipelines' own output rule: the first reference, shrunk to REFERENCE_AREA if larger
    (Flux2ImageProcessor._resize_to_target_area), rounded down to the multiple."""
    width, height = [reference_size(*size, label) for size in sizes][0]  # each checked before any weights load
    if width * height > REFERENCE_AREA:
        scale = math.sqrt(REFERENCE_AREA / (width * height))
        width, height = int(width * scale), int(height * scale)
    return (max(multiple, width // multiple * multiple), max(multiple, height // multiple * multiple),
            f"the first image's size (shrunk to 1024x1024's area if larger, grown to {MIN_SIDE} px a side if "
            f"smaller), rounded down to a multiple of {multiple}")


def edit_arguments(images: list, label: str) -> dict:
    """One list of references for every image of the call: the pipelines encode them once and repeat them over the
    batch (they shrink and crop each themselves)."""
    from PIL import Image

    def fitted(image):
        size = reference_size(*image.size, label)
        return image if size == image.size else image.resize(size, Image.Resampling.LANCZOS)

    return {"image": [fitted(image) for image in images]}
