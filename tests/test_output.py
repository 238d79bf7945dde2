"""Output files: templates stay inside --out, names never overwrite, writes leave no partial files."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from imagegen import UsageError
from imagegen.output import check_template, next_index, write_image

RECORD = {"schema": "imagegen/1", "prompt": "p", "timings": {}, "output": {"pixels_sha256": "x"}}


@pytest.mark.parametrize(
    "template, message",
    [
        ("{index}-{colour}", "unknown placeholder {colour}; valid: {index}, {seed}"),
        ("../{seed}", "must stay inside --out"),
        ("a/../../{seed}", "must stay inside --out"),
        ("/etc/{seed}", "must stay inside --out"),
        ("{seed", "--name '{seed'"),
        ("{index:q}", "--name '{index:q}'"),
    ],
)
def test_bad_templates(template, message):
    with pytest.raises(UsageError) as info:
        check_template(template)
    assert message in str(info.value)


def test_good_templates():
    for template in ("{index:04d}-{seed}", "{preset}/{prompt}-{scheduler}-{steps}", "x_{date}_{cfg}_{width}x{height}"):
        check_template(template)


def test_names_never_overwrite_and_leave_no_temp_files(tmp_path):
    image = Image.new("RGB", (8, 8), "red")
    first = write_image(image, tmp_path, "a", parameters="p\nSteps: 1, Seed: 1, Size: 8x8", record=RECORD)
    second = write_image(image, tmp_path, "a", parameters="p\nSteps: 1, Seed: 1, Size: 8x8", record=RECORD)
    assert first.png.name == "a.png" and second.png.name == "a-1.png"
    assert second.sidecar.name == "a-1.json"
    assert json.loads(second.sidecar.read_text())["output"]["file"] == "a-1.png"
    (tmp_path / "b.json").write_text("{}")  # an orphan sidecar also blocks the name
    third = write_image(image, tmp_path, "b", parameters=None, record=RECORD)
    assert third.png.name == "b-1.png" and (tmp_path / "b.json").read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-1.json", "a-1.png", "a.json", "a.png", "b-1.json", "b-1.png", "b.json"]


def test_metadata_none_writes_only_pixels(tmp_path):
    written = write_image(Image.new("RGB", (8, 8)), tmp_path, "x", parameters=None, record=None)
    assert written.sidecar is None and [p.name for p in tmp_path.iterdir()] == ["x.png"]
    with Image.open(written.png) as im:
        assert not getattr(im, "text", {})


def test_next_index_counts_past_existing_files(tmp_path):
    assert next_index(tmp_path / "missing") == 0
    for name in ("0000-1.png", "0007-9.png", "notes.png"):
        (tmp_path / name).write_bytes(b"")
    assert next_index(tmp_path) == 8


def test_unwritable_folder_is_one_line(tmp_path):
    from imagegen import RunError

    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(RunError, match="cannot write to"):
        write_image(Image.new("RGB", (8, 8)), blocker, "x", parameters=None, record=None)
