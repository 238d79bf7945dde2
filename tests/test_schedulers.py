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
