"""ControlNet and IP-Adapter on tiny SDXL, SD3 and Flux: txt2img, batch, compare, metadata, reproduce, bad input."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from imagegen.metadata import parse_parameters

pytestmark = pytest.mark.slow
FAMILIES = ("sdxl", "sd3", "flux")


@pytest.fixture(scope="session")
def tiny_guides(tmp_path_factory):
    """Per family: a tiny ControlNet folder, a second (different) one, and a tiny IP-Adapter folder."""
    from imagegen.testing import build_tiny_controlnet, build_tiny_ip_adapter

    root = tmp_path_factory.mktemp("guides")
    return {
        family: {
            "cn": build_tiny_controlnet(root / f"cn-{family}", family),
            "cn2": build_tiny_controlnet(root / f"cn2-{family}", family, seed=1),
            "ip": build_tiny_ip_adapter(root / f"ip-{family}", family),
        }
        for family in FAMILIES
    }


@pytest.fixture(scope="session")
def inputs(tmp_path_factory):
    """A photo-like image with a clear square (for Canny), a depth ramp and a reference image of another size."""
    root = tmp_path_factory.mktemp("inputs")
    rng = np.random.RandomState(0)
    photo = (rng.rand(96, 128, 3) * 40 + 100).astype("uint8")
    photo[24:72, 40:88] = 230
    Image.fromarray(photo).save(root / "building.jpg", quality=95)
    Image.fromarray(np.tile(np.linspace(0, 255, 64).astype("uint8"), (64, 1))).save(root / "depth.png")
    Image.fromarray((rng.rand(40, 30, 3) * 255).astype("uint8")).save(root / "style.png")
    (root / "notanimage.png").write_text("hello")
    return root


def pixels(path):
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).astype(int)


def relative(path, folder) -> str:
    """How portable metadata (the default) records an input image: relative to the image's folder."""
    return os.path.relpath(path, folder).replace(os.sep, "/")


def base(family, tiny_models, out, *extra):
    return ("txt2img", "a glass tower", "--model", tiny_models[family], "--steps", "2", "--seed", "7",
            "--size", "64x64", "--out", out, "--json", "-q", *extra)


@pytest.mark.parametrize("family", FAMILIES)
def test_controlnet_one_and_two_nets(cli, tiny_models, tiny_guides, inputs, tmp_path, family):
    guides = tiny_guides[family]
    plain = cli(*base(family, tiny_models, tmp_path / "plain"))
    assert plain.code == 0, plain.err
    one = cli(*base(family, tiny_models, tmp_path / "one", "--control", f"canny:{inputs / 'building.jpg'}",
                    "--control-scale", "0.7", "--controlnet-model", guides["cn"], "--canny-low", "50"))
    assert one.code == 0, one.err
    png = tmp_path / "one" / "0000-7.png"
    assert np.abs(pixels(png) - pixels(tmp_path / "plain" / "0000-7.png")).max() > 0, "the net steers the image"

    # The map: fitted (cover + centre crop) to 64x64, Canny edges in white on black, saved beside the image.
    control = pixels(tmp_path / "one" / "0000-7.control.png")
    assert control.shape == (64, 64, 3)
    assert set(np.unique(control)) == {0, 255} and (control == 255).mean() > 0.02

    record = json.loads((tmp_path / "one" / "0000-7.json").read_text())
    unit, = record["control"]
    assert unit["type"] == "canny" and unit["scale"] == 0.7 and (unit["start"], unit["end"]) == (0.0, 1.0)
    assert unit["preprocess"] == {"resize": "crop", "low_threshold": 50, "high_threshold": 200}
    assert unit["image"]["path"] == relative(inputs / "building.jpg", tmp_path / "one")
    assert len(unit["image"]["sha256"]) == 64
    assert unit["image"]["size"] == [128, 96]
    assert unit["model"]["id"] == guides["cn"].name and unit["model"]["local"] and len(unit["model"]["sha256"]) == 64
    assert unit["model"]["class"] == {"sdxl": "ControlNetModel", "sd3": "SD3ControlNetModel",
                                      "flux": "FluxControlNetModel"}[family]
    assert record["output"]["control_maps"] == ["0000-7.control.png"]
    assert record["model"]["pipeline_class"] in {"StableDiffusionXLPipeline", "StableDiffusion3Pipeline", "FluxPipeline"}
    text = parse_parameters(Image.open(png).text["parameters"])
    assert "Module: canny" in text["ControlNet 0"] and "Weight: 0.7" in text["ControlNet 0"]

    two = cli(*base(family, tiny_models, tmp_path / "two", "--control", f"canny:{inputs / 'building.jpg'}",
                    "--control", f"depth:{inputs / 'depth.png'}", "--control-scale", "0.7,0.4", "--control-end", "0.5",
                    "--controlnet-model", guides["cn"], "--controlnet-model", guides["cn2"]))
    assert two.code == 0, two.err
    record = json.loads((tmp_path / "two" / "0000-7.json").read_text())
    assert [u["type"] for u in record["control"]] == ["canny", "depth"]
    assert [u["scale"] for u in record["control"]] == [0.7, 0.4]
    assert [u["end"] for u in record["control"]] == [0.5, 0.5]
    assert [u["model"]["id"] for u in record["control"]] == [guides["cn"].name, guides["cn2"].name]
    assert (tmp_path / "two" / "0000-7.control-1.png").exists() and (tmp_path / "two" / "0000-7.control-2.png").exists()
    assert np.abs(pixels(tmp_path / "two" / "0000-7.png") - pixels(png)).max() > 0

    again = cli("reproduce", tmp_path / "two" / "0000-7.png", "--verify", "-q")
    assert again.code == 0, again.err


@pytest.mark.parametrize("family", FAMILIES)
def test_ip_adapter_alone_and_with_controlnet(cli, tiny_models, tiny_guides, inputs, tmp_path, family):
    guides = tiny_guides[family]
    plain = cli(*base(family, tiny_models, tmp_path / "plain", "--cfg", "4"))
    ip = cli("txt2img", "a cat, watercolor", "--model", tiny_models[family], "--steps", "2", "--seed", "7",
             "--size", "64x64", "--out", tmp_path / "ip", "--ip-adapter", inputs / "style.png", "--ip-scale", "0.6",
             "--ip-adapter-model", guides["ip"])
    assert ip.code == 0, ip.err
    record = json.loads((tmp_path / "ip" / "0000-7.json").read_text())
    adapter = record["ip_adapter"]
    assert adapter["scale"] == 0.6 and adapter["model"]["id"] == guides["ip"].name
    assert adapter["model"]["weight"] == "ip-adapter.safetensors"
    assert adapter["image_encoder"]["id"] == "image_encoder" and adapter["image_encoder"]["local"]
    assert adapter["image_encoder"]["class"] == ("SiglipVisionModel" if family == "sd3" else "CLIPVisionModelWithProjection")
    assert adapter["images"][0]["path"] == relative(inputs / "style.png", tmp_path / "ip")
    if family == "flux":  # the adapter needs true CFG: turned on and said so
        assert record["cfg"] == 4.0
        assert "IP-Adapter needs true CFG" in ip.err
    assert plain.code == 0
    # Same prompt and seed without the adapter differ (the plain run above used another prompt; rerun it here).
    bare = cli("txt2img", "a cat, watercolor", "--model", tiny_models[family], "--steps", "2", "--seed", "7",
               "--size", "64x64", "--cfg", str(record["cfg"]), "--out", tmp_path / "bare", "-q")
    assert bare.code == 0, bare.err
    assert np.abs(pixels(tmp_path / "ip" / "0000-7.png") - pixels(tmp_path / "bare" / "0000-7.png")).max() > 0

    both = cli(*base(family, tiny_models, tmp_path / "both", "--ip-adapter", inputs / "style.png",
                     "--ip-adapter-model", guides["ip"], "--control", f"canny:{inputs / 'building.jpg'}",
                     "--controlnet-model", guides["cn"]))
    assert both.code == 0, both.err
    record = json.loads((tmp_path / "both" / "0000-7.json").read_text())
    scale = {"sdxl": 0.6, "sd3": 1.0, "flux": 1.0}[family]  # the family preset's [ip_adapter] scale, else 1
    assert record["control"][0]["type"] == "canny" and record["ip_adapter"]["scale"] == scale
    text = Image.open(tmp_path / "both" / "0000-7.png").text["parameters"]
    assert f"IP-Adapter scale: {scale:g}" in text
    verified = cli("reproduce", tmp_path / "both" / "0000-7.png", "--verify", "-q")
    assert verified.code == 0, verified.err


def test_several_reference_images(cli, tiny_models, tiny_guides, inputs, tmp_path):
    result = cli(*base("sdxl", tiny_models, tmp_path / "o", "--ip-adapter", inputs / "style.png",
                       "--ip-adapter", inputs / "building.jpg", "--ip-adapter-model", tiny_guides["sdxl"]["ip"]))
    assert result.code == 0, result.err
    record = json.loads((tmp_path / "o" / "0000-7.json").read_text())
    assert len(record["ip_adapter"]["images"]) == 2


def test_controlnet_pipeline_shares_the_base_weights(tiny_models, tiny_guides, inputs):
    """from_pipe: the ControlNet pipeline holds the very module objects of the loaded one; only the net is new."""
    import torch

    from imagegen.loading import load_model
    from imagegen.session import pipeline_for
    from imagegen.request import Request
    from imagegen.resolve import resolve

    req = resolve(Request(prompt="x", model=str(tiny_models["sdxl"]), control=(("canny", str(inputs / "building.jpg")),),
                          controlnet_model=(str(tiny_guides["sdxl"]["cn"]),), size=(64, 64)))
    loaded = load_model(req.model, family=req.family, revision=None, variant=None, dtype="float32", device="cpu")
    plain = pipeline_for(loaded, resolve(Request(prompt="x", model=str(tiny_models["sdxl"]))))
    controlled = pipeline_for(loaded, req)
    assert plain is loaded.pipe and controlled is not plain
    for name in ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"):
        assert getattr(controlled, name) is getattr(plain, name), name

    def storages(*modules):
        return {p.untyped_storage().data_ptr(): p.numel() for m in modules for p in m.parameters()}

    base_modules = [c for c in plain.components.values() if isinstance(c, torch.nn.Module)]
    both = storages(*base_modules, *[c for c in controlled.components.values() if isinstance(c, torch.nn.Module)])
    assert sum(both.values()) == sum(storages(*base_modules).values()) + sum(storages(controlled.controlnet).values())
    assert pipeline_for(loaded, req) is controlled  # built once, reused


def test_batch_mixes_plain_controlnet_and_ip_adapter_lines(cli, tiny_models, tiny_guides, inputs, tmp_path):
    folder = tmp_path / "job"
    (folder / "maps").mkdir(parents=True)
    Image.open(inputs / "building.jpg").save(folder / "maps" / "a.png")
    Image.open(inputs / "style.png").save(folder / "style.png")
    lines = [
        {"prompt": "plain"},
        {"prompt": "edges", "control": "canny:maps/a.png", "control_scale": 0.8, "n": 3},
        {"prompt": "edges and style", "control": ["canny:maps/a.png"], "ip_adapter": "style.png", "ip_scale": 0.5},
    ]
    (folder / "p.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    out = tmp_path / "out"
    args = ("batch", folder / "p.jsonl", "--model", tiny_models["sd3"], "--steps", "2", "--size", "64x64", "--seed", "3",
            "--controlnet-model", tiny_guides["sd3"]["cn"], "--ip-adapter-model", tiny_guides["sd3"]["ip"], "--out", out)
    first = cli(*args, "--json", "-q")
    assert first.code == 0, first.err
    assert json.loads(first.out)["done"] == 5
    maps = sorted(p.name for p in out.glob("*.control.png"))
    assert len(maps) == 4 and not (out / "00000-").exists()
    records = {p.name: json.loads(p.read_text()) for p in out.glob("0000*.json")}
    edges = [r for r in records.values() if r["prompt"] == "edges"]
    assert {r["control"][0]["scale"] for r in edges} == {0.8}
    assert edges[0]["control"][0]["image"]["path"] == "../job/maps/a.png"  # relative to the prompt file, recorded
    # relative to the image's folder
    styled, = [r for r in records.values() if r["prompt"] == "edges and style"]
    assert styled["ip_adapter"]["scale"] == 0.5 and "control" in styled
    plain, = [r for r in records.values() if r["prompt"] == "plain"]
    assert "control" not in plain and "ip_adapter" not in plain

    # Batch size does not change a ControlNet image (SD3 VAE-encodes the map: its noise is seeded per image).
    single = cli(*args[:-1], tmp_path / "single", "--batch-size", "1", "--json", "-q")
    assert single.code == 0, single.err
    for name in (p.name for p in out.glob("*-edges.png")):
        assert np.array_equal(pixels(out / name), pixels(tmp_path / "single" / name)), name

    rerun = cli(*args, "--json", "-q")
    assert rerun.code == 0 and json.loads(rerun.out)["skipped"] == 5
    styled_png = next(out.glob("*-edges-and-style.png"))
    assert cli("reproduce", styled_png, "--verify", "-q").code == 0

    # A changed map is a different image: the rerun makes the lines that use it again.
    Image.open(inputs / "depth.png").convert("RGB").save(folder / "maps" / "a.png")
    changed = cli(*args, "--json", "-q")
    assert changed.code == 0, changed.err
    assert json.loads(changed.out)["done"] == 4


def test_compare_with_controlnet_and_ip_adapter(cli, tiny_models, tiny_guides, inputs, tmp_path):
    result = cli("compare", "a tower", "--model", tiny_models["flux"], "--size", "64x64", "--steps", "1,2",
                 "--schedulers", "Euler", "--control", f"depth:{inputs / 'depth.png'}", "--controlnet-model",
                 tiny_guides["flux"]["cn"], "--ip-adapter", inputs / "style.png", "--ip-adapter-model",
                 tiny_guides["flux"]["ip"], "--out", tmp_path / "cmp", "--json", "-q")
    assert result.code == 0, result.err
    cells = tmp_path / "cmp" / "compare-001" / "cells"
    assert sorted(p.name for p in cells.glob("*.control.png")) == ["steps-1.control.png", "steps-2.control.png"]
    record = json.loads((cells / "steps-2.json").read_text())
    assert record["control"][0]["type"] == "depth" and record["ip_adapter"]["images"]
    assert cli("reproduce", cells / "steps-2.png", "--verify", "-q").code == 0


@pytest.fixture
def no_loading(monkeypatch):
    """Bad input must be refused before any weights load."""
    import imagegen.loading

    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded")

    monkeypatch.setattr(imagegen.loading, "load_model", refuse)


@pytest.mark.parametrize("args, message", [
    (("--control", "sobel:{img}"), "--control: unknown control type 'sobel' in 'sobel:"),
    (("--control", "canny:{dir}/missing.png", "--controlnet-model", "{cn}"), "missing.png: no such file"),
    (("--control", "canny:{dir}/notanimage.png", "--controlnet-model", "{cn}"), "notanimage.png: not an image file PIL can read"),
    (("--control", "canny:{img}", "--control", "depth:{dir}/depth.png", "--control-scale", "0.5,0.6,0.7",
      "--controlnet-model", "{cn}", "--controlnet-model", "{cn}"), "--control-scale: 3 values for 2 ControlNets"),
    (("--control", "canny:{img}", "--controlnet-model", "{cn}", "--controlnet-model", "{cn}"),
     "--controlnet-model: 2 models for 1 --control inputs"),
    (("--control", "raw:{img}"), "a raw map needs --controlnet-model"),
    (("--control", "canny:{img}", "--controlnet-model", "{flux_cn}"), "a flux ControlNet (FluxControlNetModel) cannot steer a sdxl model"),
    (("--control", "canny:{img}", "--control-start", "0.8", "--control-end", "0.2", "--controlnet-model", "{cn}"),
     "--control-start 0.8 must be below --control-end 0.2"),
    (("--control", "canny:{img}"), "has no canny ControlNet for sdxl (it has: none)"),
    (("--control-scale", "0.5"), "--control-scale needs --control TYPE:IMAGE"),
    (("--ip-scale", "0.5"), "--ip-scale needs --ip-adapter IMAGE"),
    (("--ip-adapter", "{dir}/missing.png", "--ip-adapter-model", "{ip}"), "--ip-adapter {dir}/missing.png: no such file"),
    (("--ip-adapter", "{img}", "--ip-adapter-model", "{ip}", "--ip-adapter-weight", "ip-adapter.bin"),
     "no such file"),
    (("--ip-adapter", "{img}"), "preset 'demo' has no IP-Adapter"),
])
def test_bad_input_is_one_line_before_loading(cli, no_loading, tiny_guides, inputs, args, message):
    values = {"img": inputs / "building.jpg", "dir": inputs, "cn": tiny_guides["sdxl"]["cn"],
              "flux_cn": tiny_guides["flux"]["cn"], "ip": tiny_guides["sdxl"]["ip"]}
    args = [a.format(**values) for a in args]
    result = cli("txt2img", "x", "--preset", "demo", *args)
    assert result.code == 2, result.err
    line, = result.err.strip().splitlines()
    assert message.format(**values) in line


def test_family_capabilities_are_checked_before_loading(cli, no_loading, tiny_models, tiny_guides, inputs):
    result = cli("txt2img", "x", "--model", tiny_models["sd3"], "--ip-adapter", inputs / "style.png",
                 "--ip-adapter", inputs / "building.jpg", "--ip-adapter-model", tiny_guides["sd3"]["ip"])
    assert result.code == 2 and "sd3's IP-Adapter takes 1 reference image; got 2" in result.err
    result = cli("txt2img", "x", "--preset", "sd3", "--ip-adapter", inputs / "style.png")
    assert result.code == 2 and "the sd3 presets with one: sd3.5-large" in result.err


def test_nets_with_a_foreign_or_broken_config_are_refused(cli, no_loading, tiny_guides, inputs, tmp_path):
    """A UNet net without SDXL's size-and-crop embedding (an SD 1.x net) cannot steer SDXL; a config.json that is not
    a JSON object is one line, not a traceback."""
    import shutil

    for name, edit in (("sd1-net", lambda c: {**c, "addition_embed_type": None}), ("array-net", lambda c: [c])):
        net = tmp_path / name
        shutil.copytree(tiny_guides["sdxl"]["cn"], net)
        config = json.loads((net / "config.json").read_text())
        (net / "config.json").write_text(json.dumps(edit(config)))
        result = cli("txt2img", "x", "--preset", "demo", "--control", f"canny:{inputs / 'building.jpg'}",
                     "--controlnet-model", net)
        assert result.code == 2 and result.err.count("\n") == 1, result.err
        if name == "sd1-net":
            assert "cannot steer a sdxl model" in result.err or "is not a ControlNet imagegen runs" in result.err
        else:
            assert "config.json is not readable JSON" in result.err


def test_pickle_adapters_and_nets_are_refused(cli, no_loading, tiny_guides, inputs, tmp_path):
    import shutil

    import torch
    from safetensors.torch import load_file

    adapter = tmp_path / "pickle-ip"
    shutil.copytree(tiny_guides["sdxl"]["ip"] / "image_encoder", adapter / "image_encoder")
    torch.save(load_file(tiny_guides["sdxl"]["ip"] / "ip-adapter.safetensors"), adapter / "ip-adapter.bin")
    result = cli("txt2img", "x", "--preset", "demo", "--ip-adapter", inputs / "style.png", "--ip-adapter-model", adapter)
    assert result.code == 2
    assert "'ip-adapter.bin' is not a .safetensors file; pickle weights" in result.err
    assert "arbitrary code" in result.err
    result = cli("txt2img", "x", "--preset", "sdxl", "--ip-adapter", inputs / "style.png",
                 "--ip-adapter-weight", "ip-adapter_sdxl.bin")
    assert result.code == 2 and "pickle weights" in result.err

    from imagegen.testing import build_tiny_controlnet

    net = build_tiny_controlnet(tmp_path / "pickle-cn", "sdxl", safetensors=False)
    assert not list(net.glob("*.safetensors"))
    result = cli("txt2img", "x", "--preset", "demo", "--control", f"canny:{inputs / 'style.png'}",
                 "--controlnet-model", net)
    assert result.code == 2 and "only pickle .bin weights" in result.err


def test_batch_reports_every_bad_control_line(cli, no_loading, tiny_guides, inputs, tmp_path):
    path = tmp_path / "p.csv"
    path.write_text(
        "prompt,control,control_scale\n"
        f"ok,canny:{inputs / 'building.jpg'},0.5\n"
        "missing,canny:nope.png,\n"
        f"two scales,canny:{inputs / 'building.jpg'},0.5;0.6\n"
        f"bad type,edge:{inputs / 'building.jpg'},\n"
    )
    result = cli("batch", path, "--preset", "demo", "--controlnet-model", tiny_guides["sdxl"]["cn"])
    assert result.code == 2
    lines = result.err.strip().splitlines()
    assert lines[0].startswith(f"{path}:3: control canny:") and "nope.png: no such file" in lines[0]
    assert lines[1].startswith(f"{path}:4: control_scale: 2 values for 1 ControlNet")
    assert lines[2].startswith(f"{path}:5: control: unknown control type 'edge'")
    assert "3 invalid lines; nothing was run" in lines[-1]
