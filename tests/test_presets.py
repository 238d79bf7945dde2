"""Presets: the shipped ones are valid; user presets and paths work; every mistake names the file and the key."""

from __future__ import annotations

import json

import pytest

from imagegen import UsageError, list_presets, load_preset

SHIPPED = {"sdxl", "sd3", "sd3.5-medium", "sd3.5-large", "sd3.5-large-turbo", "flux-schnell", "flux-dev", "sd2",
           "sd15-inpaint", "sdxl-inpaint"}


def test_shipped_presets_are_valid_and_real():
    presets = {p.name: p for p in list_presets()}
    assert SHIPPED <= set(presets)
    assert presets["sdxl"].model == "stabilityai/stable-diffusion-xl-base-1.0"
    assert presets["sdxl"].variant == "fp16"
    assert presets["flux-schnell"].model == "black-forest-labs/FLUX.1-schnell"
    assert presets["flux-schnell"].defaults.steps == 4
    assert presets["sd3.5-large"].family.name == "sd3"
    turbo = presets["sd3.5-large-turbo"]  # the model card: 4 steps, guidance_scale 0.0 (CFG off)
    assert (turbo.model, turbo.family.name, turbo.defaults.steps, turbo.defaults.cfg) == (
        "stabilityai/stable-diffusion-3.5-large-turbo", "sd3", 4, 1.0)
    assert presets["sdxl"].tables["controlnet"] == {"canny": "diffusers/controlnet-canny-sdxl-1.0",
                                           "depth": "diffusers/controlnet-depth-sdxl-1.0"}
    assert presets["sdxl"].tables["ip_adapter"]["model"] == "h94/IP-Adapter"
    assert presets["sdxl"].tables["ip_adapter"]["weight"].endswith(".safetensors")
    assert presets["sd3.5-large"].tables["ip_adapter"]["image_encoder"] == "google/siglip-so400m-patch14-384"
    assert presets["flux-schnell"].tables["ip_adapter"]["model"] == "XLabs-AI/flux-ip-adapter"
    assert presets["flux-schnell"].tables["controlnet"]["canny"] == "InstantX/FLUX.1-dev-Controlnet-Canny"
    assert presets["sd3"].tables["controlnet"]["depth"] == "InstantX/SD3-Controlnet-Depth"
    for p in presets.values():
        assert p.schedulers, f"{p.name} lists its schedulers"
        assert p.defaults.scheduler and p.defaults.steps and p.defaults.size


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


GOOD = """
family = "sdxl"
model = "someone/my-sdxl"
[defaults]
steps = 20
cfg = 4.0
size = "832x1216"
scheduler = "euler_ancestral"
"""


def test_user_preset_in_imagegen_home_is_listed_and_overrides(isolated_home):
    write(isolated_home / "presets" / "mine.toml", GOOD)
    write(isolated_home / "presets" / "sdxl.toml", GOOD)  # same name as a built-in: the user's wins
    assert load_preset("mine").defaults.scheduler == "Euler a"
    assert load_preset("sdxl").model == "someone/my-sdxl"


def test_preset_from_path(tmp_path):
    path = write(tmp_path / "x" / "custom.toml", GOOD)
    preset = load_preset(str(path))
    assert preset.name == "custom" and preset.defaults.size == (832, 1216)


@pytest.mark.parametrize(
    "text, message",
    [
        (GOOD + "stepz = 3\n", "defaults: unknown key 'stepz' (did you mean 'steps'?)"),
        (GOOD.replace("family", "famly"), "unknown key 'famly' (did you mean 'family'?)"),
        (GOOD.replace("steps = 20", "steps = 'twenty'"), "defaults: steps: must be an integer"),
        (GOOD.replace("steps = 20", "steps = 0"), "defaults: steps: must be from 1 to 1000"),
        (GOOD.replace('"832x1216"', '"big"'), "defaults: size: must be WIDTHxHEIGHT"),
        (GOOD.replace('"sdxl"', '"sd4"'), "family: unknown family 'sd4'"),
        (GOOD.replace("euler_ancestral", "euler_wrong"), "defaults.scheduler: unknown scheduler 'euler_wrong'"),
        (GOOD.replace('model = "someone/my-sdxl"', ""), "missing key 'model'"),
        (GOOD.replace("cfg = 4.0", "cfg = true"), "defaults: cfg: must be a number"),
        ("family = \n", "not valid TOML"),
        ('schedulers = ["DPM++ 2M Karras"]\n' + GOOD, "list samplers without a schedule type"),
        ('schedulers = ["Euler"]\n' + GOOD, "'Euler a' is not in this preset's schedulers list"),
        (GOOD + '\n[controlnet]\nsobel = "a/b"\n', "controlnet: unknown control type 'sobel'"),
        (GOOD + '\n[controlnet]\nraw = "a/b"\n', "controlnet: unknown control type 'raw'"),
        (GOOD + '\n[ip_adapter]\nmodel = "a/b"\nimage_encodr = "c/d"\n', "ip_adapter: unknown key 'image_encodr' (did you mean 'image_encoder'?)"),
        (GOOD + '\n[ip_adapter]\nmodel = "a/b"\nimage_encoder = "c/d"\nweight = "ip.bin"\n', "ip_adapter.weight: 'ip.bin' is not a .safetensors file"),
        (GOOD + '\n[ip_adapter]\nmodel = "a/b"\n', "ip_adapter: missing key 'image_encoder'"),
    ],
)
def test_bad_preset_names_file_and_key(tmp_path, text, message):
    path = write(tmp_path / "bad.toml", text)
    with pytest.raises(UsageError) as info:
        load_preset(str(path))
    assert str(path) in str(info.value)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_flow_preset_refuses_epsilon_scheduler(tmp_path):
    text = GOOD.replace('"sdxl"', '"sd3"').replace("euler_ancestral", "EulerDiscreteScheduler")
    with pytest.raises(UsageError, match="runs but draws wrong images; for sd3: Euler"):
        load_preset(str(write(tmp_path / "sd3bad.toml", text)))


def test_unknown_preset_lists_available():
    with pytest.raises(UsageError) as info:
        load_preset("sdxl-turbo-9000")
    message = str(info.value)
    assert "unknown preset 'sdxl-turbo-9000'" in message
    for name in SHIPPED:
        assert name in message


def test_presets_cli(cli):
    listed = cli("presets", "list", "--json")
    assert listed.code == 0
    import json

    names = {p["name"] for p in json.loads(listed.out)}
    assert SHIPPED <= names
    shown = cli("presets", "show", "sd3")
    assert shown.code == 0 and "stabilityai/stable-diffusion-3-medium-diffusers" in shown.out
    missing = cli("presets", "show", "nope")
    assert missing.code == 2 and missing.err.count("\n") == 1 and "available:" in missing.err


def test_a_broken_user_preset_is_reported_and_the_rest_listed(cli, isolated_home):
    presets = isolated_home / "presets"
    write(presets / "mine.toml", GOOD)
    write(presets / "broken.toml", "family = \n")
    write(presets / "typo.toml", GOOD.replace("family", "famly"))
    for args in (("presets", "list"), ("presets", "list", "--json")):
        result = cli(*args)
        assert result.code == 0, result.err
        names = ({p["name"] for p in json.loads(result.out)} if "--json" in args
                 else {line.split()[0] for line in result.out.splitlines()[1:]})
        assert {"mine", "sdxl"} <= names and not names & {"broken", "typo"}
        lines = result.err.splitlines()
        assert len(lines) == 2 and "Traceback" not in result.err
        assert lines[0].startswith(f"imagegen: warning: skipped {presets / 'broken.toml'}: not valid TOML")
        assert lines[1] == (f"imagegen: warning: skipped {presets / 'typo.toml'}: unknown key 'famly' "
                            "(did you mean 'family'?); valid keys: controlnet, defaults, description, dtype, family, "
                            "ip_adapter, model, modes, name, pipelines, revision, schedulers, variant")
    used = cli("txt2img", "x", "--preset", "broken", "--seed", "1")
    assert used.code == 2 and used.err.count("\n") == 1
    assert used.err.startswith(f"imagegen: error: {presets / 'broken.toml'}: not valid TOML")
    assert cli("presets", "show", "typo").code == 2


def test_presets_show_includes_the_adapter_tables(cli):
    shown = cli("presets", "show", "sdxl")
    assert shown.code == 0
    rows = dict(line.split(None, 1) for line in shown.out.splitlines())
    assert rows["controlnet"] == "canny=diffusers/controlnet-canny-sdxl-1.0, depth=diffusers/controlnet-depth-sdxl-1.0"
    assert rows["ip_adapter"].startswith("model=h94/IP-Adapter, ")

    data = json.loads(cli("presets", "show", "sdxl", "--json").out)
    assert data["controlnet"]["depth"] == "diffusers/controlnet-depth-sdxl-1.0"
    assert data["ip_adapter"]["weight"].endswith(".safetensors")


@pytest.mark.slow
def test_the_turbo_preset_runs_an_sd3_model_with_cfg_off(cli, tiny_models, tmp_path):
    import json

    result = cli("txt2img", "a fox", "--preset", "sd3.5-large-turbo", "--model", tiny_models["sd3"], "--size",
                 "64x64", "--seed", "3", "-o", tmp_path, "--json")
    assert result.code == 0, result.err
    record = json.loads(open(json.loads(result.out)["images"][0]["sidecar"]).read())
    assert (record["steps"], record["cfg"], record["model"]["preset"]) == (4, 1.0, "sd3.5-large-turbo")
