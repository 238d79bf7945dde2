"""SANA-Sprint: its own SCM scheduler (and the refusals of every other), --steps really setting the run, guidance
without CFG, img2img, prompts encoded as the pipeline encodes them, and the size rule read from DC-AE configs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from imagegen.errors import UsageError
from imagegen.families import get_family
from imagegen.schedulers import resolve_scheduler

FAMILY = get_family("sana-sprint")
# mit-han-lab/dc-ae-f32c32-sana-1.1-diffusers and Sana_Sprint_1.6B_1024px_diffusers, the keys the size rule reads.
REAL = {"vae/config.json": {"_class_name": "AutoencoderDC", "encoder_block_out_channels": [128, 256, 512, 512, 1024, 1024],
                            "decoder_block_out_channels": [128, 256, 512, 512, 1024, 1024], "latent_channels": 32},
        "transformer/config.json": {"patch_size": 1, "guidance_embeds": True, "qk_norm": "rms_norm_across_heads",
                                    "num_attention_heads": 70, "attention_head_dim": 32}}


def pixels(path):
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).astype(int)


# ---- without a pipeline


@pytest.mark.parametrize("configs, rule", [
    (REAL, (32, None)),  # the 32x DC-AE, patch 1
    ({"vae/config.json": {"encoder_block_out_channels": [8, 8, 16]}}, (32, None)),  # 4x: the pipelines' 32 rules
    ({"vae/config.json": {"encoder_block_out_channels": [8] * 7}, "transformer/config.json": {"patch_size": 2}},
     (128, None)),  # 64x, and 2x2 patches
    ({"vae/config.json": {"block_out_channels": [8, 8]}}, (None, None)),  # not a DC-AE: unreadable, not guessed
])
def test_size_rule_reads_the_dc_ae(configs, rule):
    assert FAMILY.size_rule(configs.get) == rule


def test_guidance_embedding_and_lora_width_come_from_the_transformer_config():
    assert FAMILY.guidance_embedded(REAL.get) is True
    assert FAMILY.guidance_embedded({"transformer/config.json": {"guidance_embeds": False}}.get) is False
    assert FAMILY.guidance_embedded({}.get) is None
    assert FAMILY.lora_widths(REAL.get)[0][1] == 2240


@pytest.mark.parametrize("key, fits", [
    ("transformer.transformer_blocks.0.attn1.to_q.lora_A.weight", True),  # diffusers' save_lora_weights
    ("transformer_blocks.3.ff.conv_inverted.lora_B.weight", True),  # peft, unprefixed
    ("transformer.transformer_blocks.0.attn.to_q.lora_A.weight", False),  # SD3, Flux
    ("transformer.transformer_blocks.0.ff.net.0.proj.lora_A.weight", False),
    ("unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight", False),  # SDXL
])
def test_lora_layout(key, fits):
    assert FAMILY.lora_fits([key]) is fits
    # SD3.5 medium's dual attention has attn2 blocks too, beside attn ones
    assert not FAMILY.lora_fits([key, "transformer.transformer_blocks.0.attn.to_k.lora_A.weight"])


def test_only_scm_drives_it():
    assert resolve_scheduler("SCM", FAMILY).cls == "SCMScheduler"
    assert resolve_scheduler("SCMScheduler", FAMILY).cls == "SCMScheduler"  # the class name pins it
    for name in ("Euler", "DPM++ 2M", "Euler a"):
        with pytest.raises(UsageError, match=r"does not work with sana-sprint models; for sana-sprint: SCM$"):
            resolve_scheduler(name, FAMILY)
    with pytest.raises(UsageError, match=r"FlowMatchEulerDiscreteScheduler is not a TrigFlow .*; for sana-sprint: SCM$"):
        resolve_scheduler("FlowMatchEulerDiscreteScheduler", FAMILY)
    with pytest.raises(UsageError, match="does not work with sdxl"):
        resolve_scheduler("SCM", "sdxl")  # and SCM drives nothing else


def test_cfg_is_refused_and_guidance_is_the_embedding():
    assert FAMILY.cfg_problem("SanaSprintPipeline", 1.0) is None
    problem = FAMILY.cfg_problem("SanaSprintImg2ImgPipeline", 4.0)
    assert problem.startswith("--cfg 4: ") and "--guidance" in problem and "\n" not in problem
    kwargs = FAMILY.guidance_arguments(1.0, None, ["blurry"])
    assert kwargs["guidance_scale"] == 4.5 and "negative_prompt" not in kwargs  # the pipelines take none
    assert FAMILY.guidance_arguments(1.0, 2.0, [""])["guidance_scale"] == 2.0
    assert FAMILY.cfg_notes(1.0, "blurry") and not FAMILY.cfg_notes(1.0, "")


def test_the_trained_intermediate_timestep_is_kept_at_two_steps_only():
    assert FAMILY.schedule_arguments(2) == {}
    for steps in (1, 3, 4, None):
        assert FAMILY.schedule_arguments(steps) == {"intermediate_timesteps": None}


# ---- the tiny pipeline


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from imagegen.testing import build_tiny

    return build_tiny("sana-sprint", tmp_path_factory.mktemp("tiny") / "sana-sprint")


@pytest.fixture(scope="module")
def pipe(tiny):
    from diffusers import SanaSprintPipeline

    return SanaSprintPipeline.from_pretrained(tiny, use_safetensors=True).to("cpu")


def _call(pipe, steps: int, arguments: dict | None = None, **kwargs):
    import torch

    if arguments is None:  # as imagegen.session.call_arguments makes them
        arguments = {**FAMILY.guidance_arguments(1.0, None, [""]), **FAMILY.schedule_arguments(steps)}
    arguments = {"num_inference_steps": steps, "width": 64, "height": 64, "output_type": "np", **arguments, **kwargs}
    return pipe(generator=torch.Generator("cpu").manual_seed(1), **arguments).images


@pytest.mark.slow
@pytest.mark.parametrize("steps", [1, 3])  # 2: the next test
def test_steps_set_the_number_of_transformer_calls(pipe, steps):
    calls = []
    handle = pipe.transformer.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        _call(pipe, steps, prompt="a fox")
    finally:
        handle.remove()
    assert len(calls) == steps
    assert pipe.scheduler.timesteps[0].item() == pytest.approx(math.pi / 2, abs=1e-4)


@pytest.mark.slow
def test_two_steps_with_the_schedule_arguments_run_the_trained_timesteps(pipe):
    calls = []
    handle = pipe.transformer.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        _call(pipe, 2, {"guidance_scale": 4.5, "use_resolution_binning": False, **FAMILY.schedule_arguments(2)},
              prompt="a fox")
    finally:
        handle.remove()
    assert len(calls) == 2
    assert pipe.scheduler.timesteps.tolist() == pytest.approx([1.5708, 1.3, 0.0], abs=1e-4)


@pytest.mark.slow
def test_encoded_prompts_are_one_row_each_and_draw_what_the_text_draws(pipe):
    first = FAMILY.encode_prompt(pipe, "a fox", "", "cpu")
    second = FAMILY.encode_prompt(pipe, "a red cat in the snow", "", "cpu")
    assert set(first) == {"prompt_embeds", "prompt_attention_mask"}
    assert first["prompt_embeds"].shape[:2] == (1, 300) and first["prompt_attention_mask"].shape == (1, 300)
    assert first["prompt_embeds"].shape == second["prompt_embeds"].shape  # rows concatenate
    from_text = _call(pipe, 2, prompt="a fox")
    from_embeddings = _call(pipe, 2, **first)
    assert np.abs(from_text - from_embeddings).max() < 1e-5


@pytest.mark.slow
def test_the_token_limit_is_what_the_pipeline_keeps(pipe):
    from imagegen.weighting import token_count

    (_, _, limit, _), = FAMILY.prompt_limits(pipe)
    kept, cut = "b" * (limit - 1), "b" * limit  # one more token each: the last kept one, the first cut one
    assert token_count(pipe, kept + "c", pipe.tokenizer) == limit

    def embeds(text):
        return FAMILY.encode_prompt(pipe, text, "", "cpu")["prompt_embeds"]

    assert not np.allclose(embeds(kept + "c"), embeds(kept + "d"))
    assert np.array_equal(embeds(cut + "c"), embeds(cut + "d"))


@pytest.mark.slow
def test_cli_steps_guidance_and_refusals(cli, tiny, tmp_path):
    base = ("a fox", "--model", tiny, "--size", "64x64", "--seed", "1", "-q")
    made = {}
    for name, extra in {"2": (), "3": ("--steps", "3"), "g1": ("--guidance", "1")}.items():
        result = cli("txt2img", *base, *extra, "--out", tmp_path / name)
        assert result.code == 0, result.err
        made[name] = tmp_path / name / "0000-1.png"
    record = json.loads(made["3"].with_suffix(".json").read_text())
    assert (record["steps"], record["guidance"], record["cfg"]) == (3, 4.5, 1.0)
    assert record["scheduler"]["class"] == "SCMScheduler"
    assert json.loads(made["2"].with_suffix(".json").read_text())["steps"] == 2  # the preset's
    assert (pixels(made["2"]) != pixels(made["3"])).any() and (pixels(made["2"]) != pixels(made["g1"])).any()
    for extra, words in ((("--scheduler", "Euler"), "for sana-sprint: SCM"), (("--cfg", "4"), "--cfg 4: "),
                         (("--size", "48x48"), "multiples of 32")):
        result = cli("txt2img", *base, *extra, "--out", tmp_path / "refused")
        assert result.code != 0 and words in result.err and len(result.err.strip().splitlines()) == 1
    assert not (tmp_path / "refused").exists()


@pytest.mark.slow
def test_cli_img2img(cli, tiny, tmp_path):
    start = tmp_path / "start.png"
    Image.fromarray(np.tile(np.linspace(0, 255, 64, dtype=np.uint8)[:, None, None], (1, 64, 3))).save(start)
    result = cli("img2img", "a cat", "--image", start, "--model", tiny, "--seed", "1", "--out", tmp_path / "out", "-q")
    assert result.code == 0, result.err
    record = json.loads((tmp_path / "out" / "0000-1.json").read_text())
    assert record["mode"] == "img2img" and record["runtime"]["pipeline_class"] == "SanaSprintImg2ImgPipeline"
    assert record["init"]["strength"] == 0.5  # the preset's: above 0.5, 2 steps start from pure noise
    assert pixels(tmp_path / "out" / "0000-1.png").shape == (64, 64, 3)


@pytest.mark.slow
def test_cli_hires_fix_upscales_with_lanczos(cli, tiny, tmp_path):
    result = cli("txt2img", "a fox", "--model", tiny, "--size", "32x32", "--hires", "2", "--seed", "1",
                 "--out", tmp_path, "-q")
    assert result.code == 0, result.err
    record = json.loads((tmp_path / "0000-1.json").read_text())
    assert record["hires"]["upscaler"] == "lanczos"  # the preset's: the Sprint img2img cannot take latents
    assert pixels(tmp_path / "0000-1.png").shape == (64, 64, 3)
