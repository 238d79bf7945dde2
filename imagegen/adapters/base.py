"""The adapter protocol: every add-on that conditions or changes a pipeline (ControlNet, IP-Adapter, later LoRA)
implements these steps, and the rest of imagegen knows adapters only through them."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable

from ..fields import Field


@dataclass(frozen=True)
class ResolveContext:
    """What an adapter may consult while it resolves, before any weights load."""

    preset: Any  # imagegen.presets.Preset
    family: Any  # imagegen.families.Family
    task: str
    width: int
    height: int
    presets_with: Callable[[str], list[str]]  # names of this family's presets that have a given table
    multiple: int = 8  # what the model's sizes must be a multiple of
    max_side: int | None = None  # the largest side the model takes, where it has one
    variant: str | None = None  # the preset's pipeline variant for this task ("fill"), if any
    size_given: bool = False  # --size was given (else the size came from the preset or an init image)
    model: Any = None  # imagegen.models.ModelInfo: what the model's configs say (no weights read)


class Adapter:
    """One kind of add-on. The defaults do nothing, so each adapter implements only the steps it has."""

    name: str = ""  # its key in the record and the request field that turns it on
    fields: tuple[Field, ...] = ()  # its request fields: fields[0] turns it on, the others need it
    preset_table: str | None = None  # the preset table holding its defaults ([controlnet], [ip_adapter])
    variant: str | None = None  # the (family x task) pipeline variant it runs in ("controlnet"), if any
    in_place: bool = False  # applied to the loaded pipeline itself (removed again when a request lacks it)
    record_shape: Any = None  # what its record part must look like when read back (imagegen.readback's shapes)
    needs_main: bool = True  # its other fields need fields[0] (False where the prompt can turn it on: <lora:> tags)

    # ---- before any weights load

    def check_preset_table(self, table: Any, where: str) -> dict:
        """Validate the preset's table for this adapter; errors name the file and key."""
        raise NotImplementedError

    def resolve(self, given: dict, ctx: ResolveContext) -> Any | None:
        """The request's spec for this adapter (every input checked, its record computed), or None if unused."""
        raise NotImplementedError

    def default_size(self, given: dict, multiple: int, task: str, family) -> tuple[int, int] | None:
        """The output size this part implies in this task when none was given (an init image's), or None."""
        return None

    def adjust(self, spec: Any, merged: dict, top: dict, family) -> list[str]:
        """Settings this adapter changes in the merged request (e.g. CFG it needs), and notes saying so."""
        return []

    # ---- with weights

    def key(self, spec: Any) -> tuple:
        """What it loads: requests with equal keys share the loaded weights."""
        return ()

    def apply(self, pipe, spec: Any, loaded) -> None:
        """Load into the pipeline itself (in_place adapters)."""

    def update(self, pipe, spec: Any) -> None:
        """Per-request settings of an adapter already applied with the same key (its scale)."""

    def remove(self, pipe, loaded) -> None:
        """Undo `apply`, so the pipeline makes plain images again."""

    def components(self, spec: Any, loaded) -> dict:
        """Modules the variant pipeline is built with (from_pipe)."""
        return {}

    def prompt_text(self, spec: Any, text: str) -> str:
        """A prompt (or negative) as the encoders read it with this adapter applied (an embedding's name as its
        token)."""
        return text

    def call_arguments(self, spec: Any, family, task: str, count: int = 1) -> dict:
        """Its pipeline call arguments, for a micro-batch of `count` images."""
        return {}

    def rare_arguments(self, spec: Any) -> dict[str, str]:
        """Call arguments not every pipeline of a task takes -> the setting that asks for it (checked against the
        pipeline class before loading)."""
        return {}

    def during_call(self, pipe, spec: Any, family, seeds: list[int]):
        """A context wrapped around the pipeline call."""
        return contextlib.nullcontext()

    def finish(self, spec: Any, images: Any, run) -> Any:
        """The call's images, finished (composited, or refined by a second pass through `run.again`)."""
        return images

    def extras(self, spec: Any) -> list[tuple[str, Any]]:
        """(label, image) pairs saved beside each image as <name>.<label>.png."""
        return []

    # ---- the recipe

    def hash_value(self, spec: Any) -> Any:
        """What enters the image's recipe hash (by content: a changed input is a different image)."""
        raise NotImplementedError

    def a1111(self, part: dict) -> dict[str, str]:
        """Its A1111 `parameters` pairs, from its record part."""
        return {}

    def replay(self, part: dict) -> dict:
        """Its record part as request fields (raises KeyError or TypeError when malformed)."""
        raise NotImplementedError

    def inputs(self, part: dict) -> dict[str, str]:
        """The input files its record part names -> their recorded sha256."""
        return {}

    def map_paths(self, part: Any, image: Callable[[str], str], weights: Callable[[dict, str], dict]) -> Any:
        """Its record part with each input image path passed through `image` and each model dict through
        `weights(model, flag)`: how imagegen.portable records and replays local files."""
        return part


def pinned(model: dict) -> str:
    """A recorded net or adapter as `id@revision` when its revision is known, so a replay loads the same weights."""
    return f"{model['id']}@{model['revision']}" if model.get("revision") else model["id"]
