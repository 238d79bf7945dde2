"""FLUX.2 klein on tiny Flux2Klein pipelines: the size rule from odd configs, the edit hooks (the pipeline's own
output size, every reference for every image, references it would refuse), CFG real on a Base model and ignored by
a step-distilled one with the negative prompt acting as embeddings, inpaint through the CLI, img2img and Heun
refused in one line."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from imagegen.errors import UsageError
from imagegen.families import get_family

KLEIN = get_family("flux2-klein")


def reader(files: dict):
    return lambda rel: files.get(rel)


def pixels(png) -> np.ndarray:
    with Image.open(png) as image:
        return np.asarray(image.convert("RGB")).astype(int)


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray((np.random.RandomState(seed).rand(height, width, 3) * 255).astype("uint8"))


# ---- hooks (no weights)


@pytest.mark.parametrize("vae, multiple", [
    ({"block_out_channels": [128, 256, 512, 512], "patch_size": [2, 2]}, 16),  # FLUX.2's own VAE
    ({"block_out_channels": [8, 16, 16]}, 8),  # three blocks (scale 4), no patch_size key: the pipeline's 2x2
    ({"block_out_channels": [8, 8, 16, 16], "patch_size": [4, 4]}, 32),
])
def test_the_size_rule_is_read_from_the_vae_config(vae, multiple):
    assert KLEIN.size_rule(reader({"vae/config.json": vae})) == (multiple, None)
    assert KLEIN.size_rule(reader({})) == (None, None)  # unreadable: the family's default applies


@pytest.mark.parametrize("sizes, expected", [
    ([(96, 64)], (96, 64)),
    ([(100, 70), (64, 64)], (96, 64)),  # the first image's size, rounded down
    ([(2048, 1536)], (1168, 880)),  # 3 MP shrunk to 1 MP's area (1182x886), then rounded down
    ([(40, 56)], (64, 80)),  # grown to 64 px a side (64x90), as the pipeline would refuse it
])
def test_edit_size_is_the_pipelines_own_rule(sizes, expected):
    width, height, rule = KLEIN.edit_size(sizes, 16)
    assert (width, height) == expected and "first image" in rule


def test_edit_arguments_give_every_image_every_reference_and_fit_the_small_ones():
    one, two = noise(96, 64), noise(40, 56, 1)
    args = KLEIN.edit_arguments([one, two], 96, 64, 3)
    assert args["image"][0] is one and args["image"][1].size == (64, 90) and KLEIN.edit_images == 4
    with pytest.raises(UsageError, match="aspect ratios up to 8:1"):
        KLEIN.edit_size([(96, 64), (600, 64)], 16)  # any reference, checked before loading


def test_cfg_is_guidance_scale_and_the_negative_goes_in_as_embeddings():
    from imagegen.loading import pipeline_parameters

    for cfg in (1.0, 4.0):
        args = KLEIN.guidance_arguments(cfg, None, ["blurry"])
        assert args == {"guidance_scale": cfg}
        for cls in set(KLEIN.pipelines.values()):
            assert set(args) <= pipeline_parameters(cls) and "negative_prompt" not in pipeline_parameters(cls)
    both = {"prompt_embeds": 1, "negative_prompt_embeds": 2}
    assert KLEIN.embeddings_for(both, 1.0) == {"prompt_embeds": 1} and KLEIN.embeddings_for(both, 4.0) == both
    assert KLEIN.cfg_notes(1.0, "") == [] and "Base" in KLEIN.cfg_notes(4.0, "")[0]
    assert "step-distilled" in KLEIN.cfg_ignored(lambda rel: {"is_distilled": True})
    assert KLEIN.cfg_ignored(lambda rel: {"is_distilled": False}) is None


def test_heun_and_schedule_types_on_dpm_are_refused_in_one_line(cli):
    for scheduler, says in (("Heun", "Heun does not work with flux2-klein"),
                            ("DPM++ 2M Karras", "no Karras schedule type on flux2-klein")):
        result = cli("txt2img", "x", "--preset", "flux2-klein", "--scheduler", scheduler)
        assert result.code == 2 and result.err.count("\n") == 1 and says in result.err, result.err


# ---- tiny pipelines

@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from imagegen.testing import build_tiny

    root = tmp_path_factory.mktemp("klein")
    return {"base": build_tiny("flux2-klein", root / "base"),
            "distilled": build_tiny("flux2-klein", root / "distilled", distilled=True)}


def run(cli, tmp_path, name: str, *args) -> np.ndarray:
    result = cli(*args, "--steps", "2", "--seed", "3", "--out", tmp_path / name, "-q")
    assert result.code == 0, result.err
    return pixels(next((tmp_path / name).glob("*.png")))


@pytest.mark.slow
def test_cfg_acts_on_a_base_model_with_its_negative_and_is_refused_on_a_distilled_one(cli, models, tmp_path):
    base = ["txt2img", "a fox", "--size", "64x64", "--model", models["base"]]
    plain, guided = run(cli, tmp_path, "b1", *base), run(cli, tmp_path, "b4", *base, "--cfg", "4")
    negative = run(cli, tmp_path, "bn", *base, "--cfg", "4", "--negative", "blurry, dark")
    assert np.abs(plain - guided).mean() > 0 and np.abs(guided - negative).mean() > 0
    distilled = ["txt2img", "a fox", "--size", "64x64", "--model", models["distilled"]]
    refused = cli(*distilled, "--cfg", "4")  # its pipeline would ignore it: refused before loading, not recorded
    assert refused.code == 2 and "step-distilled" in refused.err and refused.err.count("\n") == 1


@pytest.mark.slow
def test_inpaint_through_the_cli_keeps_the_pixels_outside_the_mask(cli, models, tmp_path):
    init, mask = tmp_path / "init.png", tmp_path / "mask.png"
    noise(64, 64).save(init)
    box = np.zeros((64, 64), "uint8")
    box[16:48, 16:48] = 255
    Image.fromarray(box).save(mask)
    result = cli("inpaint", "a fox", "--image", init, "--mask", mask, "--model", models["base"], "--steps", "2",
                 "--seed", "1", "--cfg", "3", "--out", tmp_path / "out", "-q")
    assert result.code == 0, result.err
    made = next((tmp_path / "out").glob("*.png"))
    outside = box == 0
    outside[12:52, 12:52] = False  # the blurred seam
    assert np.abs(pixels(made) - pixels(init))[outside].max() <= 1
    assert cli("reproduce", made, "--verify", "-q").code == 0
    refused = cli("img2img", "a fox", "--image", init, "--model", models["base"])
    assert refused.code == 2 and refused.err.count("\n") == 1 and "cannot do img2img" in refused.err


@pytest.mark.slow
def test_edit_takes_the_first_references_size_and_at_most_four(cli, models, tmp_path):
    first, second = tmp_path / "a.png", tmp_path / "b.png"
    noise(96, 64).save(first)
    noise(64, 80, 1).save(second)
    result = cli("edit", "make it night", "--image", first, "--image", second, "--model", models["distilled"],
                 "--steps", "2", "--seed", "1", "--out", tmp_path / "e", "-q")
    assert result.code == 0, result.err
    assert Image.open(next((tmp_path / "e").glob("*.png"))).size == (96, 64)
    five = [a for _ in range(5) for a in ("--image", first)]
    refused = cli("edit", "x", *five, "--model", models["distilled"])
    assert refused.code == 2 and "at most 4 reference images" in refused.err
