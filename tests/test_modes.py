"""img2img, inpaint, outpaint (--extend) and the hires fix on tiny SD 1.5, SDXL, SD3 and Flux pipelines: each mode's
output, the pixels inpainting must keep, sizes, records, replays, batch and compare, FluxFill, and bad input.

The flux cases of the per-mode tests and the input checks (nothing loads) run without `-m slow`; the rest is slow."""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from imagegen.metadata import parse_parameters

FAMILIES = ("sd15", "sdxl", "sd3", "flux")
MULTIPLE = {"sd15": 8, "sdxl": 8, "sd3": 16, "flux": 16}  # of the tiny models (VAE factor x patch size)
PIPELINES = {
    "sd15": ("StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline"),
    "sdxl": ("StableDiffusionXLImg2ImgPipeline", "StableDiffusionXLInpaintPipeline"),
    "sd3": ("StableDiffusion3Img2ImgPipeline", "StableDiffusion3InpaintPipeline"),
    "flux": ("FluxImg2ImgPipeline", "FluxInpaintPipeline"),
}
slow = pytest.mark.slow


def family_params(fast=("flux",)):
    """Every family; the fast ones run without -m slow."""
    return [pytest.param(f, marks=() if f in fast else slow) for f in FAMILIES]


# ---- fixtures and helpers


@pytest.fixture(scope="module")
def models(tiny_models, tmp_path_factory):
    """The session's tiny SDXL, SD3 and Flux folders, and a tiny SD 1.5 one."""
    from imagegen.testing import build_tiny

    return {**tiny_models, "sd15": build_tiny("sd15", tmp_path_factory.mktemp("modes-sd15") / "sd15")}


@pytest.fixture(scope="module")
def fill_model(tmp_path_factory):
    """A tiny FLUX.1-Fill-dev layout (FluxFillPipeline, guidance embedding): imagegen picks preset flux-fill."""
    from imagegen.testing import build_tiny_flux

    return build_tiny_flux(tmp_path_factory.mktemp("modes-fill") / "flux-fill", fill=True, guidance_embeds=True)


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    from imagegen.testing import build_tiny_controlnet

    root = tmp_path_factory.mktemp("modes-nets")
    return {family: build_tiny_controlnet(root / f"cn-{family}", family) for family in ("sdxl", "sd3")}


@pytest.fixture(scope="module")
def pics(tmp_path_factory):
    """Init images (64x64 with a bright square; odd sizes), masks (white = repaint) and broken files."""
    root = tmp_path_factory.mktemp("modes-pics")
    rng = np.random.RandomState(0)
    photo = (rng.rand(64, 64, 3) * 60 + 80).astype("uint8")
    photo[16:48, 12:40] = (230, 200, 40)
    Image.fromarray(photo).save(root / "photo.png")
    Image.fromarray((rng.rand(56, 72, 3) * 255).astype("uint8")).save(root / "odd.png")  # 72x56
    Image.fromarray((rng.rand(54, 76, 3) * 255).astype("uint8")).save(root / "odd2.png")  # 76x54
    mask = np.zeros((64, 64), "uint8")
    mask[20:44, 24:52] = 255
    Image.fromarray(mask).save(root / "mask.png")
    Image.fromarray(mask).resize((32, 40), Image.Resampling.NEAREST).save(root / "small-mask.png")  # another size
    corner = np.zeros((64, 64), "uint8")
    corner[:, :6] = 255  # only the left edge: cropped away when a 72x56 image is cropped to a square
    Image.fromarray(corner).save(root / "edge-mask.png")
    Image.fromarray(np.zeros((64, 64), "uint8")).save(root / "black.png")
    Image.fromarray(np.full((64, 64), 255, "uint8")).save(root / "white.png")
    data = (root / "photo.png").read_bytes()
    (root / "truncated.png").write_bytes(data[: len(data) // 2])
    (root / "notanimage.png").write_text("hello")
    return root


@pytest.fixture
def no_loading(monkeypatch):
    """Bad input must be refused before any weights load."""
    import imagegen.loading

    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded")

    monkeypatch.setattr(imagegen.loading, "load_model", refuse)


def pixels(path):
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).astype(int)


def sha256(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def sidecar(png) -> dict:
    return json.loads(png.with_suffix(".json").read_text())


def a1111(png) -> dict:
    with Image.open(png) as im:
        return parse_parameters(im.text["parameters"])


def nearest(value: float, multiple: int) -> int:
    return max(multiple, round(value / multiple) * multiple)


def run(cli, command, model, out, *extra, seed="7", steps="3"):
    """One image of `command` on a tiny model; its PNG."""
    result = cli(command, "a stone bridge over a river", "--model", model, "--steps", steps, "--seed", seed,
                 "--out", out, "-q", *extra)
    assert result.code == 0, result.err
    return out / f"0000-{seed}.png"


def verified(cli, png) -> None:
    again = cli("reproduce", png, "--verify", "-q")
    assert again.code == 0, again.err


def one_error_line(result) -> str:
    assert result.code == 2, (result.code, result.err)
    line, = result.err.strip().splitlines()
    assert line.startswith("imagegen: error: ")
    return line


# ---- 1 + 10: each mode on each family, its pixels, its record, and its replay


@pytest.mark.parametrize("family", family_params())
def test_img2img(cli, models, pics, tmp_path, family):
    png = run(cli, "img2img", models[family], tmp_path / "out", "--image", pics / "photo.png", "--strength", "0.6")
    image = pixels(png)
    assert image.shape == (64, 64, 3)
    assert np.abs(image - pixels(pics / "photo.png")).max() > 0, "the picture was redrawn"

    record = sidecar(png)
    assert record["mode"] == "img2img"
    assert record["runtime"]["pipeline_class"] == PIPELINES[family][0]
    init = record["init"]
    assert init["image"]["sha256"] == sha256(pics / "photo.png") and init["image"]["size"] == [64, 64]
    assert init["image"]["path"] == os.path.relpath(pics / "photo.png", png.parent).replace(os.sep, "/")
    assert init["strength"] == 0.6 and init["resize"] == "crop" and init["size_from"] == "image"
    assert init["mask"] is None and init["extend"] is None and len(init["prepared_sha256"]) == 64
    text = a1111(png)
    assert text["Denoising strength"] == "0.6" and text["Size"] == "64x64" and "Mask blur" not in text
    verified(cli, png)


@pytest.mark.parametrize("family", family_params())
def test_inpaint_keeps_every_unmasked_pixel(cli, models, pics, tmp_path, family):
    png = run(cli, "inpaint", models[family], tmp_path / "out", "--image", pics / "photo.png",
              "--mask", pics / "mask.png", "--mask-blur", "6")
    before, after = pixels(pics / "photo.png"), pixels(png)
    keep = np.asarray(Image.open(pics / "mask.png")) == 0
    assert np.array_equal(after[keep], before[keep]), "a pixel outside the mask changed"
    assert np.abs(after[~keep] - before[~keep]).max() > 0, "the masked area was repainted"

    record = sidecar(png)
    assert record["mode"] == "inpaint" and record["runtime"]["pipeline_class"] == PIPELINES[family][1]
    mask = record["init"]["mask"]
    assert mask["sha256"] == sha256(pics / "mask.png") and mask["resized_to"] == [64, 64]
    assert mask["blur"] == 6 and mask["area"] == "whole" and len(mask["prepared_sha256"]) == 64
    assert record["init"]["strength"] == 1.0  # inpaint's default
    text = a1111(png)
    assert text["Denoising strength"] == "1" and text["Mask blur"] == "6"
    verified(cli, png)


@pytest.mark.parametrize("family", family_params())
def test_outpaint_grows_the_canvas_and_keeps_the_original(cli, models, pics, tmp_path, family):
    png = run(cli, "inpaint", models[family], tmp_path / "out", "--image", pics / "photo.png", "--extend", "8,0,16,4")
    m = MULTIPLE[family]
    # Each grown axis rounded up to the multiple, the extra pixels on the side that was extended.
    applied = {8: [8, 0, 16, 8], 16: [8, 0, 24, 16]}[m]
    width, height = 64 + applied[0] + applied[2], 64 + applied[1] + applied[3]
    image = pixels(png)
    assert image.shape == (height, width, 3) and width % m == 0 and height % m == 0
    left, top = applied[0], applied[1]
    assert np.array_equal(image[top:top + 64, left:left + 64], pixels(pics / "photo.png"))

    record = sidecar(png)
    assert record["mode"] == "inpaint" and (record["width"], record["height"]) == (width, height)
    assert record["init"]["extend"] == {"given": [8, 0, 16, 4], "applied": applied, "fill": "edge"}
    assert record["init"]["mask"]["path"] is None and record["init"]["mask"]["resized_to"] == [width, height]
    text = a1111(png)
    assert text["Outpaint"] == "{}px left, {}px up, {}px right, {}px down".format(*applied)
    assert "Mask blur" in text and text["Size"] == f"{width}x{height}"
    verified(cli, png)


@pytest.mark.parametrize("upscaler", ["latent", "lanczos"])
@pytest.mark.parametrize("family", family_params())
def test_hires_fix(cli, models, tmp_path, family, upscaler):
    m = MULTIPLE[family]
    base = (40, 48) if m == 8 else (32, 48)
    png = run(cli, "txt2img", models[family], tmp_path / "out", "--size", f"{base[0]}x{base[1]}", "--hires", "1.4",
              "--hires-upscaler", upscaler, "--hires-steps", "2", "--hires-strength", "0.6")
    size = (nearest(base[0] * 1.4, m), nearest(base[1] * 1.4, m))
    assert size == ((56, 64) if m == 8 else (48, 64))
    with Image.open(png) as im:
        assert im.size == size

    record = sidecar(png)
    assert record["mode"] == "txt2img" and "init" not in record
    assert record["hires"] == {"scale": 1.4, "upscaler": upscaler, "strength": 0.6, "steps": 2,
                               "width": size[0], "height": size[1]}
    text = a1111(png)
    assert text["Hires upscale"] == "1.4" and text["Hires steps"] == "2" and text["Denoising strength"] == "0.6"
    assert text["Hires upscaler"] == {"latent": "Latent", "lanczos": "Lanczos"}[upscaler]
    verified(cli, png)


# ---- 2: from_pipe pipelines share the loaded modules


@pytest.mark.parametrize("family", family_params())
def test_img2img_pipeline_shares_the_loaded_modules(models, pics, family):
    import torch

    import imagegen
    from imagegen import loading

    result = imagegen.generate("a stone bridge", model=str(models[family]), image=str(pics / "photo.png"),
                               strength=0.5, steps=2, seed=3, save=False)
    image = result.images[0]
    assert image.path is None and isinstance(image.image, Image.Image) and image.image.size == (64, 64)
    assert image.record["mode"] == "img2img"

    loaded, = loading._LOADED.values()
    derived, = loaded.derived.values()
    assert type(derived).__name__ == PIPELINES[family][0] and derived is not loaded.pipe
    denoiser = "unet" if family in ("sd15", "sdxl") else "transformer"
    encoders = [n for n in ("text_encoder", "text_encoder_2", "text_encoder_3")
                if getattr(loaded.pipe, n, None) is not None]
    assert len(encoders) == {"sd15": 1, "sdxl": 2, "sd3": 3, "flux": 2}[family]
    for name in (denoiser, "vae", *encoders):
        assert getattr(derived, name) is getattr(loaded.pipe, name), name
    modules = {n for n, c in loaded.pipe.components.items() if isinstance(c, torch.nn.Module)}
    assert all(getattr(derived, n) is getattr(loaded.pipe, n) for n in modules)


# ---- 3: ControlNet with an init image


@slow
def test_controlnet_img2img(cli, models, nets, pics, tmp_path):
    png = run(cli, "img2img", models["sdxl"], tmp_path / "out", "--image", pics / "photo.png", "--control",
              f"canny:{pics / 'photo.png'}", "--controlnet-model", nets["sdxl"])
    plain = run(cli, "img2img", models["sdxl"], tmp_path / "plain", "--image", pics / "photo.png")
    assert np.abs(pixels(png) - pixels(plain)).max() > 0, "the net steers the image"
    record = sidecar(png)
    assert record["mode"] == "img2img"
    assert record["runtime"]["pipeline_class"] == "StableDiffusionXLControlNetImg2ImgPipeline"
    assert record["control"][0]["type"] == "canny" and record["init"]["strength"] == 0.75
    verified(cli, png)


def test_sd3_controlnet_has_no_img2img_pipeline(cli, no_loading, models, nets, pics):
    result = cli("img2img", "x", "--model", models["sd3"], "--image", pics / "photo.png", "--control",
                 f"canny:{pics / 'photo.png'}", "--controlnet-model", nets["sd3"], "--steps", "2")
    line = one_error_line(result)
    assert "--control" in line and "image2image" in line


# ---- 4: bad input, one line before any weights load


BAD = [  # (command and flags, what the one line says)
    pytest.param(("img2img", "--image", "{p}/missing.png"), "--image {p}/missing.png: no such file",
                 id="missing-image"),
    pytest.param(("img2img", "--image", "{p}/notanimage.png"),
                 "--image {p}/notanimage.png: not an image file PIL can read", id="not-an-image"),
    pytest.param(("img2img", "--image", "{p}/truncated.png"), "--image {p}/truncated.png: not a readable image",
                 id="truncated-image"),
    pytest.param(("inpaint", "--image", "{p}/photo.png", "--mask", "{p}/black.png"),
                 "--mask {p}/black.png: the mask is entirely black", id="black-mask"),
    pytest.param(("inpaint", "--image", "{p}/photo.png", "--mask", "{p}/white.png"),
                 "--mask {p}/white.png: the mask is entirely white", id="white-mask"),
    pytest.param(("inpaint", "--image", "{p}/photo.png", "--mask", "{p}/missing.png"),
                 "--mask {p}/missing.png: no such file", id="missing-mask"),
    pytest.param(("img2img", "--image", "{p}/photo.png", "--strength", "0"),
                 "--strength: must be above 0 and at most 1", id="strength-0"),
    pytest.param(("img2img", "--image", "{p}/photo.png", "--strength", "1.5"),
                 "--strength: must be above 0 and at most 1", id="strength-1.5"),
    pytest.param(("inpaint", "--image", "{p}/photo.png", "--mask", "{p}/mask.png", "--strength", "0"),
                 "--strength: must be above 0", id="inpaint-strength-0"),
    pytest.param(("inpaint", "--image", "{p}/photo.png", "--extend", "-8,0,0,0"), "--extend: must not be negative",
                 id="negative-extend"),
    pytest.param(("inpaint", "--image", "{p}/photo.png", "--extend", "0,0,0,0"), "--extend: grows nothing",
                 id="zero-extend"),
    pytest.param(("inpaint", "--mask", "{p}/mask.png"), "--mask needs --image FILE", id="inpaint-mask-without-image"),
    pytest.param(("txt2img", "--mask", "{p}/mask.png"), "No such option: --mask", id="txt2img-mask"),
    pytest.param(("inpaint", "--image", "{p}/photo.png"), "inpaint needs --mask or --extend",
                 id="inpaint-without-mask"),
    pytest.param(("img2img",), "img2img needs --image FILE", id="img2img-without-image"),
    pytest.param(("img2img", "--image", "{p}/photo.png", "--mask", "{p}/mask.png"), "No such option: --mask",
                 id="img2img-mask"),
    pytest.param(("txt2img", "--hires", "1"), "--hires 1: the scale must be above 1", id="hires-1"),
    pytest.param(("txt2img", "--hires-strength", "0.3"), "--hires-strength needs --hires SCALE",
                 id="hires-strength-alone"),
    pytest.param(("inpaint", "--image", "{p}/photo.png", "--mask", "{p}/mask.png", "--mask-blur", "-1"),
                 "--mask-blur", id="negative-mask-blur"),
    pytest.param(("img2img", "--image", "{p}/photo.png", "--resize", "zoom"), "--resize: must be crop, fit or stretch",
                 id="bad-resize"),
    pytest.param(("inpaint", "--image", "{p}/odd.png", "--mask", "{p}/edge-mask.png", "--size", "32x64"),
                 "--mask {p}/edge-mask.png: after --resize crop to 32x64 nothing is left to repaint",
                 id="mask-cropped-away"),
]


@pytest.mark.parametrize("args, message", BAD)
def test_bad_input_is_one_line_before_loading(cli, no_loading, models, pics, args, message):
    command, *rest = args
    result = cli(command, "x", *[a.format(p=pics) for a in rest], "--model", models["sdxl"], "--steps", "2")
    line = one_error_line(result)
    assert message.format(p=pics) in line


def test_a_mode_the_preset_cannot_do_names_presets_that_can(cli, no_loading, fill_model, pics):
    result = cli("txt2img", "x", "--preset", "flux-fill", "--steps", "2")
    assert "preset 'flux-fill' cannot do txt2img; presets that can: flux-dev, flux-kontext, flux-schnell" in one_error_line(result)
    result = cli("img2img", "x", "--preset", "flux-fill", "--image", pics / "photo.png", "--steps", "2")
    assert "preset 'flux-fill' cannot do img2img; presets that can: flux-dev, flux-schnell" in one_error_line(result)
    # A FluxFill folder takes preset flux-fill by itself, so it is refused the same way.
    for command, extra in (("txt2img", ()), ("img2img", ("--image", pics / "photo.png"))):
        result = cli(command, "x", "--model", fill_model, "--steps", "2", "--size", "64x64", *extra)
        assert f"preset 'flux-fill' cannot do {command}; presets that can:" in one_error_line(result)


def test_an_extension_cropped_away_by_size_is_one_line(cli, no_loading, models, pics):
    # 64x64 grown to 80x64, then cropped (the default --resize) to the 64x64 asked for: the new area is cut off.
    result = cli("inpaint", "x", "--image", pics / "photo.png", "--extend", "8,0,8,0", "--size", "64x64",
                 "--model", models["sdxl"], "--steps", "2")
    assert "--extend" in one_error_line(result)


@pytest.mark.parametrize("command, extra", [
    pytest.param("img2img", ("--image", "{p}/photo.png", "--strength", "0.3"), id="img2img"),
    pytest.param("inpaint", ("--image", "{p}/photo.png", "--mask", "{p}/mask.png", "--strength", "0.3"), id="inpaint",
                 marks=slow),
    pytest.param("txt2img", ("--size", "32x32", "--hires", "1.5", "--hires-strength", "0.3"), id="hires", marks=slow),
])
def test_too_few_steps_for_the_strength(cli, models, pics, tmp_path, command, extra):
    """--steps 2 at strength 0.3 is 0.6 of a step: run at least one (as A1111 does), or refuse it in one line."""
    result = cli(command, "x", "--model", models["sd15"], "--steps", "2", "--seed", "1", "--out", tmp_path, "-q",
                 *[a.format(p=pics) for a in extra])
    line = one_error_line(result)
    assert result.code == 2 and "runs no step" in line and "strength" in line


# ---- 5: sizes


@pytest.mark.parametrize("image, family, size", [
    ("odd.png", "sdxl", (72, 56)), ("odd.png", "sd15", (72, 56)),
    ("odd2.png", "sd3", (80, 48)), ("odd2.png", "flux", (80, 48)),  # 76x54 -> the nearest multiples of 16
])
def test_output_size_follows_the_init_image(no_loading, models, pics, image, family, size):
    """Without --size: the init image's size, rounded to the model's multiple (resolved, nothing loads)."""
    from imagegen.request import Request
    from imagegen.resolve import resolve

    req = resolve(Request(prompt="x", model=str(models[family]), image=str(pics / image), steps=2))
    assert (req.width, req.height) == size
    assert req.adapter("init").record["size_from"] == "image"


@slow
@pytest.mark.parametrize("family", ["sdxl", "sd3", "flux"])
def test_odd_init_image_sizes(cli, models, pics, tmp_path, family):
    png = run(cli, "img2img", models[family], tmp_path / "out", "--image", pics / "odd.png", steps="2")
    with Image.open(png) as im:
        width, height = im.size
    if family == "sdxl":
        assert (width, height) == (72, 56)  # already a multiple of 8
    else:  # 72 and 56 lie halfway between multiples of 16: either neighbour is the nearest
        assert width % 16 == 0 and height % 16 == 0 and abs(width - 72) <= 8 and abs(height - 56) <= 8
    record = sidecar(png)
    assert (record["width"], record["height"]) == (width, height)
    assert record["init"]["size_from"] == "image" and record["init"]["image"]["size"] == [72, 56]


@slow
def test_size_with_each_resize_mode(cli, models, pics, tmp_path):
    prepared = set()
    for how in ("crop", "fit", "stretch"):
        png = run(cli, "img2img", models["sdxl"], tmp_path / how, "--image", pics / "odd.png", "--size", "48x64",
                  "--resize", how, steps="2")
        with Image.open(png) as im:
            assert im.size == (48, 64)
        init = sidecar(png)["init"]
        assert init["size_from"] == "--size" and init["resize"] == how
        prepared.add(init["prepared_sha256"])
    assert len(prepared) == 3, "each resize mode prepares the init image its own way"


@slow
def test_a_mask_of_another_size_is_resized(cli, models, pics, tmp_path):
    png = run(cli, "inpaint", models["sdxl"], tmp_path / "out", "--image", pics / "photo.png",
              "--mask", pics / "small-mask.png", steps="2")
    mask = sidecar(png)["init"]["mask"]
    assert mask["size"] == [32, 40] and mask["resized_to"] == [64, 64]
    assert mask["sha256"] == sha256(pics / "small-mask.png")
    verified(cli, png)


# ---- 6 + 7: batch


def write_lines(path, lines) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))


def done(out) -> dict:
    """png name -> manifest entry of every image made."""
    entries = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    return {e["png"]: e for e in entries if e["type"] == "done"}


@slow
def test_batch_runs_every_mode_with_paths_relative_to_the_prompt_file(cli, models, pics, tmp_path, monkeypatch):
    job = tmp_path / "job"
    (job / "pics").mkdir(parents=True)
    for name in ("photo.png", "mask.png", "odd.png"):
        shutil.copy(pics / name, job / "pics" / name)
    write_lines(job / "prompts.jsonl", [
        {"prompt": "plain", "size": "64x64"},
        {"prompt": "redraw", "image": "pics/photo.png", "strength": 0.6, "n": 2},
        {"prompt": "repaint", "image": "pics/photo.png", "mask": "pics/mask.png", "mask_blur": 2},
        {"prompt": "grow", "image": "pics/odd.png", "extend": [8, 0, 8, 0]},
        {"prompt": "grow down", "image": "pics/odd.png", "extend": "0,0,0,8", "extend_fill": "noise"},
        {"prompt": "sharp", "hires": 1.5, "size": "32x32", "hires_upscaler": "lanczos"},
    ])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = cli("batch", "../job/prompts.jsonl", "--model", models["sd15"], "--steps", "3", "--seed", "5",
                 "--out", tmp_path / "out", "--json", "-q")
    assert result.code == 0, result.err
    assert json.loads(result.out)["done"] == 7
    records = {png: sidecar(tmp_path / "out" / png) for png in done(tmp_path / "out")}
    assert len(records) == 7
    by_prompt = {}
    for png, record in records.items():
        by_prompt.setdefault(record["prompt"], []).append((tmp_path / "out" / png, record))
    modes = {prompt: {r["mode"] for _, r in items} for prompt, items in by_prompt.items()}
    assert modes == {"plain": {"txt2img"}, "redraw": {"img2img"}, "repaint": {"inpaint"}, "grow": {"inpaint"},
                     "grow down": {"inpaint"}, "sharp": {"txt2img"}}
    (png, record), = by_prompt["repaint"]
    assert record["init"]["image"]["path"] == "../job/pics/photo.png"  # relative to the image's folder
    assert record["init"]["mask"]["path"] == "../job/pics/mask.png" and record["init"]["mask"]["blur"] == 2
    keep = np.asarray(Image.open(pics / "mask.png")) == 0
    assert np.array_equal(pixels(png)[keep], pixels(pics / "photo.png")[keep])
    (png, record), = by_prompt["grow"]
    assert pixels(png).shape == (56, 88, 3)
    assert np.array_equal(pixels(png)[:, 8:80], pixels(pics / "odd.png"))
    (png, record), = by_prompt["grow down"]
    assert pixels(png).shape == (64, 72, 3) and record["init"]["extend"]["fill"] == "noise"
    (png, record), = by_prompt["sharp"]
    assert pixels(png).shape == (48, 48, 3) and record["hires"]["upscaler"] == "lanczos"
    # Every record replays from any folder: its input paths are relative to the record.
    monkeypatch.chdir(tmp_path)
    for prompt in ("repaint", "grow down"):
        verified(cli, by_prompt[prompt][0][0])


INVARIANCE = [
    pytest.param("sd15", "img2img", marks=slow),
    pytest.param("sdxl", "img2img", marks=slow),
    pytest.param("sd15", "inpaint", marks=slow),
    pytest.param("sdxl", "inpaint", marks=slow),
    pytest.param("sd3", "img2img", marks=slow),
    pytest.param("flux", "img2img", marks=slow),
    pytest.param("sd3", "inpaint", marks=slow),
    pytest.param("flux", "inpaint", marks=slow),
]


@pytest.mark.parametrize("family, mode", INVARIANCE)
def test_batch_size_does_not_change_an_image(cli, models, pics, tmp_path, family, mode):
    line = {"prompt": "a harbour at noon", "image": str(pics / "photo.png"), "n": 3}
    if mode == "inpaint":
        line["mask"] = str(pics / "mask.png")
    else:
        line["strength"] = 0.7
    write_lines(tmp_path / "p.jsonl", [line, {**line, "prompt": "a harbour at night", "seed": 40}])
    hashes = []
    for size in ("4", "1"):
        out = tmp_path / f"bs{size}"
        result = cli("batch", tmp_path / "p.jsonl", "--model", models[family], "--steps", "3", "--seed", "9",
                     "--batch-size", size, "--out", out, "--json", "-q")
        assert result.code == 0, result.err
        assert json.loads(result.out)["done"] == 6
        hashes.append({name: e["pixels_sha256"] for name, e in done(out).items()})
        for name in hashes[-1]:
            assert sidecar(out / name)["mode"] == mode
    assert hashes[0] == hashes[1]
    assert len(set(hashes[0].values())) == 6


@slow
def test_batch_resumes_and_remakes_what_an_input_change_touches(cli, models, pics, tmp_path):
    job = tmp_path / "job"
    (job / "in").mkdir(parents=True)
    shutil.copy(pics / "photo.png", job / "in" / "a.png")
    shutil.copy(pics / "odd.png", job / "in" / "b.png")
    shutil.copy(pics / "mask.png", job / "in" / "m1.png")
    shutil.copy(pics / "mask.png", job / "in" / "m2.png")
    write_lines(job / "p.jsonl", [
        {"prompt": "one", "image": "in/a.png", "mask": "in/m1.png"},
        {"prompt": "two", "image": "in/a.png", "mask": "in/m2.png"},
        {"prompt": "three", "image": "in/b.png", "strength": 0.5},
    ])
    out = tmp_path / "out"
    args = ("batch", job / "p.jsonl", "--model", models["sd15"], "--steps", "3", "--seed", "4", "--out", out,
            "--json", "-q")
    first = cli(*args)
    assert first.code == 0, first.err
    assert json.loads(first.out)["done"] == 3
    made = {p.name: sha256(p) for p in out.glob("*.png")}

    again = cli(*args)
    assert again.code == 0 and json.loads(again.out)["skipped"] == 3

    # Another mask for line two: only its image is made again, as a new file; the old one is kept.
    other = np.zeros((64, 64), "uint8")
    other[0:20, 0:30] = 255
    Image.fromarray(other).save(job / "in" / "m2.png")
    changed = cli(*args)
    assert changed.code == 0, changed.err
    data = json.loads(changed.out)
    assert (data["done"], data["skipped"]) == (1, 2)
    written, = [i for i in data["images"] if i["status"] == "written"]
    new = out / os.path.basename(written["path"])
    assert new.name not in made and sidecar(new)["prompt"] == "two"
    assert sidecar(new)["init"]["mask"]["sha256"] == sha256(job / "in" / "m2.png")
    assert {p.name: sha256(p) for p in out.glob("*.png") if p.name in made} == made  # nothing overwritten

    # 7: a new init image (same name, other content) changes the request hash of both lines that use it.
    Image.open(pics / "photo.png").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(job / "in" / "a.png")
    remade = cli(*args)
    assert remade.code == 0, remade.err
    data = json.loads(remade.out)
    assert (data["done"], data["skipped"]) == (2, 1)
    prompts = sorted(sidecar(out / os.path.basename(i["path"]))["prompt"]
                     for i in data["images"] if i["status"] == "written")
    assert prompts == ["one", "two"]


# ---- 8: compare along strengths


@slow
def test_compare_strengths_and_steps(cli, models, pics, tmp_path):
    result = cli("compare", "a lighthouse", "--model", models["sd3"], "--image", pics / "photo.png",
                 "--strengths", "0.4,0.6", "--steps", "3,4", "--seed", "1", "--out", tmp_path / "cmp", "--json", "-q")
    assert result.code == 0, result.err
    run_dir = tmp_path / "cmp" / "compare-001"
    assert (run_dir / "grid.png").is_file()
    import csv

    with open(run_dir / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert "strength" in rows[0]
    grid = [r for r in rows if r["role"] == "grid"]
    assert sorted((int(r["steps"]), float(r["strength"])) for r in grid) == [(3, 0.4), (3, 0.6), (4, 0.4), (4, 0.6)]
    # Evaluations count the steps that ran: about steps x strength (flow pipelines round up, UNet ones down).
    assert all(1 <= int(r["model_steps"]) < int(r["steps"]) for r in grid), grid
    cell = run_dir / next(r["file"] for r in grid if r["steps"] == "3" and r["strength"] == "0.6")
    record = sidecar(cell)
    assert record["mode"] == "img2img" and record["init"]["strength"] == 0.6 and record["steps"] == 3
    verified(cli, cell)


def test_compare_strengths_need_an_image(cli, no_loading, models):
    result = cli("compare", "x", "--model", models["sdxl"], "--strengths", "0.3,0.5", "--steps", "2")
    assert "--strengths needs --image FILE" in one_error_line(result)


def test_compare_refuses_a_cell_that_runs_no_step(cli, no_loading, models, pics, tmp_path):
    """--strengths 0.3 with --steps 2 is 0.6 of a step: refused in one line before anything loads."""
    result = cli("compare", "a lighthouse", "--model", models["sdxl"], "--image", pics / "photo.png",
                 "--strengths", "0.3,0.6", "--steps", "2,3", "--seed", "1", "--out", tmp_path / "cmp", "--json", "-q")
    assert result.code == 2 and "--strength 0.3 with --steps 2 runs no step" in one_error_line(result)


# ---- 9: FluxFill


@slow
def test_flux_fill_inpaints_and_outpaints(cli, fill_model, pics, tmp_path):
    png = run(cli, "inpaint", fill_model, tmp_path / "in", "--image", pics / "photo.png", "--mask", pics / "mask.png")
    record = sidecar(png)
    assert record["model"]["preset"] == "flux-fill" and record["runtime"]["pipeline_class"] == "FluxFillPipeline"
    assert record["guidance"] == 30.0 and record["mode"] == "inpaint"
    keep = np.asarray(Image.open(pics / "mask.png")) == 0
    after = pixels(png)
    assert np.array_equal(after[keep], pixels(pics / "photo.png")[keep])
    assert np.abs(after[~keep] - pixels(pics / "photo.png")[~keep]).max() > 0
    verified(cli, png)

    png = run(cli, "inpaint", fill_model, tmp_path / "out", "--image", pics / "photo.png", "--extend", "0,16,0,0")
    assert pixels(png).shape == (80, 64, 3)
    assert np.array_equal(pixels(png)[16:], pixels(pics / "photo.png"))
    assert sidecar(png)["runtime"]["pipeline_class"] == "FluxFillPipeline"
    verified(cli, png)


# ---- 11: a replay refuses inputs that changed


@slow
def test_reproduce_refuses_a_changed_init_image_or_mask(cli, models, pics, tmp_path, monkeypatch):
    for name in ("photo.png", "mask.png"):
        shutil.copy(pics / name, tmp_path / name)
    png = run(cli, "inpaint", models["sd3"], tmp_path / "out", "--image", tmp_path / "photo.png",
              "--mask", tmp_path / "mask.png", steps="2")
    shutil.copy(png, tmp_path / "keep.png")

    import imagegen.loading

    monkeypatch.setattr(imagegen.loading, "load_model", lambda *a, **k: pytest.fail("weights were loaded"))
    Image.open(pics / "photo.png").transpose(Image.Transpose.FLIP_TOP_BOTTOM).save(tmp_path / "photo.png")
    line = one_error_line(cli("reproduce", png, "--verify", "-q"))
    assert "--verify" in line and "photo.png is not the image the original used" in line
    assert not (tmp_path / "out" / "0000-7.reproduced").exists()

    shutil.copy(pics / "photo.png", tmp_path / "photo.png")
    Image.open(pics / "edge-mask.png").save(tmp_path / "mask.png")
    line = one_error_line(cli("reproduce", png, "--verify", "-q"))
    assert "mask.png is not the image the original used" in line

    (tmp_path / "mask.png").unlink()
    line = one_error_line(cli("reproduce", png, "--verify", "-q"))
    assert "mask.png" in line and "no such file" in line
    assert sha256(png) == sha256(tmp_path / "keep.png")


@slow
@pytest.mark.parametrize("upscaler", ["latent", "lanczos"])
def test_hires_images_do_not_depend_on_the_batch_size(cli, models, tmp_path, upscaler):
    hashes = []
    for size in ("1", "3"):
        result = cli("txt2img", "a harbour", "--model", models["sdxl"], "--size", "32x32", "--steps", "3",
                     "--hires", "1.5", "--hires-upscaler", upscaler, "-n", "3", "--batch-size", size, "--seed", "7",
                     "--out", tmp_path / size, "--json", "-q")
        assert result.code == 0, result.err
        hashes.append([i["pixels_sha256"] for i in json.loads(result.out)["images"]])
    assert hashes[0] == hashes[1]
