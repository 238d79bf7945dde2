"""txt2img end to end on tiny SDXL, SD3 and Flux folders, loaded through the real from_pretrained path."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image

from imagegen.metadata import parse_parameters

pytestmark = pytest.mark.slow

A1111_RE = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
SCHEDULERS = {
    "sdxl": ["Euler a", "DPM++ 2M Karras", "DDIM", "dpmpp_2m_sde karras", "UniPC", "LMS", "DPM++ SDE Karras", "DEIS"],
    "sd3": ["Euler", "DPM++ 2M", "UniPC", "Heun", "Euler Karras"],
    "flux": ["Euler", "DPM++ 2M", "uni_pc", "Euler Beta"],
}
EXPECTED_CLASS = {
    "Euler a": "EulerAncestralDiscreteScheduler", "DPM++ 2M Karras": "DPMSolverMultistepScheduler",
    "DDIM": "DDIMScheduler", "dpmpp_2m_sde karras": "DPMSolverMultistepScheduler",
    "UniPC": "UniPCMultistepScheduler", "LMS": "LMSDiscreteScheduler", "Euler": "FlowMatchEulerDiscreteScheduler",
    "DPM++ 2M": "DPMSolverMultistepScheduler", "uni_pc": "UniPCMultistepScheduler", "Heun": "FlowMatchHeunDiscreteScheduler",
    "DEIS": "DEISMultistepScheduler", "Euler Karras": "FlowMatchEulerDiscreteScheduler",
    "DPM++ SDE Karras": "DPMSolverSDEScheduler", "Euler Beta": "FlowMatchEulerDiscreteScheduler",
}


def pixels(path):
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


@pytest.mark.parametrize("family, scheduler", [(f, s) for f, names in SCHEDULERS.items() for s in names])
def test_txt2img_each_family_and_scheduler(cli, tiny_models, tmp_path, family, scheduler):
    out = tmp_path / "shots"
    result = cli("txt2img", "a lighthouse at dusk, oil painting", "--model", tiny_models[family],
                 "--scheduler", scheduler, "--steps", "3", "--cfg", "4", "--seed", "42", "--size", "64x48" if family == "sdxl" else "64x64",
                 "--negative", "blurry", "--out", out, "--json", "-q")
    assert result.code == 0, result.err
    data = json.loads(result.out)
    png = out / "0000-42.png"
    assert data["images"][0]["path"] == str(png) and data["seeds"] == [42]
    image = pixels(png)
    assert image.shape[:2] == ((48, 64) if family == "sdxl" else (64, 64))
    assert image.std() > 0, "not a blank (NaN) image"

    sidecar = json.loads((out / "0000-42.json").read_text())
    assert sidecar["schema"] == "imagegen/1"
    assert sidecar["scheduler"]["class"] == EXPECTED_CLASS[scheduler]
    assert sidecar["model"]["family"] == family and sidecar["model"]["id"] == tiny_models[family].name  # portable
    assert sidecar["model"]["local"] is True and len(sidecar["model"]["sha256"]) == 64
    assert sidecar["runtime"] == {"dtype": "float32", "device": "cpu", "rng": "cpu",
                                  "pipeline_class": sidecar["model"]["pipeline_class"], "offload": "none",
                                  "vae_tiling": "off", "vae_slicing": "off", "attention": "auto", "cache": "none",
                                  "quantize": "none", "compile": "none",
                                  "memory": {"mode": "auto", "plan": None}}
    assert set(sidecar["timings"]) == {"load_s", "denoise_s", "decode_s", "save_s"}
    assert {"diffusers", "torch", "transformers", "imagegen"} <= set(sidecar["versions"])
    import hashlib

    assert sidecar["output"]["sha256"] == hashlib.sha256(png.read_bytes()).hexdigest()
    if family != "sdxl":
        assert sidecar["scheduler"]["config"].get("prediction_type", "flow_prediction") == "flow_prediction"

    def no_constants(value):
        raise AssertionError(f"non-standard JSON constant {value}")

    json.loads((out / "0000-42.json").read_text(), parse_constant=no_constants)  # strict JSON (Node, jq, ...)

    with Image.open(png) as im:
        chunk = json.loads(im.text["imagegen"])
        parameters = im.text["parameters"]
    assert chunk["seed"] == 42 and chunk["scheduler"] == sidecar["scheduler"]
    *head, last = parameters.split("\n")
    assert head == ["a lighthouse at dusk, oil painting", "Negative prompt: blurry"]
    pairs = dict(A1111_RE.findall(last))
    assert pairs["Seed"] == "42" and pairs["Steps"] == "3" and pairs["CFG scale"] == "4" and pairs["Size"] == f"{image.shape[1]}x{image.shape[0]}"
    assert parse_parameters(parameters)["Prompt"] == "a lighthouse at dusk, oil painting"


@pytest.mark.parametrize("family", ["sdxl", "sd3", "flux"])
def test_an_image_depends_only_on_its_seed(cli, tiny_models, tmp_path, family):
    """Batch size and position in the batch do not change a single pixel on CPU."""
    common = ["--model", tiny_models[family], "--steps", "3", "--seed", "100", "--size", "64x64", "--cfg", "3", "-q", "--json"]
    batched = json.loads(cli("txt2img", "a red fox", *common, "-n", "3", "--batch-size", "3", "--out", tmp_path / "b").out)
    single = json.loads(cli("txt2img", "a red fox", *common, "-n", "3", "--batch-size", "1", "--out", tmp_path / "s").out)
    alone = json.loads(cli("txt2img", "a red fox", *common[:4], "--seed", "102", *common[6:], "--out", tmp_path / "a").out)
    assert [i["seed"] for i in batched["images"]] == [100, 101, 102]
    assert [i["pixels_sha256"] for i in batched["images"]] == [i["pixels_sha256"] for i in single["images"]]
    assert alone["images"][0]["pixels_sha256"] == batched["images"][2]["pixels_sha256"]
    assert len({i["pixels_sha256"] for i in batched["images"]}) == 3  # different seeds, different images


@pytest.mark.parametrize("scheduler", ["Euler a", "DPM++ SDE", "DPM++ 2M SDE"])
def test_stochastic_scheduler_is_batch_invariant_too(cli, tiny_models, tmp_path, scheduler):
    common = ["--model", tiny_models["sdxl"], "--steps", "4", "--seed", "5", "--size", "64x64", "-q", "--json",
              "-s", scheduler, "-n", "2"]
    a = json.loads(cli("txt2img", "x", *common, "--batch-size", "2", "--out", tmp_path / "a").out)
    b = json.loads(cli("txt2img", "x", *common, "--batch-size", "1", "--out", tmp_path / "b").out)
    assert [i["pixels_sha256"] for i in a["images"]] == [i["pixels_sha256"] for i in b["images"]]
    again = json.loads(cli("txt2img", "x", *common, "--batch-size", "2", "--out", tmp_path / "c").out)
    assert [i["pixels_sha256"] for i in again["images"]] == [i["pixels_sha256"] for i in a["images"]]


def test_reproduce_verify_passes_and_catches_tampering(cli, tiny_models, tmp_path):
    out = tmp_path / "shots"
    made = cli("txt2img", "a fox in snow", "--model", tiny_models["sdxl"], "--steps", "3", "--seed", "42", "-n", "4",
               "--batch-size", "2", "--size", "64x64", "-s", "DPM++ 2M Karras", "--out", out, "-q")
    assert made.code == 0, made.err
    target = out / "0003-45.png"
    ok = cli("reproduce", target, "--verify", "--json")
    assert ok.code == 0, ok.err
    data = json.loads(ok.out)
    assert data["verify"]["identical"] and data["verify"]["max_pixel_diff"] == 0
    assert data["images"][0]["path"].startswith(str(out / "0003-45.reproduced"))
    assert "verified" in ok.err

    from_sidecar = cli("reproduce", out / "0001-43.json", "--verify", "-q")
    assert from_sidecar.code == 0, from_sidecar.err

    tampered = tmp_path / "tampered.png"
    with Image.open(target) as im:
        info = __import__("PIL.PngImagePlugin", fromlist=["PngInfo"]).PngInfo()
        for key, value in im.text.items():
            info.add_text(key, value)
        changed = np.asarray(im.convert("RGB")).copy()
    changed[10, 10, 0] ^= 0x10
    Image.fromarray(changed).save(tampered, pnginfo=info)
    bad = cli("reproduce", tampered, "--verify", "-q")
    assert bad.code == 4
    assert "max pixel difference 16" in bad.err and bad.err.count("\n") == 1


def test_reproduce_with_overrides(cli, tiny_models, tmp_path):
    out = tmp_path / "o"
    assert cli("txt2img", "x", "--model", tiny_models["sd3"], "--steps", "2", "--seed", "9", "--size", "64x64", "--out", out, "-q").code == 0
    again = cli("reproduce", out / "0000-9.png", "--steps", "3", "--out", tmp_path / "r", "-q", "--json")
    assert again.code == 0, again.err
    sidecar = json.loads(open(json.loads(again.out)["images"][0]["sidecar"]).read())
    assert sidecar["steps"] == 3 and sidecar["seed"] == 9 and sidecar["prompt"] == "x"
    refused = cli("reproduce", out / "0000-9.png", "--verify", "--steps", "3")
    assert refused.code == 2 and "drop the recipe overrides" in refused.err


def test_flux_cfg_above_one_turns_on_true_cfg(cli, tiny_models, tmp_path):
    common = ["--model", tiny_models["flux"], "--seed", "3", "--size", "64x64", "--json"]
    plain = cli("txt2img", "a fox", *common, "--out", tmp_path / "a", "-q")
    guided = cli("txt2img", "a fox", *common, "--cfg", "4", "--negative", "blurry", "--out", tmp_path / "b")
    assert plain.code == 0 and guided.code == 0, guided.err
    assert "true classifier-free guidance" in guided.err
    assert json.loads(plain.out)["images"][0]["pixels_sha256"] != json.loads(guided.out)["images"][0]["pixels_sha256"]
    record = json.loads((tmp_path / "b" / "0000-3.json").read_text())
    assert record["cfg"] == 4.0 and record["negative"] == "blurry" and record["steps"] == 4  # flux-schnell defaults


def test_negative_prompt_changes_sdxl_image(cli, tiny_models, tmp_path):
    common = ["--model", tiny_models["sdxl"], "--seed", "3", "--size", "64x64", "--steps", "3", "--json", "-q"]
    a = json.loads(cli("txt2img", "a fox", *common, "--out", tmp_path / "a").out)
    b = json.loads(cli("txt2img", "a fox", *common, "--negative", "snow", "--out", tmp_path / "b").out)
    assert a["images"][0]["pixels_sha256"] != b["images"][0]["pixels_sha256"]


def test_metadata_none_and_name_template(cli, tiny_models, tmp_path):
    out = tmp_path / "private"
    result = cli("txt2img", "A Fox, in Snow!", "--model", tiny_models["sdxl"], "--steps", "2", "--seed", "7",
                 "--size", "64x64", "--metadata", "none", "--name", "{prompt}/{scheduler}-{steps}-{seed}", "--out", out, "-q")
    assert result.code == 0, result.err
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert files == ["a-fox-in-snow/dpmpp_2m_karras-2-7.png"]
    with Image.open(out / files[0]) as im:
        assert not getattr(im, "text", {})
    again = cli("txt2img", "A Fox, in Snow!", "--model", tiny_models["sdxl"], "--steps", "2", "--seed", "7",
                "--size", "64x64", "--metadata", "none", "--name", "{prompt}/{scheduler}-{steps}-{seed}", "--out", out, "-q")
    assert again.code == 0
    assert (out / "a-fox-in-snow" / "dpmpp_2m_karras-2-7-1.png").exists()  # never overwritten


def test_python_api(tiny_models, tmp_path):
    import imagegen

    result = imagegen.generate("a red circle", model=str(tiny_models["sdxl"]), steps=2, seed=1, n=2, size="64x64", save=False)
    assert [i.seed for i in result.images] == [1, 2]
    assert result.images[0].image.size == (64, 64) and result.images[0].path is None
    assert result.request.scheduler.name == "DPM++ 2M Karras" and result.device == "cpu"


def test_random_seed_is_printed_and_recorded(cli, tiny_models, tmp_path):
    result = cli("txt2img", "x", "--model", tiny_models["sdxl"], "--steps", "1", "--size", "64x64", "--out", tmp_path, "--json")
    assert result.code == 0
    seed = json.loads(result.out)["seeds"][0]
    assert f"random seed {seed}" in result.err
    assert json.loads(next(tmp_path.glob("*.json")).read_text())["seed"] == seed


def test_preset_given_as_a_path(cli, tiny_models, tmp_path):
    preset = tmp_path / "mine.toml"
    preset.write_text(
        f'family = "sd3"\nmodel = "{tiny_models["sd3"]}"\nschedulers = ["Euler", "UniPC"]\n'
        '[defaults]\nsteps = 2\ncfg = 2.0\nsize = "64x64"\nscheduler = "UniPC"\n'
    )
    result = cli("txt2img", "x", "--preset", preset, "--seed", "4", "--out", tmp_path / "o", "-q", "--json")
    assert result.code == 0, result.err
    record = json.loads((tmp_path / "o" / "0000-4.json").read_text())
    assert (record["steps"], record["cfg"], record["scheduler"]["name"], record["model"]["preset"]) == (2, 2.0, "UniPC", "mine")
    refused = cli("txt2img", "x", "--preset", preset, "--scheduler", "DPM++ 2M", "--seed", "4")
    assert refused.code == 2 and "preset 'mine' allows Euler, UniPC" in refused.err
    again = cli("reproduce", tmp_path / "o" / "0000-4.png", "--verify", "-q")  # the preset file is not needed to replay
    assert again.code == 0, again.err
