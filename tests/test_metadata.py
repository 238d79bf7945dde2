"""Metadata: A1111 text that A1111's own regex reads, the imagegen/1 record, and strict reading back."""

from __future__ import annotations

import json
import re

import pytest

from imagegen import UsageError
from imagegen.metadata import a1111_parameters, check_record, parse_parameters, read_record

# The reader A1111 uses (modules/infotext_utils.py), copied independently of imagegen.metadata.
A1111_RE = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def record(**changes):
    base = {
        "schema": "imagegen/1", "prompt": "a lighthouse at dusk, oil painting", "negative": "blurry, low quality",
        "seed": 42, "steps": 30, "cfg": 6.5, "guidance": None, "width": 1024, "height": 768,
        "scheduler": {"name": "DPM++ 2M Karras", "class": "DPMSolverMultistepScheduler", "config": {}},
        "model": {"id": "stabilityai/stable-diffusion-xl-base-1.0", "revision": "462165984030d82259a11f4367a4eed129e94a7b",
                  "variant": "fp16", "family": "sdxl", "pipeline_class": "StableDiffusionXLPipeline", "preset": "sdxl"},
        "runtime": {"dtype": "float16", "device": "cuda", "rng": "cpu"},
        "versions": {"imagegen": "0.1.0"},
    }
    base.update(changes)
    return base


def test_a1111_text_reads_with_a1111_regex():
    text = a1111_parameters(record())
    lines = text.split("\n")
    assert lines[0] == "a lighthouse at dusk, oil painting"
    assert lines[1] == "Negative prompt: blurry, low quality"
    pairs = dict((k, v) for k, v in A1111_RE.findall(lines[-1]))
    assert pairs["Steps"] == "30"
    assert pairs["Sampler"] == "DPM++ 2M"
    assert pairs["Schedule type"] == "Karras"
    assert pairs["CFG scale"] == "6.5"
    assert pairs["Seed"] == "42"
    assert pairs["Size"] == "1024x768"
    assert pairs["Model"] == "stabilityai/stable-diffusion-xl-base-1.0"


def test_values_with_commas_and_colons_are_quoted():
    text = a1111_parameters(record(model={**record()["model"], "id": "org/a,b:c"}))
    parsed = parse_parameters(text)
    assert parsed["Model"] == "org/a,b:c"
    assert parsed["Seed"] == "42"


def test_a1111_model_is_a_name_with_its_hash_never_a_path():
    model = {**record()["model"], "id": "C:\\models\\a,b", "local": True, "sha256": "ab" * 32}
    parsed = parse_parameters(a1111_parameters(record(model=model)))
    assert parsed["Model"] == "a,b" and parsed["Model hash"] == "ab" * 5
    posix = parse_parameters(a1111_parameters(record(model={**model, "id": "/home/alice/models/tiny"})))
    assert posix["Model"] == "tiny"


def test_parse_multiline_prompt_and_no_negative():
    text = a1111_parameters(record(prompt="line one\nline two", negative=""))
    parsed = parse_parameters(text)
    assert parsed["Prompt"] == "line one\nline two" and parsed["Negative prompt"] == ""
    assert "Negative prompt:" not in text


@pytest.mark.parametrize(
    "change, message",
    [
        ({"schema": "imagegen/9"}, "schema 'imagegen/9' is not supported"),
        ({"seed": "42"}, "metadata 'seed' has the wrong type"),
        ({"steps": True}, "metadata 'steps' has the wrong type"),
        ({"scheduler": {}}, "metadata lacks scheduler.name"),
    ],
)
def test_records_are_checked_strictly(change, message):
    with pytest.raises(UsageError, match=re.escape(message)):
        check_record(record(**change), "x.json")


def test_read_record_errors(tmp_path):
    from PIL import Image

    with pytest.raises(UsageError, match="no such file"):
        read_record(tmp_path / "none.png")
    Image.new("RGB", (4, 4)).save(tmp_path / "plain.png")
    with pytest.raises(UsageError, match="no imagegen metadata"):
        read_record(tmp_path / "plain.png")
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(UsageError, match="not a readable JSON sidecar"):
        read_record(tmp_path / "bad.json")
    (tmp_path / "notimage.png").write_text("hello")
    with pytest.raises(UsageError, match="notimage.png: not an image file PIL can read"):
        read_record(tmp_path / "notimage.png")
    (tmp_path / "ok.json").write_text(json.dumps(record()))
    assert read_record(tmp_path / "ok.json")[0]["seed"] == 42


def test_unicode_prompt_round_trips_through_png_and_sidecar(tmp_path):
    from PIL import Image

    from imagegen.output import write_image

    rec = record(prompt="un phare au crépuscule, 灯台 🌅", negative="flou, «bruit»")
    written = write_image(Image.new("RGB", (8, 8)), tmp_path, "u", parameters=a1111_parameters(rec), record=rec)
    with Image.open(written.png) as im:
        parsed = parse_parameters(im.text["parameters"])
        chunk = json.loads(im.text["imagegen"])
    assert parsed["Prompt"] == rec["prompt"] and parsed["Negative prompt"] == rec["negative"]
    assert chunk["prompt"] == rec["prompt"]
    assert json.loads(written.sidecar.read_text(encoding="utf-8"))["prompt"] == rec["prompt"]
    assert read_record(written.png)[0]["negative"] == rec["negative"]
