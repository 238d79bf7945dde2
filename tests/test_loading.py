"""Loading: repo ids from the HF cache offline, and one-line explanations for missing, gated and pickle-only models."""

from __future__ import annotations

import json
import shutil

import pytest

pytestmark = pytest.mark.slow

SHA = "0123456789abcdef0123456789abcdef01234567"


def fake_cache_entry(source, repo_id: str):
    """Lay a model folder out as huggingface_hub's cache does: models--org--name/{refs/main, snapshots/<sha>}."""
    from huggingface_hub import constants

    root = constants.HF_HUB_CACHE
    entry = __import__("pathlib").Path(root) / ("models--" + repo_id.replace("/", "--"))
    if not entry.exists():
        shutil.copytree(source, entry / "snapshots" / SHA)
        (entry / "refs").mkdir(parents=True)
        (entry / "refs" / "main").write_text(SHA)
    return entry


def test_repo_id_from_hf_cache_offline_records_revision(cli, tiny_models, tmp_path):
    fake_cache_entry(tiny_models["sd3"], "tiny-org/tiny-sd3")
    result = cli("txt2img", "a fox", "--model", "tiny-org/tiny-sd3", "--steps", "2", "--seed", "1", "--size", "64x64",
                 "--out", tmp_path, "-q", "--json")
    assert result.code == 0, result.err
    sidecar = json.loads((tmp_path / "0000-1.json").read_text())
    assert sidecar["model"]["id"] == "tiny-org/tiny-sd3" and sidecar["model"]["revision"] == SHA
    assert sidecar["model"]["family"] == "sd3"
    again = cli("reproduce", tmp_path / "0000-1.png", "--verify", "-q")
    assert again.code == 0, again.err


def test_preset_model_missing_offline_is_one_line(cli, tmp_path):
    result = cli("txt2img", "a fox", "--preset", "sdxl", "--steps", "1", "--seed", "1", "--out", tmp_path)
    assert result.code == 1
    assert result.err.count("\n") == 1 and "Traceback" not in result.err
    assert "stabilityai/stable-diffusion-xl-base-1.0 is not in the Hugging Face cache" in result.err
    assert "HF_HUB_OFFLINE is set" in result.err and "hf download" in result.err


def test_pickle_only_folder_is_refused_with_reason(cli, tiny_pickle_sdxl, tmp_path):
    result = cli("txt2img", "a fox", "--model", tiny_pickle_sdxl, "--steps", "1", "--seed", "1", "--size", "64x64", "--out", tmp_path)
    assert result.code == 1, result.err
    assert result.err.count("\n") == 1
    assert "no safetensors weights" in result.err and "pickle" in result.err
    assert not list(tmp_path.glob("*.png"))


def test_gated_repo_message():
    from huggingface_hub.errors import GatedRepoError

    from imagegen.hub import load_error

    # The hub's 401 for a gated repo, as huggingface_hub raises it (built without a network round trip).
    cause = GatedRepoError.__new__(GatedRepoError)
    Exception.__init__(cause, "401 Client Error. Cannot access gated repo for url https://huggingface.co/...")
    wrapped = OSError("Cannot load model")
    wrapped.__cause__ = cause
    error = load_error("stabilityai/stable-diffusion-3-medium-diffusers", None, wrapped)
    assert error.exit_code == 1
    assert "is a gated repo: accept its licence at https://huggingface.co/stabilityai/stable-diffusion-3-medium-diffusers" in str(error)
    assert "hf auth login" in str(error)


def test_debug_shows_traceback(cli, tmp_path):
    plain = cli("txt2img", "x", "--preset", "nope")
    assert plain.code == 2 and "Traceback" not in plain.err
    debug = cli("txt2img", "x", "--preset", "nope", "--debug")
    assert debug.code == 2 and "Traceback" in debug.err and debug.err.rstrip().endswith("imagegen/errors.py") is False


def test_uncached_repo_id_without_preset_is_one_line(cli, tmp_path):
    result = cli("txt2img", "x", "--model", "nobody/not-cached", "--seed", "1", "--out", tmp_path)
    assert result.code == 1
    assert "nobody/not-cached is not in the Hugging Face cache" in result.err and "(or name its --preset)" in result.err
    assert result.err.count("\n") == 1


def test_a_pickle_only_repo_in_the_cache_is_one_line_with_no_library_log(tiny_pickle_sdxl, tmp_path):
    import os
    import subprocess
    import sys

    from huggingface_hub import constants

    fake_cache_entry(tiny_pickle_sdxl, "tiny-org/pickle-sdxl")
    env = {**os.environ, "HF_HUB_CACHE": str(constants.HF_HUB_CACHE), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "imagegen", "txt2img", "a fox", "--model", "tiny-org/pickle-sdxl",
                           "--steps", "1", "--seed", "1", "--size", "64x64", "--out", str(tmp_path), "-q"],
                          env=env, capture_output=True, text=True, timeout=300)
    # diffusers logs "An error occurred while trying to fetch ..." on its own before the refusal unless silenced
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert "no safetensors weights" in done.stderr
