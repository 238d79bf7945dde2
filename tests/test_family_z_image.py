"""Z-Image on a tiny ZImagePipeline: --cfg as its guidance_scale plus one, the size rule and largest side from odd
configs, Turbo's 8 steps as the model card's 9 in today's pipeline, the samplers its pipelines cannot take refused,
prompts passed as the pipelines' lists, img2img and inpaint through the CLI, and the hires fix by Lanczos."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from imagegen.families import get_family

Z = get_family("z-image")


def reader(files: dict):
    return lambda rel: files.get(rel)


def pixels(png) -> np.ndarray:
    with Image.open(png) as image:
        return np.asarray(image.convert("RGB")).astype(int)


# ---- hooks (no weights)


def test_cfg_is_guidance_scale_plus_one_and_the_negative_acts_only_above_one():
    assert Z.guidance_arguments(1.0, None, ["blurry"]) == {"guidance_scale": 0.0}  # the Turbo card's 0.0: off
    assert Z.guidance_arguments(4.0, None, ["blurry"]) == {"guidance_scale": 3.0, "negative_prompt": ["blurry"]}
    assert Z.guidance_arguments(4.0, None, [""]) == {"guidance_scale": 3.0, "negative_prompt": None}


@pytest.mark.parametrize("files, rule", [
    ({"vae/config.json": {"block_out_channels": [128, 256, 512, 512]},
      "transformer/config.json": {"axes_lens": [1536, 512, 512]}}, (16, 8192)),  # Z-Image-Turbo's
    ({"vae/config.json": {"block_out_channels": [8, 16, 16]},
      "transformer/config.json": {"axes_lens": [1024, 64, 48]}}, (8, 384)),  # scale 4: 48 patches x 2 x 4
])
def test_the_size_rule_and_largest_side_are_read_from_the_configs(files, rule):
    assert Z.size_rule(reader(files)) == rule


def test_eight_steps_in_todays_pipeline_run_the_model_cards_nine_step_schedule():
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.z_image.pipeline_z_image import get_default_z_image_sigmas

    from imagegen.presets import load_preset

    preset = load_preset("z-image-turbo")
    assert (preset.defaults.steps, preset.defaults.cfg) == (8, 1.0)
    config = {"num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": False}  # Turbo's scheduler
    first = FlowMatchEulerDiscreteScheduler(**config)
    first.sigma_min = 0.0  # the first ZImagePipeline: timesteps down to sigma 0, so its 9th step moved nothing
    first.set_timesteps(9)
    today = FlowMatchEulerDiscreteScheduler(**config)
    today.set_timesteps(sigmas=get_default_z_image_sigmas(8))
    assert torch.allclose(first.sigmas[:-1], today.sigmas, atol=1e-6)  # the same 8 steps, without the empty one


def test_samplers_its_pipelines_cannot_take_are_refused_in_one_line(cli):
    for scheduler in ("DPM++ 2M", "UniPC", "Heun"):
        result = cli("txt2img", "x", "--preset", "z-image-turbo", "--scheduler", scheduler)
        assert result.code == 2 and result.err.count("\n") == 1, result.err
        assert f"{scheduler} does not work with z-image" in result.err and "for z-image: Euler;" in result.err


# ---- the tiny pipeline

@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from imagegen.testing import build_tiny

    return build_tiny("z-image", tmp_path_factory.mktemp("z_image") / "model")


@pytest.mark.slow
def test_prompts_go_in_as_the_pipelines_lists_and_match_the_text_path(model):
    import torch
    from diffusers import ZImagePipeline

    pipe = ZImagePipeline.from_pretrained(model, use_safetensors=True)
    pipe.set_progress_bar_config(disable=True)
    encoded = Z.encode_prompt(pipe, "a fox", "blurry", "cpu")
    guided = Z.embeddings_for(encoded, 4.0)
    assert [e.shape[0] for e in encoded.values()] == [1, 1] and isinstance(guided["negative_prompt_embeds"], list)
    assert list(Z.embeddings_for(encoded, 1.0)) == ["prompt_embeds"]

    def call(**kwargs):
        return pipe(height=64, width=64, num_inference_steps=2, output_type="np",
                    generator=torch.Generator().manual_seed(1), **kwargs).images

    as_text = call(prompt="a fox", **Z.guidance_arguments(4.0, None, ["blurry"]))
    as_rows = call(**guided, guidance_scale=3.0)
    assert np.array_equal(as_text, as_rows)


@pytest.mark.slow
def test_img2img_and_inpaint_through_the_cli(cli, model, tmp_path):
    init, mask = tmp_path / "init.png", tmp_path / "mask.png"
    Image.fromarray((np.random.RandomState(0).rand(64, 64, 3) * 255).astype("uint8")).save(init)
    box = np.zeros((64, 64), "uint8")
    box[16:48, 16:48] = 255
    Image.fromarray(box).save(mask)
    common = ["--model", model, "--steps", "4", "--seed", "1", "-q"]
    moved = cli("img2img", "a fox", "--image", init, "--strength", "0.5", *common, "--out", tmp_path / "i")
    assert moved.code == 0, moved.err
    made = next((tmp_path / "i").glob("*.png"))
    assert 0 < np.abs(pixels(made) - pixels(init)).mean() and cli("reproduce", made, "--verify", "-q").code == 0
    painted = cli("inpaint", "a fox", "--image", init, "--mask", mask, "--cfg", "3", *common, "--out", tmp_path / "p")
    assert painted.code == 0, painted.err
    outside = box == 0
    outside[12:52, 12:52] = False  # the blurred seam
    assert np.abs(pixels(next((tmp_path / "p").glob("*.png"))) - pixels(init))[outside].max() <= 1
    masked = cli("inpaint", "a fox", "--image", init, "--mask", mask, "--inpaint-area", "masked", *common)
    assert masked.code == 2 and "ZImageInpaintPipeline has no padding_mask_crop" in masked.err


@pytest.mark.slow
def test_the_hires_fix_upscales_the_image_not_the_latents(cli, model, tmp_path):
    common = ["--model", model, "--size", "96x96", "--steps", "2", "--seed", "1", "--hires", "1.5", "-q"]
    result = cli("txt2img", "a fox", *common, "--out", tmp_path / "h")
    assert result.code == 0, result.err
    assert Image.open(next((tmp_path / "h").glob("*.png"))).size == (144, 144)  # 18 latents a side: not a 16 multiple
    refused = cli("txt2img", "a fox", *common, "--hires-upscaler", "latent")
    assert refused.code == 2 and "--hires-upscaler lanczos" in refused.err
