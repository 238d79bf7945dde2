"""Every later family, through the same commands a user runs, on its tiny random-weight pipeline: txt2img and
reproduce --verify, its schedulers and CFG on and off (compare), a refused scheduler, batch invariance across
prompts of different lengths, its text encoder run once per distinct prompt, and edit where its presets edit."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imagegen.families import FAMILIES
from imagegen.modes import MODES
from imagegen.presets import list_presets
from imagegen.schedulers import SAMPLERS, _impl
from imagegen.testing import TINY, build_tiny

pytestmark = pytest.mark.slow

# The families whose tiny builder is one module of imagegen/testing/builders (the first four have their own tests).
LATER = sorted(f for f, builder in TINY.items() if builder.__module__.startswith("imagegen.testing.builders."))
# An edit preset's own model where it is not the family's plain one (test data: how each tiny model is built).
EDIT_BUILDS = {"flux": {"kontext": True, "guidance_embeds": True, "dynamic_shifting": True}, "qwen-image": {"edit": True}}
EDITING = sorted({p.family.name for p in list_presets() if p.can(MODES["edit"])})
PROMPTS = ["a fox", "an old lighthouse on a rocky coast at dusk, oil painting", "a red bicycle leaning on a wall"]


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    built: dict[tuple, Path] = {}

    def model(family: str, edit: bool = False) -> Path:
        options = EDIT_BUILDS.get(family, {}) if edit else {}
        key = (family, tuple(sorted(options.items())))
        if key not in built:
            root = tmp_path_factory.mktemp(family.replace("-", "_"))
            built[key] = build_tiny(family, root / "model", **options)
        return built[key]

    return model


def size_of(family: str, model: Path) -> str:
    from imagegen.models import inspect_model

    multiple = inspect_model(str(model)).multiple or FAMILIES[family].default_multiple
    side = max(multiple, 64 // multiple * multiple)
    return f"{side}x{side}"


def pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB")).astype(np.int16)


def common(family: str, model: Path) -> list:
    return ["--model", model, "--steps", "2", "--size", size_of(family, model)]


@pytest.mark.parametrize("family", LATER)
def test_txt2img_records_the_encoder_and_reproduces_bit_exactly(cli, models, tmp_path, family):
    model = models(family)
    result = cli("txt2img", PROMPTS[1], *common(family, model), "-n", "2", "--batch-size", "2", "--seed", "5",
                 "--out", tmp_path, "--json", "-q")
    assert result.code == 0, result.err
    images = json.loads(result.out)["images"]
    assert len(images) == 2 and pixels(images[1]["path"]).std() > 0, "not a blank (NaN) image"
    record = json.loads(Path(images[1]["sidecar"]).read_text())
    assert record["model"]["family"] == family and record["mode"] == "txt2img"
    assert record["model"]["text_encoders"] and all(e["parameters"] > 0 for e in record["model"]["text_encoders"])
    verify = cli("reproduce", images[1]["path"], "--verify", "-q")  # alone, not beside image 1: batch invariance
    assert verify.code == 0, verify.err + verify.out


@pytest.mark.parametrize("family", LATER)
def test_each_scheduler_and_cfg_on_and_off_through_compare(cli, models, tmp_path, family):
    fam, model = FAMILIES[family], models(family)
    samplers = [s.a1111 for s in SAMPLERS.values() if _impl(s, fam)]
    refused_cfg = fam.cfg_problem(fam.pipeline_class(), 4.0)
    cfgs = ["--cfg", "1"] if refused_cfg else ["--cfg", "1,4", "--negative", "blurry, dark"]
    result = cli("compare", PROMPTS[0], *common(family, model), "--schedulers", ",".join(samplers), *cfgs,
                 "--seed", "3", "--out", tmp_path, "--json", "-q")
    assert result.code == 0, result.err
    summary = json.loads(result.out)
    out = Path(summary["out_dir"])
    assert len(summary["cells"]) == len(samplers) * (1 if refused_cfg else 2)
    ran = set()
    for cell in summary["cells"]:
        record = json.loads((out / cell["file"]).with_suffix(".json").read_text())
        ran.add(record["scheduler"]["name"])
        assert pixels(out / cell["file"]).std() > 0
    assert ran == set(samplers)
    if refused_cfg:  # a --cfg the family cannot run is one line, before loading
        refused = cli("txt2img", "x", *common(family, model), "--cfg", "4")
        assert refused.code == 2 and refused.err.count("\n") == 1 and "--cfg" in refused.err
    else:  # CFG on changes the image
        by_cfg = {c["cfg"]: out / c["file"] for c in summary["cells"] if c["scheduler"] == samplers[0]}
        assert np.abs(pixels(by_cfg[1.0]) - pixels(by_cfg[4.0])).mean() > 0


@pytest.mark.parametrize("family", LATER)
def test_a_scheduler_the_family_cannot_take_is_refused_in_one_line(cli, models, family):
    fam = FAMILIES[family]
    refused = next(s for s in SAMPLERS.values() if not _impl(s, fam))
    result = cli("txt2img", "x", "--model", models(family), "--scheduler", refused.a1111)
    assert result.code == 2 and result.err.count("\n") == 1, result.err
    assert f"for {family}:" in result.err and refused.a1111 in result.err


@pytest.mark.parametrize("family", LATER)
def test_batch_invariance_and_one_encode_per_distinct_prompt(cli, models, tmp_path, family, monkeypatch):
    import imagegen.loading as loading

    model = models(family)
    calls = [0]
    real = loading.load_model

    def counting(*args, **kwargs):
        loaded = real(*args, **kwargs)
        if not getattr(loaded.pipe.text_encoder, "_counted", False):
            loaded.pipe.text_encoder.register_forward_hook(lambda *a: calls.__setitem__(0, calls[0] + 1))
            loaded.pipe.text_encoder._counted = True
        return loaded

    loading._LOADED.clear()
    monkeypatch.setattr(loading, "load_model", counting)
    once = tmp_path / "once.txt"
    once.write_text("\n".join(PROMPTS) + "\n")
    repeated = tmp_path / "repeated.txt"
    repeated.write_text("\n".join(PROMPTS * 3) + "\n")
    args = [*common(family, model), "--seed", "11", "--json", "-q"]
    first = cli("batch", once, *args, "--batch-size", "3", "--out", tmp_path / "b1")
    assert first.code == 0, first.err
    distinct = calls[0]
    loading._LOADED.clear()  # a fresh load: a new run with nothing encoded yet
    calls[0] = 0
    again = cli("batch", repeated, *args, "--batch-size", "3", "--out", tmp_path / "b2")
    loading._LOADED.clear()
    assert again.code == 0, again.err
    if FAMILIES[family].encode_each_prompt:
        assert calls[0] == distinct > 0  # 9 lines of 3 distinct prompts: the encoder ran as for 3
    for line in (tmp_path / "b1" / "manifest.jsonl").read_text().splitlines():
        entry = json.loads(line)
        if entry.get("type") != "done":
            continue
        job = int(entry["key"].split("/")[0])
        single = json.loads(cli("txt2img", PROMPTS[job], *common(family, model), "--seed", str(entry["seed"]),
                                "--out", tmp_path / f"s{job}", "--json", "-q").out)
        assert single["images"][0]["pixels_sha256"] == entry["pixels_sha256"], f"job {job} depends on its batch"


def _references(tmp_path: Path) -> list[Path]:
    rng = np.random.RandomState(0)
    paths = []
    for i, (w, h) in enumerate([(80, 48), (40, 56)]):
        path = tmp_path / f"ref{i}.png"
        Image.fromarray((rng.rand(h, w, 3) * 255).astype("uint8")).save(path)
        paths.append(path)
    return paths


@pytest.fixture
def small_references(monkeypatch):
    """Qwen-Image-Edit VAE-encodes each reference at about 1 MP whatever the output size: tiny here, as the model."""
    from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit_plus as edit_plus

    monkeypatch.setattr(edit_plus, "VAE_IMAGE_SIZE", 64 * 64)
    monkeypatch.setattr(edit_plus, "CONDITION_IMAGE_SIZE", 32 * 32)


@pytest.mark.parametrize("family", EDITING)
def test_edit_with_one_and_two_references_batch_and_compare(cli, models, tmp_path, family, small_references):
    fam, model = FAMILIES[family], models(family, edit=True)
    refs = _references(tmp_path)
    args = [*common(family, model), "--seed", "2", "--json", "-q"]
    counts = [1, 2] if fam.edit_images >= 2 else [1]
    for count in counts:
        images = [a for ref in refs[:count] for a in ("--image", ref)]
        several = ["-n", "2", "--batch-size", "2"] if count == 1 else []  # an edit micro-batch, verified alone
        result = cli("edit", "make it night, keep the shapes", *images, *args, *several, "--out", tmp_path / f"e{count}")
        assert result.code == 0, result.err
        made = json.loads(result.out)["images"][-1]
        record = json.loads(Path(made["sidecar"]).read_text())
        assert record["mode"] == "edit" and [i["size"] for i in record["edit"]["images"]] == \
            [[80, 48], [40, 56]][:count]
        assert record["edit"]["size_from"] == "--size" and pixels(made["path"]).std() > 0
        verify = cli("reproduce", made["path"], "--verify", "-q")
        assert verify.code == 0, verify.err + verify.out
    if fam.edit_images < 2:
        too_many = cli("edit", "x", "--image", refs[0], "--image", refs[1], *args, "--out", tmp_path / "no")
        assert too_many.code == 2 and "at most 1 reference image" in too_many.err
    lines = tmp_path / "edits.jsonl"  # a batch line with an image, on a preset that edits, is an edit
    lines.write_text(json.dumps({"prompt": "make it snow", "image": str(refs[0])}) + "\n")
    batch = cli("batch", lines, *args, "--out", tmp_path / "batch")
    assert batch.code == 0, batch.err
    sidecar = next((tmp_path / "batch").glob("*.json"))
    assert json.loads(sidecar.read_text())["mode"] == "edit"
    compare = cli("compare", "make it snow", "--image", refs[0], "--model", model, "--size", size_of(family, model),
                  "--steps", "2,3", "--seed", "2", "--out", tmp_path / "cmp", "--json", "-q")
    assert compare.code == 0, compare.err
    assert len(json.loads(compare.out)["cells"]) == 2
