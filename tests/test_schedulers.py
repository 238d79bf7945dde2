"""The scheduler registry: every spelling, the family guard, and flags that really reach diffusers."""

from __future__ import annotations

import inspect
import json

import pytest

from imagegen import UsageError
from imagegen.schedulers import SAMPLERS, SCHEDULES, build_scheduler, resolve_scheduler

SD3_NATIVE = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0}
SCHNELL_NATIVE = {
    "_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 1.0,
    "use_dynamic_shifting": False, "base_shift": 0.5, "max_shift": 1.15,
    "base_image_seq_len": 256, "max_image_seq_len": 4096,
}
DEV_NATIVE = {**SCHNELL_NATIVE, "shift": 3.0, "use_dynamic_shifting": True}


@pytest.mark.parametrize(
    "spelling",
    ["DPM++ 2M Karras", "dpm++ 2m karras", "dpmpp_2m karras", "dpmpp_2m + karras", "dpmpp_2m:karras",
     "dpmpp_2m_karras", "DPMSolverMultistepScheduler karras", "DPM++ 2M  KARRAS"],
)
def test_every_spelling_of_dpmpp_2m_karras(spelling):
    choice = resolve_scheduler(spelling, "sdxl")
    assert choice.name == "DPM++ 2M Karras"
    assert choice.cls == "DPMSolverMultistepScheduler"
    assert choice.kwargs == {"use_karras_sigmas": True}


@pytest.mark.parametrize(
    "spelling, name, cls, kwargs",
    [
        ("Euler a", "Euler a", "EulerAncestralDiscreteScheduler", {}),
        ("euler_ancestral", "Euler a", "EulerAncestralDiscreteScheduler", {}),
        ("EulerAncestralDiscreteScheduler", "Euler a", "EulerAncestralDiscreteScheduler", {}),
        ("DPM++ 2M SDE Karras", "DPM++ 2M SDE Karras", "DPMSolverMultistepScheduler",
         {"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True}),
        ("dpmpp_2m_sde", "DPM++ 2M SDE", "DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
        ("DPM++ SDE", "DPM++ SDE", "DPMSolverSDEScheduler", {}),
        ("dpmpp_sde karras", "DPM++ SDE Karras", "DPMSolverSDEScheduler", {"use_karras_sigmas": True}),
        ("DPMSolverSinglestepScheduler", "DPM++ Singlestep", "DPMSolverSinglestepScheduler", {}),
        ("DPM2 a", "DPM2 a", "KDPM2AncestralDiscreteScheduler", {}),
        ("dpm_2", "DPM2", "KDPM2DiscreteScheduler", {}),
        ("PLMS", "PLMS", "PNDMScheduler", {}),
        ("uni_pc", "UniPC", "UniPCMultistepScheduler", {}),
        ("Euler sgm_uniform", "Euler SGM Uniform", "EulerDiscreteScheduler", {"timestep_spacing": "trailing"}),
        ("euler simple", "Euler SGM Uniform", "EulerDiscreteScheduler", {"timestep_spacing": "trailing"}),
        ("Euler normal", "Euler", "EulerDiscreteScheduler", {}),
        ("LMS Karras", "LMS Karras", "LMSDiscreteScheduler", {"use_karras_sigmas": True}),
        ("DDIM", "DDIM", "DDIMScheduler", {}),
    ],
)
def test_sdxl_spellings(spelling, name, cls, kwargs):
    choice = resolve_scheduler(spelling, "sdxl")
    assert (choice.name, choice.cls, choice.kwargs) == (name, cls, kwargs)


def test_euler_means_flow_matching_euler_on_flow_families():
    for family in ("sd3", "flux"):
        assert resolve_scheduler("Euler", family).cls == "FlowMatchEulerDiscreteScheduler"
        assert resolve_scheduler("FlowMatchEulerDiscreteScheduler", family).name == "Euler"


@pytest.mark.parametrize(
    "spelling, family, message",
    [
        ("EulerDiscreteScheduler", "sd3", "EulerDiscreteScheduler is an epsilon/v-prediction scheduler"),
        ("EulerDiscreteScheduler", "flux", "runs but draws wrong images"),
        ("DDIM", "sd3", "DDIM does not work with sd3 models"),
        ("Euler a", "flux", "Euler a does not work with flux models"),
        ("Heun", "flux", "Heun does not work with flux models"),
        ("DEIS", "sd3", "DEIS does not work with sd3 models"),
        ("FlowMatchEulerDiscreteScheduler", "sdxl", "cannot drive an epsilon/v-prediction model"),
        ("Euler a Karras", "sdxl", "Euler a has no Karras schedule type on sdxl; it takes: SGM Uniform"),
        ("DPM++ 3M", "sdxl", "unknown scheduler 'DPM++ 3M' (did you mean 'DPM++ 2M'?)"),
    ],
)
def test_refusals_list_what_works(spelling, family, message):
    with pytest.raises(UsageError) as info:
        resolve_scheduler(spelling, family)
    text = str(info.value)
    assert message in text
    assert "\n" not in text
    if "does not work" in text or "wrong images" in text:
        assert f"for {family}: Euler" in text


def test_declared_kwargs_are_real_init_parameters():
    """from_config silently drops unknown kwargs, so each flag the registry sets must be a real parameter."""
    import diffusers

    for sampler in SAMPLERS.values():
        for impl in (sampler.eps, sampler.flow):
            if impl is None:
                continue
            params = inspect.signature(getattr(diffusers, impl.cls).__init__).parameters
            for key in impl.kwargs:
                assert key in params, (impl.cls, key)
            for schedule in impl.schedules:
                for key in SCHEDULES[schedule].kwargs:
                    assert key in params, (impl.cls, schedule, key)


def test_every_sdxl_choice_builds_and_sets_timesteps():
    sdxl_native = {
        "_class_name": "EulerDiscreteScheduler", "beta_start": 0.00085, "beta_end": 0.012,
        "beta_schedule": "scaled_linear", "num_train_timesteps": 1000, "prediction_type": "epsilon",
        "steps_offset": 1, "timestep_spacing": "leading",
    }
    from imagegen.schedulers import scheduler_names

    for name in scheduler_names("sdxl"):
        choice = resolve_scheduler(name, "sdxl")
        scheduler = build_scheduler(choice, sdxl_native)
        assert type(scheduler).__name__ == choice.cls
        for key, value in choice.kwargs.items():
            assert scheduler.config[key] == value, (name, key)
        assert scheduler.config.prediction_type == "epsilon"
        scheduler.set_timesteps(8)
        assert len(scheduler.timesteps) >= 8


def _native_sigmas(native, steps, mu=None):
    import numpy as np
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler.from_config(native)
    sigmas = np.linspace(1.0, 1 / steps, steps)
    scheduler.set_timesteps(sigmas=sigmas, mu=mu)
    return scheduler.sigmas[:-1].numpy()


@pytest.mark.parametrize("name", ["DPM++ 2M", "UniPC"])
def test_flow_solvers_on_sd3_carry_the_shift(name):
    import numpy as np

    scheduler = build_scheduler(resolve_scheduler(name, "sd3"), SD3_NATIVE)
    assert scheduler.config.use_flow_sigmas and scheduler.config.prediction_type == "flow_prediction"
    assert scheduler.config.flow_shift == 3.0  # from_config alone would leave it at 1.0
    scheduler.set_timesteps(20)
    sigmas = np.asarray(scheduler.sigmas[:-1])
    native = _native_sigmas(SD3_NATIVE, 20)
    # Same shifted schedule: starts at the top and tracks the native sigmas closely.
    assert sigmas[0] > 0.99
    assert np.abs(sigmas - native).max() < 0.02


@pytest.mark.parametrize("native, seq_len", [(SCHNELL_NATIVE, 4096), (DEV_NATIVE, 4096), (DEV_NATIVE, 256)])
def test_flow_solvers_on_flux_match_the_native_shift(native, seq_len):
    """Flux passes mu to set_timesteps: the solver must shift exactly as the native scheduler does."""
    import numpy as np
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    for name in ("DPM++ 2M", "UniPC"):
        scheduler = build_scheduler(resolve_scheduler(name, "flux"), native)
        config = scheduler.config
        mu = calculate_shift(seq_len, config.base_image_seq_len, config.max_image_seq_len,
                             config.base_shift, config.max_shift)
        scheduler.set_timesteps(12, mu=mu)
        sigmas = np.asarray(scheduler.sigmas[:-1])
        native_mu = calculate_shift(seq_len, 256, 4096, 0.5, 1.15)
        reference = _native_sigmas(native, 12, mu=native_mu)
        assert np.abs(sigmas - reference).max() < 0.03, (name, sigmas, reference)


def test_scheduler_table_cli(cli):
    result = cli("schedulers", "--preset", "sd3", "--json")
    assert result.code == 0
    rows = json.loads(result.out)
    names = {r["name"] for r in rows}
    assert {"Euler", "DPM++ 2M", "UniPC"} <= names and "DDIM" not in names
    assert all(r["families"] == ["sd3"] for r in rows)
    steps = {r["name"]: r["steps"] for r in rows}
    assert steps["Euler"] == 20 and steps["Heun"] == 15  # recommended step counts
    full = cli("schedulers")
    assert full.code == 0 and "DPM++ 2M Karras" in full.out and "dpmpp_2m + karras" in full.out
    bad = cli("schedulers", "--family", "sd4")
    assert bad.code == 2 and "unknown model family 'sd4'" in bad.err


@pytest.mark.parametrize(
    "spelling, name, cls, kwargs",
    [
        ("dpmpp_2m_sde_gpu", "DPM++ 2M SDE", "DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
        ("dpmpp_2m_sde_gpu karras", "DPM++ 2M SDE Karras", "DPMSolverMultistepScheduler",
         {"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True}),
        ("dpmpp_3m_sde", "DPM++ 3M SDE", "DPMSolverMultistepScheduler",
         {"solver_order": 3, "algorithm_type": "sde-dpmsolver++"}),
        ("DPM++ 3M SDE Exponential", "DPM++ 3M SDE Exponential", "DPMSolverMultistepScheduler",
         {"solver_order": 3, "algorithm_type": "sde-dpmsolver++", "use_exponential_sigmas": True}),
        ("dpmpp_3m_sde_gpu", "DPM++ 3M SDE", "DPMSolverMultistepScheduler",
         {"solver_order": 3, "algorithm_type": "sde-dpmsolver++"}),
        ("lcm", "LCM", "LCMScheduler", {}),
        ("LCM", "LCM", "LCMScheduler", {}),
        ("LCMScheduler", "LCM", "LCMScheduler", {}),
        ("tcd", "TCD", "TCDScheduler", {}),
        ("TCD", "TCD", "TCDScheduler", {}),
        ("euler ddim_uniform", "Euler DDIM", "EulerDiscreteScheduler", {"timestep_spacing": "leading", "steps_offset": 1}),
        ("dpmpp_2m ddim_uniform", "DPM++ 2M DDIM", "DPMSolverMultistepScheduler",
         {"timestep_spacing": "leading", "steps_offset": 1}),
        ("Euler a DDIM", "Euler a DDIM", "EulerAncestralDiscreteScheduler",
         {"timestep_spacing": "leading", "steps_offset": 1}),
        ("ddim ddim_uniform", "DDIM DDIM", "DDIMScheduler", {"timestep_spacing": "leading", "steps_offset": 1}),
    ],
)
@pytest.mark.parametrize("family", ["sdxl", "sd15"])
def test_comfyui_and_a1111_names_added_for_issue_13(spelling, name, cls, kwargs, family):
    choice = resolve_scheduler(spelling, family)
    assert (choice.name, choice.cls, choice.kwargs) == (name, cls, kwargs)


@pytest.mark.parametrize(
    "spelling, message",
    [
        ("euler_cfg_pp", "'euler_cfg_pp' has no diffusers equivalent: CFG++ changes how the guided and unguided"),
        ("euler_ancestral_cfg_pp", "diffusers has no CFG++ scheduler; for sdxl: Euler,"),
        ("ddim_uniform", "'ddim_uniform' is a schedule type, not a sampler: put a sampler before it, e.g. "
                         "'euler ddim_uniform' (the DDIM sampler is 'DDIM'); for sdxl: Euler,"),
        ("karras", "'karras' is a schedule type, not a sampler"),
        ("LCM Karras", "LCM has no Karras schedule type on sdxl; it takes no schedule type there"),
    ],
)
def test_names_without_a_diffusers_sampler_say_why(spelling, message):
    with pytest.raises(UsageError) as info:
        resolve_scheduler(spelling, "sdxl")
    assert message in str(info.value) and "\n" not in str(info.value)


def test_lcm_and_tcd_refuse_more_steps_than_their_schedule_has(cli, monkeypatch):
    import imagegen.loading

    monkeypatch.setattr(imagegen.loading, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    assert resolve_scheduler("LCM", "sdxl", steps=50).name == "LCM"
    result = cli("txt2img", "x", "--preset", "sdxl", "-s", "tcd", "--steps", "60", "--seed", "1")
    assert result.code == 2 and result.err == ("imagegen: error: --scheduler: TCD takes at most 50 steps (its distilled "
                                               "schedule's original_inference_steps); got --steps 60\n")


@pytest.mark.parametrize("spelling", ["LCM", "TCD", "dpmpp_3m_sde"])
def test_new_epsilon_samplers_are_refused_on_flow_models(spelling):
    with pytest.raises(UsageError, match="does not work with flux models; for flux: Euler"):
        resolve_scheduler(spelling, "flux")


def test_ddim_uniform_gives_comfyuis_timesteps():
    """ComfyUI's ddim_uniform: every (1000 // steps)-th discrete sigma from index 1, i.e. timesteps 1, 1 + 1000 // steps, ..."""
    sd15_native = {
        "_class_name": "PNDMScheduler", "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
        "num_train_timesteps": 1000, "steps_offset": 0, "timestep_spacing": "linspace",
    }
    for name in ("euler ddim_uniform", "ddim ddim_uniform", "heun ddim_uniform", "lms ddim_uniform"):
        for steps in (10, 20, 25):
            scheduler = build_scheduler(resolve_scheduler(name, "sd15"), sd15_native)
            scheduler.set_timesteps(steps)
            comfy = list(range(1, 1000, 1000 // steps))[::-1]
            timesteps = [int(t) for t in scheduler.timesteps]
            if name.startswith("heun"):
                timesteps = timesteps[::2]  # Heun repeats each timestep but the first for its second evaluation
            assert timesteps == comfy, (name, steps)


def test_dpmpp_3m_sde_runs_third_order():
    import torch

    native = {"_class_name": "EulerDiscreteScheduler", "num_train_timesteps": 1000, "beta_schedule": "scaled_linear",
              "beta_start": 0.00085, "beta_end": 0.012}
    scheduler = build_scheduler(resolve_scheduler("dpmpp_3m_sde", "sdxl"), native)
    assert scheduler.config.solver_order == 3 and scheduler.config.algorithm_type == "sde-dpmsolver++"
    scheduler.set_timesteps(20)
    sample = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    for t in scheduler.timesteps:
        sample = scheduler.step(torch.zeros_like(sample), t, sample, generator=torch.Generator().manual_seed(1)).prev_sample
    assert scheduler.lower_order_nums == 3 and torch.isfinite(sample).all()  # reached its third-order update


@pytest.mark.parametrize("name", ["DPM++ 2M SDE", "DPM++ 3M SDE", "LCM", "TCD", "Euler DDIM", "DPM++ 2M DDIM"])
def test_new_names_survive_a1111_text(name):
    from imagegen.metadata import _split_scheduler

    sampler, _, schedule = _split_scheduler(name)
    assert resolve_scheduler(f"{sampler} {schedule or 'Automatic'}", "sdxl").name == name  # as A1111 text reads back


def test_new_names_are_listed(cli):
    rows = json.loads(cli("schedulers", "--family", "sd15", "--json").out)
    by_name = {r["name"]: r for r in rows}
    assert {"LCM", "TCD", "DPM++ 3M SDE", "DPM++ 3M SDE Karras", "Euler DDIM"} <= set(by_name)
    assert by_name["LCM"]["stochastic"] and by_name["LCM"]["steps"] == 4 and by_name["LCM"]["families"] == ["sd15"]
    assert by_name["Euler DDIM"]["comfyui"] == "euler + ddim_uniform"
    full = cli("schedulers", "--json").out
    assert "dpmpp_3m_sde / dpmpp_3m_sde_gpu" in full and "dpmpp_2m_sde / dpmpp_2m_sde_gpu + karras" in full


@pytest.mark.slow
@pytest.mark.parametrize("spelling, cls", [("lcm", "LCMScheduler"), ("TCD", "TCDScheduler"),
                                           ("dpmpp_3m_sde_gpu", "DPMSolverMultistepScheduler"),
                                           ("euler ddim_uniform", "EulerDiscreteScheduler")])
def test_new_samplers_draw_on_a_tiny_sd15(cli, tmp_path_factory, tmp_path, spelling, cls):
    from PIL import Image

    from imagegen.metadata import parse_parameters
    from imagegen.testing import build_tiny

    model = tmp_path_factory.getbasetemp() / "sd15-schedulers"
    if not model.exists():
        build_tiny("sd15", model)
    result = cli("txt2img", "a lighthouse", "--model", model, "-s", spelling, "--steps", "4", "--cfg", "1.5",
                 "--seed", "5", "--size", "64x64", "--out", tmp_path, "-q")
    assert result.code == 0, result.err
    record = json.loads((tmp_path / "0000-5.json").read_text())
    assert record["scheduler"]["class"] == cls
    with Image.open(tmp_path / "0000-5.png") as im:
        text = parse_parameters(im.text["parameters"])
        assert im.getextrema() != ((0, 0), (0, 0), (0, 0))
    read_back = f"{text['Sampler']} {text['Schedule type']}"
    assert resolve_scheduler(read_back, "sd15").name == record["scheduler"]["name"]
