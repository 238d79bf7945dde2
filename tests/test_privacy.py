"""Metadata privacy and replay: no absolute path in any chunk, sidecar or manifest by default (`--metadata full`
keeps them), local weights named by name + sha256 and found again by hash, hostile sidecars refused in one line,
and PNGs with only A1111 parameters replayed on a model the user names."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from imagegen.hashes import find_weights, weights_sha256
from imagegen.metadata import a1111_layer
from imagegen.portable import portable_path, private_text


@pytest.fixture(scope="module")
def guides(tmp_path_factory):
    """A tiny SDXL model, ControlNet and IP-Adapter, each a local folder."""
    from imagegen.testing import build_tiny_controlnet, build_tiny_ip_adapter, build_tiny_sdxl

    root = tmp_path_factory.mktemp("weights")
    return {"model": build_tiny_sdxl(root / "tiny-sdxl"), "cn": build_tiny_controlnet(root / "cn", "sdxl"),
            "ip": build_tiny_ip_adapter(root / "ip", "sdxl"), "root": tmp_path_factory.getbasetemp()}


@pytest.fixture
def no_loading(monkeypatch):
    """Bad input must be refused before any weights load."""
    import imagegen.loading

    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded")

    monkeypatch.setattr(imagegen.loading, "load_model", refuse)


def _inputs(tmp_path: Path) -> None:
    """Input images in ./inputs of the working folder (each test runs in its tmp_path), named relatively."""
    (tmp_path / "inputs").mkdir()
    rng = np.random.RandomState(0)
    photo = (rng.rand(64, 64, 3) * 40 + 100).astype("uint8")
    photo[16:48, 16:48] = 230
    Image.fromarray(photo).save(tmp_path / "inputs" / "edges.png")
    Image.fromarray((rng.rand(40, 30, 3) * 255).astype("uint8")).save(tmp_path / "inputs" / "style.png")


def _metadata_texts(folder: Path) -> dict[str, str]:
    """Every PNG text chunk, sidecar and manifest under a folder, by file."""
    texts = {}
    for path in folder.rglob("*"):
        if path.suffix == ".png":
            with Image.open(path) as im:
                texts[str(path)] = "\n".join(getattr(im, "text", {}).values())
        elif path.suffix in (".json", ".jsonl"):
            texts[str(path)] = path.read_text()
    return texts


def _run_all(cli, guides, tmp_path: Path, out: Path, *extra: str) -> None:
    common = ("--model", guides["model"], "--size", "64x64", "--controlnet-model", guides["cn"],
              "--ip-adapter-model", guides["ip"], "-q", *extra)
    one = cli("txt2img", "a tower", "--steps", "2", "--seed", "5", "--control", "canny:inputs/edges.png",
              "--ip-adapter", "inputs/style.png", "--out", out / "txt", *common)
    assert one.code == 0, one.err
    lines = [{"prompt": "edges", "control": "canny:inputs/edges.png"},
             {"prompt": "style", "ip_adapter": "inputs/style.png"}]
    (tmp_path / "p.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    batch = cli("batch", tmp_path / "p.jsonl", "--steps", "2", "--seed", "3", "--out", out / "batch", *common)
    assert batch.code == 0, batch.err
    compare = cli("compare", "a tower", "--steps", "1,2", "--schedulers", "Euler", "--seeds", "1", "--control",
                  "depth:inputs/edges.png", "--ip-adapter", "inputs/style.png", "--out", out / "cmp", *common)
    assert compare.code == 0, compare.err


@pytest.mark.slow
def test_no_absolute_paths_by_default_and_full_keeps_them(cli, guides, tmp_path):
    _inputs(tmp_path)
    _run_all(cli, guides, tmp_path, tmp_path / "portable")
    texts = _metadata_texts(tmp_path / "portable")
    assert len([t for t in texts if t.endswith(".json")]) >= 5 and any(t.endswith("manifest.jsonl") for t in texts)
    for where, text in texts.items():
        for secret in (str(guides["root"]), str(tmp_path), str(Path.home())):
            assert secret not in text, (where, secret)
    record = json.loads((tmp_path / "portable" / "txt" / "0000-5.json").read_text())
    assert record["model"]["id"] == "tiny-sdxl" and record["model"]["sha256"] == weights_sha256(guides["model"])
    assert record["control"][0]["image"]["path"] == "../../inputs/edges.png"
    assert record["control"][0]["model"] == {**record["control"][0]["model"], "id": "cn", "local": True}
    assert record["ip_adapter"]["images"][0]["path"] == "../../inputs/style.png"
    assert record["ip_adapter"]["image_encoder"]["id"] == "image_encoder"
    with Image.open(tmp_path / "portable" / "txt" / "0000-5.png") as im:
        assert f"Model: tiny-sdxl, Model hash: {record['model']['sha256'][:10]}" in im.text["parameters"]
    manifest = (tmp_path / "portable" / "batch" / "manifest.jsonl").read_text()
    assert '"source": "../../p.jsonl"' in manifest

    _run_all(cli, guides, tmp_path, tmp_path / "full", "--metadata", "full")
    full = json.loads((tmp_path / "full" / "txt" / "0000-5.json").read_text())
    assert full["model"]["id"] == str(guides["model"]) and full["model"]["sha256"] == record["model"]["sha256"]
    assert full["control"][0]["image"]["path"] == str(tmp_path / "inputs" / "edges.png")
    assert full["ip_adapter"]["model"]["id"] == str(guides["ip"])
    assert str(tmp_path / "p.jsonl") in (tmp_path / "full" / "batch" / "manifest.jsonl").read_text()
    assert all(str(guides["root"]) in json.dumps(json.loads(t)) for w, t in _metadata_texts(tmp_path / "full").items()
               if w.endswith(".json") and "results" not in w)

    # Portable records replay here: folders are found again by their sha256, inputs relative to the record.
    for png in (tmp_path / "portable" / "txt" / "0000-5.png", next((tmp_path / "portable" / "batch").glob("*.png")),
                tmp_path / "portable" / "cmp" / "compare-001" / "cells" / "steps-2.png"):
        again = cli("reproduce", png, "--verify", "-q")
        assert again.code == 0, (png, again.err)


@pytest.mark.slow
def test_reproduce_verify_with_a_moved_model_checks_its_hash(cli, guides, tmp_path, monkeypatch):
    out = tmp_path / "o"
    made = cli("txt2img", "a fox", "--model", guides["model"], "--steps", "2", "--seed", "9", "--size", "64x64",
               "--out", out, "-q")
    assert made.code == 0, made.err
    png = out / "0000-9.png"
    moved = tmp_path / "elsewhere" / "renamed"
    shutil.copytree(guides["model"], moved)
    monkeypatch.setenv("IMAGEGEN_HOME", str(tmp_path / "another-machine"))  # no cache that knows where it is
    lost = cli("reproduce", png, "--verify", "-q")
    assert lost.code == 2 and lost.err.count("\n") == 1
    assert "the recorded model 'tiny-sdxl' is a local folder not found on this machine" in lost.err
    assert "pass --model PATH" in lost.err
    ok = cli("reproduce", png, "--verify", "--model", moved, "-q")
    assert ok.code == 0, ok.err

    config = moved / "scheduler" / "scheduler_config.json"
    config.write_text(config.read_text() + " ")  # the same settings, other bytes: other weights as far as a hash knows
    differs = cli("reproduce", png, "--verify", "--model", moved, "-q")
    assert differs.code == 2 and differs.err.count("\n") == 1 and "differs from the recorded one" in differs.err
    assert "Traceback" not in differs.err
    overridden = cli("reproduce", png, "--verify", "--steps", "3")
    assert overridden.code == 2 and "drop the recipe overrides" in overridden.err


def test_weights_hash_is_cached_and_finds_the_folder(tmp_path):
    folder = tmp_path / "w"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.safetensors").write_bytes(b"a" * 10)
    (folder / "sub" / "b.json").write_text("{}")
    (folder / ".cache").mkdir()
    (folder / ".cache" / "junk").write_text("x")
    sha = weights_sha256(folder)
    (folder / ".hidden").write_text("ignored")
    assert weights_sha256(folder) == sha and find_weights(sha) == folder.resolve()
    (folder / "sub" / "b.json").write_text('{"x": 1}')
    assert weights_sha256(folder) != sha and find_weights(sha) is None
    cache = json.loads((tmp_path / "imagegen-home" / "cache" / "sha256.json").read_text())
    assert any(key.startswith(str(folder.resolve() / "a.safetensors")) for key in cache)


def test_portable_paths_never_spell_out_home_or_root(tmp_path):
    out = tmp_path / "out"
    assert portable_path(str(tmp_path / "in" / "a.png"), out) == "../in/a.png"
    assert portable_path(str(Path.home().parent / "someone" / "x.png"), out) in ("x.png", "../someone/x.png")
    assert portable_path("/x.png", out) == "x.png"
    assert portable_path("rel/x.png", out) == "rel/x.png"
    error = f"RunError: --model {Path.home() / 'models' / 'x'}: cannot load this folder"
    assert private_text(error, "portable") == "RunError: --model ~/models/x: cannot load this folder"
    assert private_text(error, "full") == error


# ---- hostile sidecars: one line naming the file and key, exit 2, nothing written, no weights loaded


@pytest.fixture(scope="module")
def demo_image(tmp_path_factory):
    from conftest import run_cli

    out = tmp_path_factory.mktemp("demo")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("IMAGEGEN_HOME", str(out / "home"))
        made = run_cli("txt2img", "a red circle", "--preset", "demo", "--seed", "1", "--steps", "2", "--out", out,
                       "-q")
    assert made.code == 0, made.err
    record = json.loads((out / "0000-1.json").read_text())
    return record, out / "0000-1.png"


def _edit(record: dict, path: str, value) -> dict:
    record = json.loads(json.dumps(record))
    *outer, last = path.split(".")
    target = record
    for key in outer:
        target = target[int(key)] if isinstance(target, list) else target.setdefault(key, {})
    if value is _DROP:
        target.pop(last, None)
    else:
        target[last] = value
    return record


_DROP = object()
_UNIT = {"type": "canny", "image": {"path": "e.png", "sha256": "0" * 64}, "preprocess": {}, "model": {"id": "a/b"},
         "scale": 1, "start": 0, "end": 1}
_IP = {"images": [{"path": "s.png", "sha256": "0" * 64}], "scale": 1, "model": {"id": "a/b", "weight": "w.safetensors"},
       "image_encoder": {"id": "a/c"}}
HOSTILE = [
    ("output.file", 5, "'output.file' must be a file name"),
    ("output.file", "..", "'output.file' must be a file name"),
    ("output.file", "../../x.png", "'output.file' must be a file name"),
    ("output.file", "/etc/passwd", "'output.file' must be a file name"),
    ("output.file", "a\0b.png", "'output.file' must be a file name"),
    ("output", "x.png", "'output' must be an object"),
    ("model", "builtin:demo", "'model' has the wrong type (str): expected an object"),
    ("model.id", 5, "'model.id' has the wrong type (int): expected a string"),
    ("model.id", _DROP, "lacks model.id"),
    ("model.revision", 3, "'model.revision' has the wrong type"),
    ("model.preset", ["demo"], "'model.preset' has the wrong type (list)"),
    ("model.local", "yes", "'model.local' has the wrong type (str): expected true or false or null"),
    ("seed", "42", "'seed' has the wrong type (str): expected an integer"),
    ("seed", -5, "'seed' must be from 0 to"),
    ("seed", 2**64, "'seed' must be from 0 to"),
    ("seed", 1.5, "'seed' has the wrong type (float)"),
    ("steps", 0, "steps: must be from 1 to 1000"),
    ("steps", True, "'steps' has the wrong type (bool)"),
    ("width", -64, "size: must be from 16"),
    ("height", "64", "'height' has the wrong type (str)"),
    ("cfg", "7", "'cfg' has the wrong type (str): expected a number"),
    ("cfg", None, "'cfg' has the wrong type (NoneType)"),
    ("guidance", "x", "'guidance' has the wrong type (str)"),
    ("prompt", None, "'prompt' has the wrong type"),
    ("prompt", _DROP, "lacks prompt"),
    ("negative", 3, "'negative' has the wrong type (int)"),
    ("scheduler", "Euler", "'scheduler' has the wrong type (str): expected an object"),
    ("scheduler.name", 5, "'scheduler.name' has the wrong type (int)"),
    ("runtime", [], "'runtime' has the wrong type (list)"),
    ("runtime.device", "gpu9", "device: must be auto, cpu"),
    ("schema", _DROP, "schema None is not supported"),
    ("control", {"type": "canny"}, "'control' has the wrong type (dict): expected a non-empty list"),
    ("control", [5], "'control[0]' has the wrong type (int): expected an object"),
    ("control", [{k: v for k, v in _UNIT.items() if k != "image"}], "lacks control[0].image"),
    ("control", [{**_UNIT, "image": {"path": 5, "sha256": "0"}}], "'control[0].image.path' has the wrong type"),
    ("control", [{**_UNIT, "scale": "1"}], "'control[0].scale' has the wrong type (str): expected a number"),
    ("control", [{**_UNIT, "model": "a/b"}], "'control[0].model' has the wrong type (str)"),
    ("control", [{**_UNIT, "preprocess": {"low_threshold": "1"}}], "'control[0].preprocess.low_threshold'"),
    ("ip_adapter", "x", "'ip_adapter' has the wrong type (str): expected an object"),
    ("ip_adapter", {**_IP, "images": "s.png"}, "'ip_adapter.images' has the wrong type (str)"),
    ("ip_adapter", {**_IP, "images": [{"path": "s.png"}]}, "lacks ip_adapter.images[0].sha256"),
    ("ip_adapter", {**_IP, "model": {"id": "a/b"}}, "lacks ip_adapter.model.weight"),
    ("ip_adapter", {**_IP, "image_encoder": {"id": None}}, "'ip_adapter.image_encoder.id' has the wrong type"),
]


@pytest.mark.parametrize("key, value, message", HOSTILE, ids=[f"{k}={'<dropped>' if v is _DROP else repr(v)}"[:40] for k, v, _ in HOSTILE])
def test_hostile_sidecar_edits_are_one_line(cli, no_loading, demo_image, tmp_path, key, value, message):
    record, png = demo_image
    sidecar = tmp_path / "edited.json"
    sidecar.write_text(json.dumps(_edit(record, key, value)))
    shutil.copy(png, tmp_path / "0000-1.png")
    before = sorted(tmp_path.iterdir())
    result = cli("reproduce", sidecar, "-q")
    assert result.code == 2, result.err
    assert result.err.count("\n") == 1 and "Traceback" not in result.err, result.err
    assert str(sidecar) in result.err and message in result.err, result.err
    assert sorted(tmp_path.iterdir()) == before  # nothing written


def test_a_record_that_is_not_an_object_is_one_line(cli, no_loading, tmp_path):
    (tmp_path / "x.json").write_text("[1, 2]")
    result = cli("reproduce", tmp_path / "x.json")
    assert result.code == 2 and result.err.count("\n") == 1 and "metadata is not a JSON object" in result.err


# ---- A1111 parameters only


def _a1111_png(path: Path, text: str, pixels=None) -> Path:
    info = PngInfo()
    info.add_text("parameters", text)
    image = Image.fromarray(pixels) if pixels is not None else Image.new("RGB", (64, 64))
    image.save(path, pnginfo=info)
    return path


A1111_TEXT = ("a fox in the snow\nNegative prompt: blurry\nSteps: 2, Sampler: {sampler}, CFG scale: 6, Seed: 11, "
              "Size: 64x64, Model hash: 0123456789, Model: foo, Version: v1.10.1")


@pytest.mark.parametrize("sampler, scheduler", [
    ("DPM++ 2M, Schedule type: Karras", "DPM++ 2M Karras"),
    ("DPM++ 2M Karras", "DPM++ 2M Karras"),
    ("Euler a, Schedule type: Automatic", "Euler a"),
    ("Euler, Schedule type: Normal", "Euler Normal"),
])
def test_a1111_text_as_a_replay_layer(sampler, scheduler):
    layer, ignored = a1111_layer(A1111_TEXT.format(sampler=sampler), "x.png")
    assert (layer.prompt, layer.negative, layer.steps, layer.cfg, layer.seed, layer.size) == (
        "a fox in the snow", "blurry", 2, 6.0, 11, (64, 64))
    assert layer.scheduler == scheduler and ignored == ["Model", "Model hash", "Version"]


def test_a1111_only_png_needs_a_model_and_a_known_sampler(cli, no_loading, tmp_path):
    png = _a1111_png(tmp_path / "a.png", A1111_TEXT.format(sampler="DPM++ 2M, Schedule type: Karras"))
    bare = cli("reproduce", png)
    assert bare.code == 2 and bare.err.count("\n") == 1
    assert "only A1111 parameters" in bare.err and "give --model PATH_OR_REPO or --preset NAME" in bare.err
    unknown = _a1111_png(tmp_path / "b.png", A1111_TEXT.format(sampler="DPM++ 3M Krras"))
    result = cli("reproduce", unknown, "--preset", "demo")
    assert result.code == 2 and result.err.count("\n") == 1 and "Traceback" not in result.err
    assert "'Sampler': 'DPM++ 3M Krras' is not a sampler imagegen knows; closest: " in result.err
    bad_steps = _a1111_png(tmp_path / "c.png", A1111_TEXT.format(sampler="Euler").replace("Steps: 2", "Steps: many"))
    result = cli("reproduce", bad_steps, "--preset", "demo")
    assert result.code == 2 and "A1111 parameters 'Steps': must be an integer" in result.err


@pytest.mark.slow
def test_a1111_only_png_replays_on_the_named_model(cli, guides, tmp_path):
    made = cli("txt2img", "a fox in the snow", "--negative", "blurry", "--model", guides["model"], "--steps", "2",
               "--seed", "11", "--cfg", "6", "--size", "64x64", "-s", "DPM++ 2M Karras", "--out", tmp_path / "o", "-q")
    assert made.code == 0, made.err
    with Image.open(tmp_path / "o" / "0000-11.png") as im:
        text, pixels = im.text["parameters"], np.asarray(im.convert("RGB"))
    png = _a1111_png(tmp_path / "only.png", text, pixels)  # what another tool keeps: the pixels and A1111's text
    close = cli("reproduce", png, "--model", guides["model"], "--out", tmp_path / "r")
    assert close.code == 0, close.err
    assert "as close as the recipe allows" in close.err
    verified = cli("reproduce", png, "--model", guides["model"], "--verify", "-q")
    assert verified.code == 0, verified.err
    other = _a1111_png(tmp_path / "other.png", text.replace("Seed: 11", "Seed: 12"), pixels)
    assert cli("reproduce", other, "--model", guides["model"], "--verify", "-q").code == 4


def test_reproduce_help_states_its_own_defaults(cli):
    result = cli("reproduce", "--help")
    text = " ".join(result.out.replace("│", " ").split())  # help panels draw borders between wrapped lines
    assert "a new folder beside the source" in text and "Default: the recorded one." in text
    assert "Default: ./outputs" not in text and "Default: random" not in text
