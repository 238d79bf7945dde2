"""Modes: what a command asks of a pipeline. A mode is a diffusers task (the key of a family's pipeline table) and
the call arguments it adds; image-conditioned modes (img2img, inpaint, edit) join as entries here."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import UsageError, closest


@dataclass(frozen=True)
class Mode:
    name: str  # as the command and the record say it
    task: str  # the family's pipeline table key: "text2image", "image2image", "inpaint"

    def call_arguments(self, reqs) -> dict:
        """The arguments every image of one micro-batch shares in this mode (reqs share a group key)."""
        first = reqs[0]
        return {
            "prompt": [r.prompt for r in reqs],
            "num_images_per_prompt": 1,
            "num_inference_steps": first.steps,
            "width": first.width,
            "height": first.height,
        }


MODES: dict[str, Mode] = {m.name: m for m in (Mode("txt2img", "text2image"),)}


def get_mode(name: str) -> Mode:
    try:
        return MODES[name]
    except KeyError:
        raise UsageError(f"unknown mode {name!r}{closest(name, MODES)}; known: {', '.join(MODES)}") from None
