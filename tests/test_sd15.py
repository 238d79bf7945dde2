"""Stable Diffusion 1.5 on tiny random-weight pipelines: txt2img with several schedulers, v-prediction, refused flow
schedulers, batch-size invariance, batch with resume, compare, reproduce --verify, ControlNet and IP-Adapter."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sd15(tmp_path_factory):
    """A tiny SD 1.5 folder (epsilon), a v-prediction one (SD 2.x style), a tiny net and adapter, an input image."""
    from imagegen.testing import build_tiny, build_tiny_controlnet, build_tiny_ip_adapter

    root = tmp_path_factory.mktemp("sd15")
    rng = np.random.RandomState(0)
    photo = (rng.rand(80, 96, 3) * 40 + 100).astype("uint8")
    photo[20:60, 30:70] = 230
    Image.fromarray(photo).save(root / "photo.png")
    return {
        "model": build_tiny("sd15", root / "model"),
        "v": build_tiny("sd15", root / "model-v", v_prediction=True),
        "cn": build_tiny_controlnet(root / "cn", "sd15"),
        "ip": build_tiny_ip_adapter(root / "ip", "sd15"),
        "photo": root / "photo.png",
    }


def common(model, out, *extra):
    return ("--model", model, "--steps", "3", "--seed", "11", "--size", "64x64", "--out", out, "-q", "--json", *extra)


def pixels(path):
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).astype(int)


@pytest.mark.parametrize("scheduler, cls", [
    ("PLMS", "PNDMScheduler"), ("Euler a", "EulerAncestralDiscreteScheduler"),
    ("DPM++ 2M Karras", "DPMSolverMultistepScheduler"), ("DDIM", "DDIMScheduler"), ("UniPC", "UniPCMultistepScheduler"),
    ("dpmpp_sde karras", "DPMSolverSDEScheduler"), ("Heun", "HeunDiscreteScheduler"),
])
def test_txt2img_with_each_scheduler(cli, sd15, tmp_path, scheduler, cls):
    result = cli("txt2img", "a lighthouse at dusk", *common(sd15["model"], tmp_path, "-s", scheduler, "--cfg", "6",
                                                           "--negative", "blurry"))
    assert result.code == 0, result.err
    assert "safety" not in result.err.lower()  # the checker is left out, and diffusers is not asked to warn
    image = pixels(tmp_path / "0000-11.png")
    assert image.shape == (64, 64, 3) and image.std() > 0
    record = json.loads((tmp_path / "0000-11.json").read_text())
    assert record["model"]["family"] == "sd15" and record["model"]["pipeline_class"] == "StableDiffusionPipeline"
    assert record["scheduler"]["class"] == cls and record["scheduler"]["config"]["prediction_type"] == "epsilon"
    assert record["model"]["preset"] == "sd15"  # a bare --model takes its family's preset


def test_v_prediction_is_read_from_the_models_scheduler_config(cli, sd15, tmp_path):
    for scheduler in ("DPM++ 2M Karras", "Euler a"):
        out = tmp_path / scheduler.replace(" ", "-")
        result = cli("txt2img", "a fox", *common(sd15["v"], out, "-s", scheduler))
        assert result.code == 0, result.err
        record = json.loads((out / "0000-11.json").read_text())
        assert record["scheduler"]["config"]["prediction_type"] == "v_prediction"
        assert pixels(out / "0000-11.png").std() > 0


def test_flow_schedulers_are_refused_before_loading(cli, sd15, monkeypatch):
    import imagegen.loading

    monkeypatch.setattr(imagegen.loading, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    result = cli("txt2img", "x", "--model", sd15["model"], "--scheduler", "FlowMatchEulerDiscreteScheduler", "--seed", "1")
    assert result.code == 2 and "a flow-matching scheduler: it cannot drive an epsilon/v-prediction model" in result.err
    assert "for sd15: Euler, Euler a" in result.err and result.err.count("\n") == 1
    result = cli("txt2img", "x", "--model", sd15["model"], "--size", "60x64", "--seed", "1")
    assert result.code == 2 and "multiples of 8" in result.err


def test_an_image_depends_only_on_its_seed(cli, sd15, tmp_path):
    args = ["--model", sd15["model"], "--steps", "3", "--seed", "100", "--size", "64x64", "--cfg", "4", "-q", "--json",
            "-n", "3"]
    batched = json.loads(cli("txt2img", "a red fox", *args, "--batch-size", "3", "--out", tmp_path / "b").out)
    single = json.loads(cli("txt2img", "a red fox", *args, "--batch-size", "1", "--out", tmp_path / "s").out)
    assert [i["pixels_sha256"] for i in batched["images"]] == [i["pixels_sha256"] for i in single["images"]]
    assert len({i["pixels_sha256"] for i in batched["images"]}) == 3


def test_reproduce_verify(cli, sd15, tmp_path):
    made = cli("txt2img", "a fox in snow", *common(sd15["model"], tmp_path / "o", "-n", "2", "-s", "Euler a"))
    assert made.code == 0, made.err
    ok = cli("reproduce", tmp_path / "o" / "0001-12.png", "--verify", "--json")
    assert ok.code == 0, ok.err
    assert json.loads(ok.out)["verify"]["identical"]


def test_batch_resumes_and_matches_txt2img(cli, sd15, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "a red fox", "seed": 5}\n{"prompt": "an owl", "scheduler": "DDIM"}\n'
                       '{"prompt": "a cat", "n": 2}\n')
    args = ("batch", prompts, "--model", sd15["model"], "--steps", "2", "--size", "64x64", "--seed", "3",
            "--out", tmp_path / "run", "--batch-size", "2", "--json", "-q")
    first = cli(*args)
    assert first.code == 0, first.err
    assert json.loads(first.out)["done"] == 4
    again = json.loads(cli(*args).out)
    assert (again["skipped"], again["done"]) == (4, 0)
    alone = cli("txt2img", "a red fox", "--model", sd15["model"], "--steps", "2", "--size", "64x64", "--seed", "5",
                "--out", tmp_path / "alone", "-q", "--json")
    record = json.loads(next((tmp_path / "run").glob("00000-5-*.json")).read_text())
    assert record["output"]["pixels_sha256"] == json.loads(alone.out)["images"][0]["pixels_sha256"]


def test_compare_grid_and_a_reproducible_cell(cli, sd15, tmp_path):
    result = cli("compare", "a red fox", "--model", sd15["model"], "--schedulers", "Euler,DPM++ 2M", "--steps", "2,4",
                 "--seed", "3", "--size", "64x64", "--out", tmp_path / "cmp", "--json", "-q")
    assert result.code == 0, result.err
    summary = json.loads(result.out)
    assert len(summary["cells"]) == 4 and (tmp_path / "cmp" / "compare-001" / "grid.png").is_file()  # a run's folder
    cell = next((tmp_path / "cmp" / "compare-001" / "cells").glob("*.png"))
    assert cli("reproduce", cell, "--verify", "-q").code == 0


def test_controlnet_and_ip_adapter(cli, sd15, tmp_path):
    plain = cli("txt2img", "a tower", *common(sd15["model"], tmp_path / "plain"))
    steered = cli("txt2img", "a tower", *common(sd15["model"], tmp_path / "cn", "--control", f"canny:{sd15['photo']}",
                                               "--controlnet-model", sd15["cn"]))
    assert plain.code == 0 and steered.code == 0, steered.err
    assert np.abs(pixels(tmp_path / "cn" / "0000-11.png") - pixels(tmp_path / "plain" / "0000-11.png")).max() > 0
    assert (tmp_path / "cn" / "0000-11.control.png").is_file()
    record = json.loads((tmp_path / "cn" / "0000-11.json").read_text())
    assert record["control"][0]["model"]["class"] == "ControlNetModel"
    assert cli("reproduce", tmp_path / "cn" / "0000-11.png", "--verify", "-q").code == 0

    ip = sd15["ip"]
    styled = cli("txt2img", "a tower", *common(sd15["model"], tmp_path / "ip", "--ip-adapter", sd15["photo"],
                                              "--ip-adapter-model", ip, "--image-encoder", ip / "image_encoder"))
    assert styled.code == 0, styled.err
    assert json.loads(styled.out)["images"][0]["pixels_sha256"] != json.loads(plain.out)["images"][0]["pixels_sha256"]
    again = cli("txt2img", "a tower", *common(sd15["model"], tmp_path / "plain2"))  # the adapter is unloaded again
    assert json.loads(again.out)["images"][0]["pixels_sha256"] == json.loads(plain.out)["images"][0]["pixels_sha256"]


def test_a_net_of_another_family_is_refused(cli, sd15, tmp_path, monkeypatch):
    from imagegen.testing import build_tiny_controlnet

    sdxl_net = build_tiny_controlnet(tmp_path / "sdxl-net", "sdxl")
    result = cli("txt2img", "x", *common(sd15["model"], tmp_path, "--control", f"canny:{sd15['photo']}",
                                         "--controlnet-model", sdxl_net))
    assert result.code == 2 and "a sdxl ControlNet (ControlNetModel) cannot steer a sd15 model" in result.err
    result = cli("txt2img", "x", *common(sd15["model"], tmp_path, "--control", f"canny:{sd15['photo']}",
                                         "--controlnet-model", sd15["cn"], "--preset", "sdxl"))
    assert result.code == 2 and "is a sd15 model but preset 'sdxl' is for sdxl" in result.err


def test_preset_and_listings(cli):
    shown = cli("presets", "show", "sd15", "--json")
    data = json.loads(shown.out)
    assert data["model"] == "stable-diffusion-v1-5/stable-diffusion-v1-5" and data["family"] == "sd15"
    assert data["defaults"]["size"] == "512x512"
    rows = json.loads(cli("schedulers", "--family", "sd15", "--json").out)
    assert {r["name"] for r in rows} >= {"Euler a", "DPM++ 2M Karras", "PLMS", "LMS"}
    assert not any("FlowMatch" in r["diffusers"] for r in rows)
