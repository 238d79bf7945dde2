"""FLUX.2 [dev] on a tiny Flux2Pipeline: its edit hooks and the pipeline's own edit with one and two references, the
encoded prompt equal to the text path, --cfg refused and --guidance acting, latents unpacked as the VAE's, the
prompt's token budget, and the sampler its pipeline cannot take refused."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from imagegen.families import get_family

FLUX2 = get_family("flux2")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from imagegen.testing import build_tiny

    return build_tiny("flux2", tmp_path_factory.mktemp("flux2") / "flux2")


@pytest.fixture(scope="module")
def pipe(model):
    from diffusers import Flux2Pipeline

    pipe = Flux2Pipeline.from_pretrained(model, use_safetensors=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generators(count: int, seed: int = 1):
    import torch

    return [torch.Generator().manual_seed(seed + i) for i in range(count)]


def references():
    rng = np.random.RandomState(0)
    return [Image.fromarray((rng.rand(64, 96, 3) * 255).astype("uint8")),  # 96x64
            Image.fromarray((rng.rand(80, 64, 3) * 255).astype("uint8"))]  # 64x80


def pixels(png):
    with Image.open(png) as im:
        return np.asarray(im.convert("RGB")).astype(int)


# ---- hooks (no weights)


@pytest.mark.parametrize("sizes, expected", [
    ([(96, 64)], (96, 64)),
    ([(100, 70), (64, 64)], (96, 64)),  # the first image's size, rounded down
    ([(2048, 1024)], (1440, 720)),  # 2 MP scaled to 1 MP (1448x724), then rounded down
    ([(40, 56)], (64, 80)),  # grown to 64 px a side (64x90), as edit_arguments gives it
])
def test_edit_size_is_the_pipelines_own_rule(sizes, expected):
    width, height, rule = FLUX2.edit_size(sizes, 16)
    assert (width, height) == expected and "first image" in rule


def test_a_reference_past_8_to_1_is_refused_in_one_line():
    from imagegen.errors import UsageError

    with pytest.raises(UsageError, match="aspect ratios up to 8:1"):
        FLUX2.edit_size([(96, 64), (900, 100)], 16)


def test_edit_arguments_pass_every_reference_to_every_image():
    one, two = references()
    assert FLUX2.edit_arguments([one], 96, 64, 3) == {"image": [one]}
    assert FLUX2.edit_arguments([one, two], 96, 64, 3) == {"image": [one, two]}
    assert FLUX2.edit_images == 6
    small = Image.new("RGB", (40, 56))  # under the pipeline's 64 px: scaled up to it, as it would refuse it
    assert FLUX2.edit_arguments([one, small], 96, 64, 1)["image"][1].size == (64, 90)


def test_cfg_is_not_classifier_free_guidance():
    assert FLUX2.guidance_arguments(1.0, None, ["blurry"]) == {"guidance_scale": 4.0}  # no negative_prompt argument
    assert FLUX2.guidance_arguments(1.0, 2.5, [""]) == {"guidance_scale": 2.5}
    assert FLUX2.cfg_problem("Flux2Pipeline", 1.0) is None
    assert "--guidance" in FLUX2.cfg_problem("Flux2Pipeline", 3.0)
    assert FLUX2.cfg_notes(1.0, "blurry") and not FLUX2.cfg_notes(1.0, "")


# ---- the pipeline


@pytest.mark.slow
def test_edit_with_one_and_two_references(pipe):
    one, two = references()
    common = {"prompt": ["make it red", "make it blue"], "num_inference_steps": 2, "output_type": "np"}
    width, height, _ = FLUX2.edit_size([one.size, two.size], 16)
    single = pipe(**FLUX2.edit_arguments([one], width, height, 2), generator=generators(2), **common).images
    double = pipe(**FLUX2.edit_arguments([one, two], width, height, 2), generator=generators(2), **common).images
    assert single.shape == double.shape == (2, height, width, 3)  # without a size: the edit_size rule
    assert np.abs(single - double).max() > 1e-5  # the second reference is read (a small effect on random weights)
    alone = pipe(**FLUX2.edit_arguments([one, two], width, height, 1), generator=generators(1, seed=2),
                 **{**common, "prompt": ["make it blue"]}).images
    assert np.allclose(alone[0], double[1], atol=1e-5)  # the references are each image's, not one per prompt


@pytest.mark.slow
@pytest.mark.parametrize("edit", [False, True])
def test_encoded_prompt_gives_the_text_path_pixels(pipe, edit):
    one, _ = references()
    common = {"height": 64, "width": 64, "num_inference_steps": 2, "output_type": "np", "guidance_scale": 4.0,
              **(FLUX2.edit_arguments([one], 64, 64, 1) if edit else {})}
    text = pipe(prompt=["a fox"], generator=generators(1), **common).images
    embeddings = FLUX2.embeddings_for(FLUX2.encode_prompt(pipe, "a fox", "", "cpu"), 1.0)
    assert list(embeddings) == ["prompt_embeds"] and embeddings["prompt_embeds"].shape[:2] == (1, 512)
    assert np.array_equal(text, pipe(**embeddings, generator=generators(1), **common).images)


@pytest.mark.slow
def test_unpacked_latents_are_what_the_vae_decodes(pipe):
    import torch

    common = {"prompt": ["a fox"], "height": 64, "width": 96, "num_inference_steps": 2}
    image = pipe(**common, generator=generators(1), output_type="pt").images
    packed = pipe(**common, generator=generators(1), output_type="latent").images
    latents = FLUX2.unpacked_latents(pipe, packed, 96, 64)
    assert latents.shape == (1, pipe.vae.config.latent_channels, 8, 12)
    with torch.no_grad():
        decoded = pipe.image_processor.postprocess(pipe.vae.decode(latents).sample, output_type="pt")
    assert np.allclose(decoded.numpy(), image.numpy(), atol=1e-5)


@pytest.mark.slow
def test_a_long_prompt_is_noted_where_the_512_tokens_end(pipe):
    (label, attribute, limit, chunked), = FLUX2.prompt_limits(pipe)
    assert attribute == "tokenizer" and not chunked and 0 < limit < 512  # the system message takes its share
    from diffusers.pipelines.flux2.pipeline_flux2 import format_input

    framed = pipe.tokenizer.apply_chat_template(format_input(["x" * limit])[0], tokenize=True, return_dict=True)
    assert len(framed["input_ids"]) == 512  # the tiny tokenizer reads one token a byte: the prompt just fits


@pytest.mark.slow
def test_cli_guidance_acts_cfg_is_refused_and_heun_too(cli, model, tmp_path):
    def run(out, *extra):
        result = cli("txt2img", "a fox", "--model", model, "--size", "64x64", "--steps", "2", "--seed", "3",
                     "--out", out, "-q", *extra)
        assert result.code == 0, result.err
        return pixels(out / "0000-3.png")

    assert np.abs(run(tmp_path / "a") - run(tmp_path / "b", "--guidance", "1.5")).mean() > 0
    for flag, value, message in (("--cfg", "4", "has no classifier-free guidance"),
                                 ("--scheduler", "Heun", "Heun does not work with flux2 models")):
        result = cli("txt2img", "a fox", "--model", model, flag, value)
        assert result.code == 2 and message in result.err and len(result.err.strip().splitlines()) == 1
