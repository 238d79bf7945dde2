"""--memory auto (the default): on a CUDA GPU, the fastest memory plan that fits its free memory, chosen before
loading by imagegen.memory (each component's size from its safetensors headers or configs, the activations at the
request's size and batch, the documented order of steps) and turned into the memory settings it stands for. Said in
one line before loading; one step further down the order if the GPU still runs out of memory; recorded as what ran.

Auto plans only where the user chose no memory setting of their own (--offload, --quantize); --memory off runs
exactly what the flags say, and --offload auto asks for the plan whatever --memory says. On the CPU and MPS nothing
is planned (there is no separate VRAM to fit); --offload auto is then none."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, replace

from .errors import ImagegenError
from .runtime import LoadOptions
# What each step of imagegen.memory.STEPS sets; every step past the first decodes in tiles, as its estimate assumes.
TILED = {"vae_tiling": "on"}
STEP_SETTINGS = {
    "none": {},
    "vae-tiling": TILED,
    "model-offload": {"offload": "model", **TILED},
    "int8": {"offload": "model", "quantize": "int8", **TILED},
    "group-offload": {"offload": "group", **TILED},
    "nf4": {"offload": "model", "quantize": "nf4", **TILED},
    "sequential-offload": {"offload": "sequential", **TILED},
}
STEP_NEEDS = {"nf4": "bitsandbytes"}  # a step whose package is not installed is passed over


@dataclass(frozen=True)
class Fit:
    """An auto plan: the steps left to try (the chosen one first), and what they were chosen from."""

    steps: tuple[str, ...]
    peaks: dict  # step -> estimated peak in bytes
    vram: int  # free bytes on the GPU when planned
    quantized: str | None  # the component the int8 and nf4 steps quantize (the biggest)
    denoiser: str
    stepped_from: str | None = None  # the step that ran out of memory, after a step down

    @property
    def step(self) -> str:
        return self.steps[0]

    def options(self, base: LoadOptions) -> LoadOptions:
        """The memory settings of the chosen step over the request's own."""
        base = base.concrete()
        settings = dict(STEP_SETTINGS[self.step])
        if "quantize" in settings and self.quantized and self.quantized != self.denoiser:
            settings["quantize"] = f"{self.quantized}={settings['quantize']}"
        return replace(base, **settings)

    def down(self) -> Fit | None:
        """The next step of the order, after an out-of-memory error (None: nothing further, or stepped once)."""
        if self.stepped_from is not None or len(self.steps) < 2:
            return None
        return replace(self, steps=self.steps[1:], stepped_from=self.step)

    def at(self, step: str, stepped_from: str) -> Fit:
        """This plan from `step` on (where an earlier load of the run stepped down to), if it holds that step."""
        if step not in self.steps or self.steps.index(step) == 0:
            return self
        return replace(self, steps=self.steps[self.steps.index(step):], stepped_from=stepped_from)

    def line(self, label: str, size: str) -> str:
        gib = 2**30
        what = {"none": "everything on the GPU"}.get(self.step, self.step.replace("-", " "))
        if self.step in ("int8", "nf4"):
            what = f"model offload, {self.quantized} in {self.step}"
        if self.stepped_from:
            return f"memory auto: out of memory with {self.stepped_from.replace('-', ' ')}; stepping down to {what}"
        return (f"memory auto: {self.vram / gib:.1f} GiB free; {label} at {size} fits with {what} "
                f"(estimated peak {self.peaks[self.step] / gib:.1f} GiB; --memory off runs the flags as given)")

    def record(self) -> dict:
        return {"mode": "auto", "plan": self.step, "free_vram": self.vram, "estimated_peak": self.peaks[self.step],
                **({"stepped_down_from": self.stepped_from} if self.stepped_from else {})}


def plan(req, options: LoadOptions, device: str, dtype: str, vram: int | None = None) -> Fit | None:
    """The auto plan for a request about to load on `device` (None: nothing to plan, or the user's settings rule)."""
    asked = options.offload == "auto" or (req.memory == "auto" and options.offload == "none")
    if not asked or options.quantize != "none" or not device.startswith("cuda"):
        return None  # the user's own memory settings run as given
    from .memory import choose, device_vram, estimate

    vram = device_vram() if vram is None else vram
    if vram is None:
        return None
    try:
        est = estimate(req.model, (req.width, req.height), req.batch_size, dtype, cfg=req.cfg, preset=req.preset)
    except (ImagegenError, OSError, ValueError, KeyError):  # sizes not readable (an unusual layout): no plan
        return None
    result = choose(est.components, est.activations, vram)
    usable = [s for s in result.steps if importlib.util.find_spec(STEP_NEEDS.get(s.step, "torch")) is not None]
    first = next((i for i, s in enumerate(usable) if s.fits), len(usable) - 1)  # nothing fits: the last resort
    return Fit(steps=tuple(s.step for s in usable[first:]), peaks={s.step: s.peak for s in result.steps},
               vram=vram, quantized=result.quantized, denoiser=req.family.denoiser)


def record(req, fit: Fit | None) -> dict:
    """What the image's record says of the memory plan."""
    if fit is not None:
        return fit.record()
    return {"mode": req.memory, "plan": None}
