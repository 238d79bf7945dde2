"""The reference images of an edit (`imagegen edit`, or a batch line with `image` on a preset that edits): opened and
hashed before any weights load, counted against what the family's edit pipeline takes, the output size from the
family's own rule unless --size is given, and the record, A1111 text and replay. The images are the init image's
`--image` field (repeat it for several references); the family turns them into call arguments."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import UsageError
from ..inputs import InputImage, check_image, load_rgb
from .base import Adapter, ResolveContext

EDIT_TASK = "edit"


def references(given: dict) -> tuple[str, ...]:
    """The --image values as a tuple (one image is a plain string in the request)."""
    value = given.get("image")
    return () if value is None else (value,) if isinstance(value, str) else tuple(value)


@dataclass(frozen=True)
class EditSpec:
    """An edit's reference images and its output size."""

    images: tuple[InputImage, ...]
    width: int
    height: int
    size_from: str  # "--size", or the family's rule in words
    record: dict = field(default_factory=dict, compare=False, hash=False)


class Edit(Adapter):
    name = "edit"
    fields = ()  # its images are the init image's --image field (imagegen.adapters.init_image)
    needs_main = False
    record_shape = {"images": list, "size_from": str}

    def default_size(self, given: dict, multiple: int, task: str, family) -> tuple[int, int] | None:
        """Without --size: the family's output rule for these references (Kontext's preferred resolutions,
        Qwen-Image-Edit's area rule, ...)."""
        if task != EDIT_TASK or not references(given):
            return None
        images = _checked(given, family)
        width, height, _ = family.edit_size([(i.width, i.height) for i in images], multiple)
        return width, height

    def resolve(self, given: dict, ctx: ResolveContext) -> EditSpec | None:
        if ctx.task != EDIT_TASK:
            return None
        images = _checked(given, ctx.family)
        rule = "--size" if ctx.size_given else ctx.family.edit_size(
            [(i.width, i.height) for i in images], ctx.multiple)[2]
        spec = EditSpec(images=images, width=ctx.width, height=ctx.height, size_from=rule)
        spec.record.update({"images": [i.record() for i in images], "size": [ctx.width, ctx.height],
                            "size_from": rule})
        return spec

    def call_arguments(self, spec: EditSpec, family, task: str, count: int = 1) -> dict:
        return family.edit_arguments([load_rgb(i) for i in spec.images], spec.width, spec.height, count)

    def hash_value(self, spec: EditSpec) -> Any:
        return [[i.sha256 for i in spec.images], spec.width, spec.height]

    def a1111(self, part: dict) -> dict[str, str]:
        # A1111 has no edit mode; its readers show unknown pairs as they are.
        return {"Edit images": ", ".join(i["sha256"][:10] for i in part["images"])}

    def replay(self, part: dict | None) -> dict:
        if not part:
            return {}
        paths = [i["path"] for i in part["images"]]
        return {"image": paths[0] if len(paths) == 1 else paths}

    def inputs(self, part: dict) -> dict[str, str]:
        return {i["path"]: i["sha256"] for i in part["images"]}

    def map_paths(self, part: dict, image, weights) -> dict:
        return {**part, "images": [{**i, "path": image(i["path"])} for i in part["images"]]}


def _checked(given: dict, family) -> tuple[InputImage, ...]:
    """Each reference opened and hashed, and no more of them than the family's edit takes."""
    paths = references(given)
    if len(paths) > family.edit_images:
        raise UsageError(f"--image given {len(paths)} times: {family.label} edits take at most {family.edit_images} "
                         f"reference image{'s' if family.edit_images > 1 else ''}")
    return tuple(check_image(p, label=f"--image {p}") for p in paths)
