"""A non-editable install (a built wheel) ships the presets inside the package."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.install
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    dist = tmp_path_factory.mktemp("dist")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(dist), str(ROOT)],
        capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (path,) = dist.glob("imagegen-*.whl")
    return path


def test_wheel_contains_every_preset(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    shipped = {Path(n).name for n in names if n.startswith("imagegen/presets/")}
    assert shipped == {p.name for p in (ROOT / "presets").glob("*.toml")}


def test_installed_package_lists_its_presets(wheel, tmp_path):
    target = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target", str(target), str(wheel)],
        capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    code = (
        "import imagegen, json, sys\n"
        "from imagegen.cli import main\n"
        "assert imagegen.__file__.startswith(sys.argv[1]), imagegen.__file__\n"
        "sys.exit(main(['presets', 'list', '--json']))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(target), "IMAGEGEN_HOME": str(tmp_path / "home")}
    proc = subprocess.run([sys.executable, "-c", code, str(target)], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    presets = {p["name"]: p for p in json.loads(proc.stdout)}
    assert {"sdxl", "sd3", "sd3.5-large", "flux-schnell"} <= set(presets)
    assert all(p["source"].startswith(str(target)) for p in presets.values())
