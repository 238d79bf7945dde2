"""Chroma on a tiny ChromaPipeline: real CFG with the negative prompt, the encoded prompt equal to the text path,
img2img, inpaint and the hires fix through the CLI, and the samplers its pipelines cannot take refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from imagegen.families import get_family

# diffusers' own notice, raised whenever a ChromaTransformer2DModel is built
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:`FluxPosEmbed` is deprecated:FutureWarning")]

CHROMA = get_family("chroma")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from imagegen.testing import build_tiny

    return build_tiny("chroma", tmp_path_factory.mktemp("chroma") / "chroma")


@pytest.fixture(scope="module")
def pics(tmp_path_factory):
    root = tmp_path_factory.mktemp("chroma-pics")
    photo = (np.random.RandomState(0).rand(64, 64, 3) * 60 + 80).astype("uint8")
    photo[16:48, 12:40] = (230, 200, 40)
    Image.fromarray(photo).save(root / "photo.png")
    mask = np.zeros((64, 64), "uint8")
    mask[20:44, 24:52] = 255
    Image.fromarray(mask).save(root / "mask.png")
    return root


def run(cli, model, out, *extra, command="txt2img"):
    result = cli(command, "a stone bridge", "--model", model, "--size", "64x64", "--steps", "2", "--seed", "5",
                 "--out", out, "-q", *extra)
    assert result.code == 0, result.err
    return out / "0000-5.png"


def pixels(png):
    with Image.open(png) as im:
        return np.asarray(im.convert("RGB")).astype(int)


def record(png) -> dict:
    return json.loads(png.with_suffix(".json").read_text())


def test_cfg_is_real_guidance_through_the_negative_prompt(cli, model, tmp_path):
    plain = run(cli, model, tmp_path / "a", "--cfg", "1", "--negative", "")
    ignored = run(cli, model, tmp_path / "b", "--cfg", "1", "--negative", "blurry")
    guided = run(cli, model, tmp_path / "c", "--cfg", "4", "--negative", "blurry")
    assert np.array_equal(pixels(plain), pixels(ignored))  # no CFG: the negative is never read
    assert np.abs(pixels(guided) - pixels(plain)).mean() > 1
    assert record(guided)["cfg"] == 4.0 and record(guided)["negative"] == "blurry"


@pytest.mark.parametrize("cfg", [1.0, 4.0])
def test_encoded_prompt_gives_the_text_path_pixels(model, cfg):
    import torch
    from diffusers import ChromaPipeline

    pipe = ChromaPipeline.from_pretrained(model, use_safetensors=True)
    pipe.set_progress_bar_config(disable=True)
    common = {"height": 64, "width": 64, "num_inference_steps": 2, "guidance_scale": cfg, "output_type": "np"}
    text = pipe(prompt=["a stone bridge"], negative_prompt=["blurry"], generator=torch.Generator().manual_seed(1),
                **common).images
    embeddings = CHROMA.embeddings_for(CHROMA.encode_prompt(pipe, "a stone bridge", "blurry", "cpu"), cfg)
    assert set(embeddings) == {"prompt_embeds", "prompt_attention_mask"} | (
        {"negative_prompt_embeds", "negative_prompt_attention_mask"} if cfg > 1 else set())
    assert all(value.shape[0] == 1 for value in embeddings.values())  # one row: rows of prompts concatenate
    encoded = pipe(**embeddings, generator=torch.Generator().manual_seed(1), **common).images
    assert np.array_equal(text, encoded)


def test_img2img(cli, model, pics, tmp_path):
    png = run(cli, model, tmp_path / "out", "--image", pics / "photo.png", "--strength", "0.6", "--steps", "3",
              command="img2img")
    assert record(png)["runtime"]["pipeline_class"] == "ChromaImg2ImgPipeline"
    assert pixels(png).shape == (64, 64, 3) and pixels(png).std() > 0


def test_inpaint(cli, model, pics, tmp_path):
    png = run(cli, model, tmp_path / "out", "--image", pics / "photo.png", "--mask", pics / "mask.png",
              "--steps", "3", command="inpaint")
    assert record(png)["runtime"]["pipeline_class"] == "ChromaInpaintPipeline"
    unmasked = np.asarray(Image.open(pics / "mask.png")) == 0
    assert np.array_equal(pixels(png)[unmasked], pixels(pics / "photo.png")[unmasked])


def test_hires_fix_upscales_the_latents(cli, model, tmp_path):
    png = run(cli, model, tmp_path / "out", "--size", "32x48", "--hires", "1.4", "--hires-steps", "2")
    with Image.open(png) as im:
        assert im.size == (48, 64)
    assert record(png)["hires"]["upscaler"] == "latent"  # its img2img takes latents once prepare_pipeline ran


def test_prepared_pipelines_take_what_imagegen_passes(model, pics):
    """Inpaint with imagegen's arguments, and img2img from unpacked latents, once prepare_pipeline has run."""
    import torch
    from diffusers import ChromaImg2ImgPipeline, ChromaInpaintPipeline, ChromaPipeline

    base = ChromaPipeline.from_pretrained(model, use_safetensors=True)
    base.set_progress_bar_config(disable=True)
    prompt = CHROMA.encode_prompt(base, "a stone bridge", "", "cpu")
    common = {**prompt, "height": 64, "width": 64, "num_inference_steps": 3, "guidance_scale": 3.0,
              "output_type": "np"}
    inpaint, img2img = ChromaInpaintPipeline.from_pipe(base), ChromaImg2ImgPipeline.from_pipe(base)
    for pipe in (inpaint, img2img):
        pipe.set_progress_bar_config(disable=True)
        CHROMA.prepare_pipeline(pipe)
    image, mask = Image.open(pics / "photo.png"), Image.open(pics / "mask.png")
    out = inpaint(image=[image], mask_image=[mask], strength=0.8, generator=[torch.Generator().manual_seed(1)],
                  **common).images
    assert out.shape == (1, 64, 64, 3) and out.std() > 0

    packed = base(**{**common, "output_type": "latent"}, generator=[torch.Generator().manual_seed(1)]).images
    latents = CHROMA.unpacked_latents(base, packed, 64, 64)
    assert latents.shape == (1, 16, 8, 8)
    out = img2img(image=latents, strength=0.6, generator=[torch.Generator().manual_seed(1)], **common).images
    assert out.shape == (1, 64, 64, 3) and out.std() > 0


@pytest.mark.parametrize("scheduler", ["Heun", "DPM++ 2M"])
def test_samplers_its_pipelines_cannot_take_are_refused(cli, model, scheduler):
    result = cli("txt2img", "a stone bridge", "--model", model, "--scheduler", scheduler, "--steps", "2")
    assert result.code == 2
    line, = result.err.strip().splitlines()
    assert f"{scheduler} does not work with chroma models" in line and "UniPC" in line
