"""Hostile input: every case is one line on stderr with exit code 2, no traceback, no weights loaded, nothing written
outside --out, and neither time nor memory worth mentioning."""

from __future__ import annotations

import json
import os
import stat
import tracemalloc
import warnings
from pathlib import Path

import pytest


@pytest.fixture
def no_weights(monkeypatch):
    """Fail the test if any model starts to load."""
    import imagegen.loading

    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded for input that needs none to be refused")

    monkeypatch.setattr(imagegen.loading, "load_model", refuse)


def one_line_refusal(result, *needles: str, code: int = 2) -> str:
    lines = result.err.strip().splitlines()
    assert result.code == code, result.err
    assert "Traceback" not in result.err
    assert len(lines) == 1, result.err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


@pytest.mark.parametrize("template, needle", [
    ("{index:c}", "control character"),          # NUL at index 0
    ("{seed:c}-{index}", "--name"),               # NUL at seed 0, overflow at large seeds
    ("{seed:>300}", "wider than a file name"),
    ("{seed:_>250}", "at most 223"),
    ("{seed:{index}}", "inside a format spec"),
    ("{prompt:d}", "Unknown format code"),
    ("{seed:.99999999999f}", "wider than a file name"),
    ("{nope}", "unknown placeholder"),
    ("../{seed}", "must stay inside --out"),
    ("/abs/{seed}", "must stay inside --out"),
])
def test_name_templates_are_checked_as_they_render_before_loading(cli, tmp_path, no_weights, template, needle):
    result = cli("txt2img", "a fox", "--preset", "demo", "--name", template, "--out", tmp_path / "out")
    one_line_refusal(result, "--name", needle)
    assert files_under(tmp_path / "out") == []


def test_a_bad_template_on_one_line_does_not_hide_the_other_bad_lines(cli, tmp_path, no_weights):
    lines = [{"prompt": "a", "name": "{seed:c}"}, {"prompt": "b", "steps": "x"}, {"prompt": "c", "size": [64, "64"]},
             {"prompt": "d"}]
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    result = cli("batch", prompts, "--preset", "demo", "--out", tmp_path / "out")
    assert result.code == 2 and "Traceback" not in result.err
    for number in (1, 2, 3):
        assert f"p.jsonl:{number}:" in result.err
    assert "p.jsonl:4:" not in result.err
    assert "3 invalid lines" in result.err
    assert 'got "64" in [64, "64"]' in result.err  # numbers must be numbers inside lists too


def test_a_nul_byte_in_a_prompt_is_refused(cli, tmp_path, no_weights):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "a\u0000b"}) + "\n" + json.dumps({"prompt": "ok", "negative": "x\u0000"})
                       + "\n")
    result = cli("batch", prompts, "--preset", "demo", "--out", tmp_path / "out")
    assert result.code == 2 and "p.jsonl:1: prompt: must not contain a NUL" in result.err
    assert "p.jsonl:2: negative: must not contain a NUL" in result.err


@pytest.fixture
def linked_out(tmp_path):
    """An output folder with a link `sub` to a folder outside it."""
    out, outside = tmp_path / "out", tmp_path / "outside"
    out.mkdir()
    outside.mkdir()
    (out / "sub").symlink_to(outside, target_is_directory=True)
    return out, outside


def test_a_template_through_a_link_cannot_write_outside_out(cli, linked_out, no_weights):
    out, outside = linked_out
    result = cli("txt2img", "a fox", "--preset", "demo", "--name", "sub/{seed}", "--out", out, "--seed", "1")
    one_line_refusal(result, "leads out of", "symbolic link")
    result = cli("txt2img", "a fox", "--preset", "demo", "--name", "sub/deeper/{seed}", "--out", out, "--seed", "1")
    one_line_refusal(result, "leads out of")
    assert list(outside.iterdir()) == []


def test_a_batch_line_name_through_a_link_cannot_write_outside_out(cli, linked_out, tmp_path, no_weights):
    out, outside = linked_out
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "a fox", "name": "sub/{seed}"}) + "\n")
    one_line_refusal(cli("batch", prompts, "--preset", "demo", "--out", out), "leads out of")
    one_line_refusal(cli("batch", prompts, "--preset", "demo", "--out", out, "--name", "x/{seed}"), "leads out of")
    assert list(outside.iterdir()) == []


def test_a_manifest_that_is_a_link_is_neither_read_nor_appended_to(cli, tmp_path, no_weights):
    out, target = tmp_path / "out", tmp_path / "elsewhere.jsonl"
    out.mkdir()
    target.write_text("")
    (out / "manifest.jsonl").symlink_to(target)
    prompts = tmp_path / "p.txt"
    prompts.write_text("a fox\n")
    one_line_refusal(cli("batch", prompts, "--preset", "demo", "--out", out), "manifest.jsonl", "symbolic link")
    assert target.read_text() == ""
    (out / "manifest.jsonl").unlink()
    os.mkfifo(out / "manifest.jsonl")  # a FIFO would block the read forever
    one_line_refusal(cli("batch", prompts, "--preset", "demo", "--out", out), "not a regular file")


def test_the_manifest_writer_refuses_a_link_swapped_in_after_reading(tmp_path):
    from imagegen.batch.manifest import ManifestWriter
    from imagegen.errors import UsageError

    target = tmp_path / "elsewhere.jsonl"
    target.write_text("")
    (tmp_path / "manifest.jsonl").symlink_to(target)
    with pytest.raises(UsageError, match="symbolic link"):
        ManifestWriter(tmp_path)
    assert target.read_text() == ""


def test_manifest_lines_naming_files_outside_out_are_ignored(tmp_path):
    from imagegen.batch.manifest import read_manifest

    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "victim.png").write_bytes(b"x")
    lines = [{"type": "done", "key": "0/0", "hash": "h", "png": "../victim.png"},
             {"type": "done", "key": "1/0", "hash": "h", "png": "a.png", "sidecar": "/etc/passwd"},
             {"type": "done", "key": "2/0", "hash": "h", "png": "ok/a.png", "sidecar": "ok/a.json"}]
    (out / "manifest.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    (out / "link").symlink_to(tmp_path)
    (out / "manifest.1.jsonl").write_text(json.dumps({"type": "done", "key": "3/0", "hash": "h",
                                                      "png": "link/victim.png"}) + "\n")
    _, entries = read_manifest(out)
    assert list(entries) == ["2/0"]


def test_out_that_is_a_file_fails_before_loading_in_every_command(cli, tmp_path, no_weights):
    taken = tmp_path / "taken"
    taken.write_text("mine")
    prompts = tmp_path / "p.txt"
    prompts.write_text("a fox\n")
    one_line_refusal(cli("txt2img", "a fox", "--preset", "demo", "--out", taken), "is a file")
    one_line_refusal(cli("txt2img", "a fox", "--preset", "demo", "--out", taken / "sub"), "is a file")
    one_line_refusal(cli("batch", prompts, "--preset", "demo", "--out", taken), "is a file")
    assert taken.read_text() == "mine"


def test_an_unwritable_out_fails_before_loading(cli, tmp_path, no_weights, monkeypatch):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a fox\n")
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: False if "locked" in str(path) else real_access(
        path, mode, **kw))  # as for a user without write permission (the tests may run as root)
    (tmp_path / "locked").mkdir()
    for command in (("batch", prompts), ("txt2img", "a fox")):
        one_line_refusal(cli(*command, "--preset", "demo", "--out", tmp_path / "locked" / "new"),
                         "cannot write there", "no permission")


def test_runaway_expansion_is_refused_by_counting(cli, tmp_path, no_weights):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "x " + " ".join("{a|b}" for _ in range(30))}) + "\n")
    tracemalloc.start()
    result = cli("batch", prompts, "--expand", "--preset", "demo", "--out", tmp_path / "out")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    one_line_refusal(result, "1,073,741,824 jobs", "--max-images")
    assert peak < 50_000_000
    prompts.write_text(json.dumps({"prompt": "x {a|b|c}", "n": 40_000}) + "\n")
    one_line_refusal(cli("batch", prompts, "--expand", "--preset", "demo", "--out", tmp_path / "out"),
                     "120,000 images", "limit of 100,000")
    one_line_refusal(cli("batch", prompts, "--expand", "--preset", "demo", "--out", tmp_path / "out",
                         "--max-images", "1000"), "limit of 1,000")


def test_a_bad_image_is_named_without_internals(tmp_path):
    from imagegen.errors import UsageError
    from imagegen.inputs import check_image

    bad = tmp_path / "notes.png"
    bad.write_bytes(b"not a picture")
    with pytest.raises(UsageError) as info:
        check_image(str(bad), label=f"--control canny:{bad.name}")
    assert str(info.value) == "--control canny:notes.png: not an image file PIL can read (PNG, JPEG, WebP, BMP, TIFF, ...)"
    png = tmp_path / "cut.png"
    from PIL import Image

    Image.new("RGB", (64, 64), "red").save(png)
    png.write_bytes(png.read_bytes()[:60])
    with pytest.raises(UsageError) as info:
        check_image(str(png), label="--ip-adapter cut.png")
    assert "0x" not in str(info.value) and str(info.value).startswith("--ip-adapter cut.png: not a readable image")


def test_library_warnings_are_one_line_notes_and_silent_with_quiet(capsys):
    from imagegen.cli import _one_line_warnings

    with warnings.catch_warnings():
        _one_line_warnings(quiet=False)
        warnings.warn("A library notice\nover two lines", UserWarning)
        warnings.warn("A library notice\nover two lines", UserWarning)
    assert capsys.readouterr().err == "note: UserWarning: A library notice over two lines\n"
    with warnings.catch_warnings():
        _one_line_warnings(quiet=True)
        warnings.warn("noisy", UserWarning)
    assert capsys.readouterr().err == ""


def test_an_error_quoting_a_library_is_printed_on_one_line(cli, monkeypatch):
    import imagegen.cli.commands as commands
    from imagegen.errors import RunError

    def fail(*args, **kwargs):
        raise RunError("cannot load: Error(s) in loading state_dict:\n\tsize mismatch for x")

    monkeypatch.setattr(commands, "flags", fail)
    one_line_refusal(cli("txt2img", "a fox"), "cannot load: Error(s) in loading state_dict: size mismatch for x",
                     code=1)


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_follow_the_umask(tmp_path, umask, mode):
    from PIL import Image

    from imagegen.output import write_image

    old = os.umask(umask)
    try:
        written = write_image(Image.new("RGB", (8, 8)), tmp_path, "x", parameters="p", record={"schema": "s"})
    finally:
        os.umask(old)
    assert stat.S_IMODE(written.png.stat().st_mode) == mode
    assert stat.S_IMODE(written.sidecar.stat().st_mode) == mode


def test_guidance_is_refused_where_the_model_has_no_embedding(tmp_path):
    from imagegen import Request, UsageError, resolve
    from imagegen.testing import build_tiny_flux

    schnell = build_tiny_flux(tmp_path / "schnell")
    dev = build_tiny_flux(tmp_path / "dev", guidance_embeds=True, dynamic_shifting=True)
    with pytest.raises(UsageError, match="has no guidance embedding"):
        resolve(Request(prompt="p", model=str(schnell), guidance=3.5, size=(64, 64)))
    assert resolve(Request(prompt="p", model=str(dev), guidance=3.5, size=(64, 64))).guidance == 3.5
    # flux-dev's preset sets guidance 3.5; a schnell-like model ignores it, so it is dropped (and not recorded)
    req = resolve(Request(prompt="p", preset="flux-dev", model=str(schnell), size=(64, 64)))
    assert req.guidance is None and any("no guidance embedding" in note for note in req.notes)
    assert resolve(Request(prompt="p", preset="flux-dev", model=str(dev), size=(64, 64))).guidance == 3.5


def test_a_revision_for_a_local_folder_is_refused(cli, tmp_path, tiny_models, no_weights):
    one_line_refusal(cli("txt2img", "a fox", "--model", tiny_models["sdxl"], "--revision", "main", "--out",
                         tmp_path / "out"), "--revision main", "local folder")


@pytest.mark.slow
def test_a_deleted_sidecar_is_restored_on_resume(cli, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle\n")
    out = tmp_path / "out"
    args = ("batch", prompts, "--preset", "demo", "--out", out, "--seed", "5", "-q")
    assert cli(*args).code == 0
    sidecar = next(out.glob("*.json"))
    original = json.loads(sidecar.read_text())
    sidecar.unlink()
    result = cli(*args)
    assert result.code == 0, result.err
    restored = json.loads(sidecar.read_text())
    assert restored["output"] == original["output"] and restored["prompt"] == original["prompt"]
    assert restored["model"] == original["model"]


def test_fifos_and_devices_are_refused_not_read_forever(cli, tmp_path, no_weights):
    from imagegen.errors import UsageError
    from imagegen.inputs import check_image

    fifo = tmp_path / "p.txt"
    os.mkfifo(fifo)
    one_line_refusal(cli("batch", fifo, "--preset", "demo", "--out", tmp_path / "out"), "not a regular file")
    one_line_refusal(cli("batch", "/dev/zero", "--format", "txt", "--preset", "demo", "--out", tmp_path / "out"),
                     "not a regular file")
    preset = tmp_path / "mine.toml"
    os.mkfifo(preset)
    one_line_refusal(cli("txt2img", "a fox", "--preset", preset, "--out", tmp_path / "out"), "not a regular file")
    with pytest.raises(UsageError, match="not a regular file"):
        check_image("/dev/zero", label="--control canny:/dev/zero")


def test_an_ip_adapter_shape_mismatch_names_the_first_tensor_whole():
    from types import SimpleNamespace

    from imagegen.adapters.ip_adapter import _adapter_error

    lines = [f"\tsize mismatch for image_proj.layers.{i}.weight_with_a_long_name: copying a param with shape "
             f"torch.Size([1280, {i}]) from checkpoint, the shape in current model is torch.Size([768, {i}])."
             for i in range(3)]
    exc = RuntimeError("Error(s) in loading state_dict for IPAdapterPlusImageProjection:\n" + "\n".join(lines))
    message = str(_adapter_error(SimpleNamespace(model="h94/IP-Adapter"), RuntimeError("x"), exc))
    assert "size mismatch for image_proj.layers.0.weight_with_a_long_name" in message
    assert message.endswith("torch.Size([768, 0]). (and 2 more)") and "\n" not in message
