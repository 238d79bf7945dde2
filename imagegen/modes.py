"""Modes: what a command asks of a pipeline. A mode is a diffusers task (the key of a family's pipeline table, as in
diffusers' AUTO_TEXT2IMAGE / IMAGE2IMAGE / INPAINT mappings) and the call arguments it adds; which one a request runs
follows from its fields (an init image makes it img2img, a mask or --extend makes that inpaint), so batch lines,
compare cells and replays pick theirs the same way a command does."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .errors import UsageError, closest


@dataclass(frozen=True)
class Mode:
    name: str  # as the command and the record say it
    task: str  # the family's pipeline table key: "text2image", "image2image", "inpaint"
    needs: tuple[str, ...] = ()  # fields it cannot run without
    marks: tuple[str, ...] = ()  # fields any one of which selects it (beyond `needs`)
    refuses: tuple[str, ...] = ()  # fields that belong to another mode (a part's first field: all of that part's)
    by_preset: bool = False  # selected only where the preset runs it (an init image on an edit preset is an edit)

    def call_arguments(self, reqs) -> dict:
        """The arguments every image of one micro-batch shares in this mode (reqs share a group key); an init
        image's arguments come from its part (adapters/init_image.py)."""
        first = reqs[0]
        return {
            "prompt": [r.prompt for r in reqs],
            "num_images_per_prompt": 1,
            "num_inference_steps": first.steps,
            "width": first.width,
            "height": first.height,
        }

    def selected_by(self, given: dict, can: Callable[[Mode], bool] = lambda mode: True) -> bool:
        return all(given.get(f) is not None for f in self.needs) and (
            not self.marks or any(given.get(f) is not None for f in self.marks)) and (not self.by_preset or can(self))


# Most specific first: the first mode whose fields a request has is its mode.
MODES: dict[str, Mode] = {m.name: m for m in (
    Mode("inpaint", "inpaint", needs=("image",), marks=("mask", "extend"), refuses=("hires",)),
    # Instruction editing: the images are references the model reads (Kontext, Qwen-Image-Edit, FLUX.2), not a
    # start to denoise from; a preset that edits runs an image as one.
    Mode("edit", "edit", needs=("image",), by_preset=True,
         refuses=("mask", "extend", "hires", "strength", "resize", "mask_blur", "extend_fill", "inpaint_area")),
    Mode("img2img", "image2image", needs=("image",),
         refuses=("mask", "extend", "hires", "mask_blur", "extend_fill", "inpaint_area")),
    Mode("txt2img", "text2image", refuses=("image", "mask", "extend")),
)}


def get_mode(name: str) -> Mode:
    try:
        return MODES[name]
    except KeyError:
        raise UsageError(f"unknown mode {name!r}{closest(name, MODES)}; known: {', '.join(MODES)}") from None


def mode_for(given: dict, command: str | None = None, can: Callable[[Mode], bool] = lambda mode: True) -> Mode:
    """The mode a request's fields select (`can`: whether the preset runs a mode); a command that names its mode is
    held to it (one line naming the flag that is missing or out of place, and the command that takes it)."""
    found = next(m for m in MODES.values() if m.selected_by(given, can))
    if command is None or found.name == command:
        if found.name == "txt2img" and given.get("mask") is not None:
            raise UsageError("--mask needs --image FILE (the picture the mask belongs to)")
        return found
    wanted = get_mode(command)
    if wanted.selected_by(given):  # the command's own mode, which the preset may still refuse (naming those that can)
        extra = next((f for f in wanted.refuses if given.get(f) is not None), None)
        if extra is None:
            return wanted
        raise UsageError(f"{_flag(extra)} belongs to `imagegen {found.name}`, not `imagegen {command}`")
    missing = [f for f in wanted.needs if given.get(f) is None]
    if missing:
        what = "the picture to edit" if command == "edit" else "the picture to start from"
        raise UsageError(f"{command} needs {_flag(missing[0])} FILE ({what})")
    if wanted.marks and not any(given.get(f) is not None for f in wanted.marks):
        raise UsageError(f"{command} needs " + " or ".join(_flag(f) for f in wanted.marks)
                         + " (what to repaint); without one, run `imagegen img2img`")
    extra = next(f for f in wanted.refuses if given.get(f) is not None)
    raise UsageError(f"{_flag(extra)} belongs to `imagegen {found.name}`, not `imagegen {command}`")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")
