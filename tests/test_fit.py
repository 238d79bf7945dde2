"""--memory auto (imagegen.fit): the plan chosen for a table of (model, free VRAM) cases from a fake
torch.cuda.mem_get_info, the settings each step stands for, when nothing is planned, and one step down on
out-of-memory, said and recorded, with an exact replay."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from imagegen import fit
from imagegen.runtime import LoadOptions

GiB = 2**30


def request(preset: str, **extra):
    from imagegen.presets import load_preset

    p = load_preset(preset)
    fields = dict(memory="auto", model=p.model, width=p.defaults.size[0], height=p.defaults.size[1], batch_size=1,
                  cfg=p.defaults.cfg, preset=preset, family=p.family)
    return SimpleNamespace(**{**fields, **extra})


@pytest.fixture
def gpu(monkeypatch):
    """A CUDA GPU as imagegen.memory sees it: `gpu(free GiB)`."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)

    def with_free(gib: float) -> None:
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (int(gib * GiB), 80 * GiB))

    return with_free


# (preset, free GiB) -> (step, offload, quantize, vae tiling); bf16 at the preset's size, batch 1, no bitsandbytes
CASES = [
    ("sdxl", 24, "none", "none", "none", "off"),
    ("sdxl", 8, "model-offload", "model", "none", "on"),
    ("sdxl", 6, "int8", "model", "int8", "on"),
    ("sd3.5-large", 40, "none", "none", "none", "off"),
    ("sd3.5-large", 24, "model-offload", "model", "none", "on"),
    ("sd3.5-large", 16, "int8", "model", "int8", "on"),
    ("sd3.5-large", 8, "group-offload", "group", "none", "on"),
    ("flux-dev", 40, "none", "none", "none", "off"),
    ("flux-dev", 24, "model-offload", "model", "none", "on"),
    ("flux-dev", 16, "int8", "model", "int8", "on"),
    ("flux-dev", 12, "group-offload", "group", "none", "on"),  # the question: it runs on a 12 GB card
    ("flux-schnell", 4, "group-offload", "group", "none", "on"),
]


@pytest.mark.parametrize("preset, gib, step, offload, quantize, tiling", CASES)
def test_the_auto_plan_for_each_model_and_free_memory(gpu, monkeypatch, preset, gib, step, offload, quantize, tiling):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else
                        real(name, *a))
    gpu(gib)
    planned = fit.plan(request(preset), LoadOptions(), "cuda", "bfloat16")
    options = planned.options(LoadOptions())
    assert (planned.step, options.offload, options.quantize, options.vae_tiling) == (step, offload, quantize, tiling)
    assert "nf4" not in planned.steps  # bitsandbytes is not installed: its step is passed over
    assert planned.record()["plan"] == step and planned.record()["free_vram"] == int(gib * GiB)
    line = planned.line(preset, "1024x1024")
    assert line.startswith(f"memory auto: {gib:.1f} GiB free; {preset} at 1024x1024 fits with ") and "\n" not in line


def test_nf4_is_a_step_where_bitsandbytes_is_installed(gpu, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "bitsandbytes" else
                        real(name, *a))
    gpu(80)
    planned = fit.plan(request("flux-dev"), LoadOptions(), "cuda", "bfloat16")
    assert planned.steps[planned.steps.index("group-offload") + 1] == "nf4"
    gpu(2)  # nothing fits by the estimate: the last resort is tried
    assert fit.plan(request("flux-dev"), LoadOptions(), "cuda", "bfloat16").steps == ("sequential-offload",)


def test_a_step_down_takes_the_next_step_once(gpu):
    gpu(16)
    planned = fit.plan(request("flux-dev"), LoadOptions(), "cuda", "bfloat16")
    lower = planned.down()
    assert (planned.step, lower.step, lower.stepped_from) == ("int8", "group-offload", "int8")
    assert lower.down() is None  # once
    assert lower.options(LoadOptions()).offload == "group" and lower.record()["stepped_down_from"] == "int8"
    assert "out of memory with int8; stepping down to group offload" in lower.line("flux-dev", "1024x1024")


def test_nothing_is_planned_off_cuda_with_memory_off_or_with_the_users_own_settings(gpu):
    gpu(8)
    req = request("flux-dev")
    assert fit.plan(req, LoadOptions(), "cpu", "float32") is None
    assert fit.plan(request("flux-dev", memory="off"), LoadOptions(), "cuda", "bfloat16") is None
    assert fit.plan(req, LoadOptions(offload="model"), "cuda", "bfloat16") is None
    assert fit.plan(req, LoadOptions(quantize="fp8"), "cuda", "bfloat16") is None
    assert fit.plan(req, LoadOptions(vae_tiling="on"), "cuda", "bfloat16") is not None  # not a memory plan


def test_a_quantized_component_other_than_the_denoiser_is_named():
    planned = fit.Fit(steps=("int8",), peaks={"int8": 1}, vram=2, quantized="text_encoder_3", denoiser="transformer")
    assert planned.options(LoadOptions()).quantize == "text_encoder_3=int8"


@pytest.mark.slow
def test_out_of_memory_steps_down_once_says_so_and_records_what_ran(cli, tiny_models, tmp_path, monkeypatch):
    """On the CPU: a plan of (none, model offload) whose first load runs out of memory (a stand-in for the GPU's)."""
    from imagegen import loading, session
    from imagegen.errors import OutOfMemory

    loading._LOADED.clear()
    planned = fit.Fit(steps=("none", "model-offload"), peaks={"none": 3 * GiB, "model-offload": GiB}, vram=2 * GiB,
                      quantized="unet", denoiser="unet")
    monkeypatch.setattr(session, "plan_memory", lambda req, *a: planned if req.memory == "auto" else None)
    real = loading.load_model

    def short_of_memory(*args, options, **kw):
        if options.offload == "none":
            raise OutOfMemory("out of memory moving the model to cuda (a stand-in)")
        return real(*args, options=options, **kw)

    monkeypatch.setattr(loading, "load_model", short_of_memory)
    result = cli("txt2img", "a red fox", "--model", tiny_models["sdxl"], "--size", "64x64", "--steps", "3",
                 "--seed", "4", "-o", tmp_path, "--json")
    assert result.code == 0, result.err
    said = " ".join(result.err.split())  # the console wraps long notes
    assert ("note: memory auto: 2.0 GiB free; sdxl at 64x64 fits with everything on the GPU (estimated peak 3.0 GiB; "
            "--memory off runs the flags as given) note: memory auto: out of memory with none; stepping down to "
            "model offload") in said, result.err
    image = json.loads(result.out)["images"][0]
    runtime = json.loads(Path(image["sidecar"]).read_text())["runtime"]
    assert runtime["offload"] == "model" and runtime["vae_tiling"] == "on"
    assert runtime["memory"] == {"mode": "auto", "plan": "model-offload", "free_vram": 2 * GiB,
                                 "estimated_peak": GiB, "stepped_down_from": "none"}
    replay = cli("reproduce", image["path"], "--verify")  # replays what ran, with --memory off
    assert replay.code == 0, replay.err


def test_a_model_whose_sizes_cannot_be_read_is_not_planned(gpu):
    gpu(8)
    assert fit.plan(request("demo", model="builtin:nothing-here"), LoadOptions(), "cuda", "float32") is None


def test_after_a_step_down_later_plans_start_where_it_stepped_to(gpu):
    gpu(16)
    planned = fit.plan(request("flux-dev"), LoadOptions(), "cuda", "bfloat16")
    later = planned.at("group-offload", "int8")
    assert later.step == "group-offload" and later.stepped_from == "int8" and later.down() is None
    assert planned.at("none", "int8") is planned  # a plan that starts lower already is kept


@pytest.mark.slow
def test_a_batch_keeps_the_stepped_down_plan_for_its_later_groups(cli, tiny_models, tmp_path, monkeypatch):
    from imagegen import loading, session
    from imagegen.errors import OutOfMemory

    loading._LOADED.clear()
    planned = fit.Fit(steps=("none", "model-offload"), peaks={"none": 3 * GiB, "model-offload": GiB}, vram=2 * GiB,
                      quantized="unet", denoiser="unet")
    monkeypatch.setattr(session, "plan_memory", lambda req, *a: planned)
    real = loading.load_model
    tried = []

    def short_of_memory(*args, options, **kw):
        tried.append(options.offload)
        if options.offload == "none":
            raise OutOfMemory("out of memory moving the model to cuda (a stand-in)")
        return real(*args, options=options, **kw)

    monkeypatch.setattr(loading, "load_model", short_of_memory)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "a", "size": "64x64"}\n{"prompt": "b", "size": "64x32"}\n')  # two groups
    result = cli("batch", prompts, "--model", tiny_models["sdxl"], "--steps", "2", "--out", tmp_path / "run", "-q",
                 "--json")
    assert result.code == 0, result.err
    assert json.loads(result.out)["done"] == 2
    assert tried == ["none", "model", "model"]  # the second group starts at the step the first stepped down to


def test_offload_auto_asks_for_the_plan_even_with_memory_off(gpu):
    gpu(12)
    planned = fit.plan(request("flux-dev", memory="off"), LoadOptions(offload="auto"), "cuda", "bfloat16")
    assert planned.step == "group-offload" and planned.options(LoadOptions(offload="auto")).offload == "group"
    gpu(80)  # everything fits: auto is none
    planned = fit.plan(request("flux-dev", memory="off"), LoadOptions(offload="auto"), "cuda", "bfloat16")
    assert planned.options(LoadOptions(offload="auto")).offload == "none"
    assert fit.plan(request("flux-dev"), LoadOptions(offload="auto"), "cpu", "float32") is None
    assert LoadOptions(offload="auto").concrete().offload == "none"  # what runs where nothing is planned
