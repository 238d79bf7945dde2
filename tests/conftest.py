"""Shared fixtures: an isolated user directory and HF cache, tiny pipelines built once per session, a CLI runner."""

from __future__ import annotations

import os
import tempfile

# Before anything imports huggingface_hub (it reads these once): no hub, and an empty cache of our own.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="imagegen-test-hf-")
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    """Each test gets its own IMAGEGEN_HOME (user presets) and runs in its own folder."""
    from imagegen.checkpoints.configs import config_folder

    home = tmp_path / "imagegen-home"
    monkeypatch.setenv("IMAGEGEN_HOME", str(home))
    monkeypatch.chdir(tmp_path)
    config_folder.cache_clear()  # found once per run; a test's HF cache and home are its own
    return home


@dataclass
class CliResult:
    code: int
    out: str
    err: str


def run_cli(*args: str) -> CliResult:
    """Run the real entry point (with its error boundary) in-process and capture what it prints."""
    from imagegen.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:  # pragma: no cover - main returns codes; this is a safety net
            code = exc.code if isinstance(exc.code, int) else 1
    return CliResult(code=code, out=out.getvalue(), err=err.getvalue())


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """Tiny random-weight SDXL, SD3 and Flux folders saved with save_pretrained, once per session."""
    from imagegen.testing import build_tiny_flux, build_tiny_sd3, build_tiny_sdxl

    root = tmp_path_factory.mktemp("tiny")
    return {
        "sdxl": build_tiny_sdxl(root / "sdxl"),
        "sd3": build_tiny_sd3(root / "sd3"),
        "flux": build_tiny_flux(root / "flux"),
    }


@pytest.fixture(scope="session")
def tiny_pickle_sdxl(tmp_path_factory) -> Path:
    """A tiny SDXL folder with pickle .bin weights only."""
    from imagegen.testing import build_tiny_sdxl

    return build_tiny_sdxl(tmp_path_factory.mktemp("pickle") / "sdxl-bin", safetensors=False)
