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


@pytest.fixture(scope="module")
def target(wheel, tmp_path_factory):
    """The wheel installed (non-editable) into a folder of its own."""
    target = tmp_path_factory.mktemp("site")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target", str(target), str(wheel)],
        capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return target


def test_installed_package_lists_its_presets(target, tmp_path):
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


def test_installed_package_runs_the_demo_from_its_own_folder(wheel, target, tmp_path):
    names = zipfile.ZipFile(wheel).namelist()
    assert "imagegen/demo/model/unet/diffusion_pytorch_model.safetensors" in names
    assert "imagegen/demo/model/manifest.json" in names
    code = (
        "import sys\n"
        "from imagegen.cli import main\n"
        "from imagegen.hub import builtin_models\n"
        "assert str(builtin_models()['demo']).startswith(sys.argv[1]), builtin_models()\n"
        "sys.exit(main(['txt2img', 'a red circle on a blue background', '--preset', 'demo', '--steps', '4',"
        " '--seed', '1', '--out', 'out', '--json']))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(target), "IMAGEGEN_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", code, str(target)], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["model"] == "builtin:demo"
    assert (tmp_path / result["images"][0]["path"]).is_file()
