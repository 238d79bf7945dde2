"""`imagegen compare`: axes, validation before loading, one encode, cell images, grid, tables, convergence."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from PIL import Image

from imagegen.compare import parse_axis
from imagegen.errors import UsageError


def test_axis_values_take_commas_and_ranges():
    assert parse_axis("steps", "8,15,30") == (8, 15, 30)
    assert parse_axis("steps", "10-50:10") == (10, 20, 30, 40, 50)
    assert parse_axis("cfg", "2-4:0.5") == (2.0, 2.5, 3.0, 3.5, 4.0)
    assert parse_axis("seed", "1-3,10") == (1, 2, 3, 10)
    assert parse_axis("scheduler", "Euler, DPM++ 2M Karras") == ("Euler", "DPM++ 2M Karras")


@pytest.mark.parametrize("name, text, message", [
    ("steps", "0,10", "--steps: must be from 1 to 1000"),
    ("steps", "10,10", "--steps: a value appears twice"),
    ("steps", "50-10", "START <= END"),
    ("cfg", "abc", "--cfg: must be a number"),
    ("seed", "-1", "--seeds: a comparison needs fixed seeds"),
])
def test_bad_axis_values_name_the_flag(name, text, message):
    with pytest.raises(UsageError, match=message.replace("+", r"\+")):
        parse_axis(name, text)


def test_an_incompatible_scheduler_is_refused_before_loading(cli, tiny_models, monkeypatch):
    import imagegen.loading

    monkeypatch.setattr(imagegen.loading, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    result = cli("compare", "a fox", "--model", tiny_models["flux"], "--schedulers", "Euler,DDIM", "--steps", "2,4")
    assert result.code == 2 and result.err.startswith("imagegen: error: --schedulers: DDIM")
    result = cli("compare", "a fox", "--model", tiny_models["sdxl"], "--schedulers", "Euler,Eulr")
    assert result.code == 2 and "unknown scheduler 'Eulr'" in result.err
    result = cli("compare", "a fox", "--model", tiny_models["sdxl"], "--steps", "1,2", "--cfg", "1,2",
                 "--seeds", "1,2", "--schedulers", "Euler,DDIM")
    assert result.code == 2 and "at most three axes may vary" in result.err


def _pixels(path):
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.float64)


@pytest.mark.slow
def test_compare_grid_tables_and_convergence(cli, tiny_models, tmp_path, monkeypatch):
    import imagegen.loading as models

    models._LOADED.clear()
    calls = {"text_encoder": 0, "text_encoder_2": 0}
    real = models.load_model

    def counting_load(*args, **kwargs):
        loaded = real(*args, **kwargs)
        for name in calls:
            module = getattr(loaded.pipe, name)
            if not getattr(module, "_counted", False):
                module.register_forward_hook(lambda *a, n=name: calls.__setitem__(n, calls[n] + 1))
                module._counted = True
        return loaded

    monkeypatch.setattr(models, "load_model", counting_load)
    out = tmp_path / "cmp"
    result = cli("compare", "a red fox", "--model", tiny_models["sdxl"], "--schedulers", "Euler,DDIM",
                 "--steps", "2,4,6", "--seed", "7", "--out", out, "--json", "-q")
    models._LOADED.clear()  # the hooked pipeline is not for other tests
    assert result.code == 0, result.err
    assert calls == {"text_encoder": 1, "text_encoder_2": 1}  # the prompt is encoded once for 6 cells

    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["scheduler"], r["steps"]) for r in rows] == [
        ("Euler", "2"), ("Euler", "4"), ("Euler", "6"), ("DDIM", "2"), ("DDIM", "4"), ("DDIM", "6")]
    for r in rows:
        assert float(r["wall_s"]) > 0 and float(r["s_per_step"]) > 0 and r["seed"] == "7"
        ref = next(x for x in rows if x["scheduler"] == r["scheduler"] and x["steps"] == "6")
        a, b = _pixels(out / r["file"]), _pixels(out / ref["file"])
        mad = np.abs(a - b).mean()
        assert float(r["mean_abs_diff"]) == pytest.approx(mad, abs=1e-3)
        mse = ((a - b) ** 2).mean()
        expected_psnr = "inf" if mse == 0 else round(10 * math.log10(255 ** 2 / mse), 3)
        assert (r["psnr_db"] == "inf") if expected_psnr == "inf" else float(r["psnr_db"]) == pytest.approx(expected_psnr, abs=1e-2)
    summary = json.loads(result.out)
    assert summary["answer"] and len(summary["cells"]) == 6
    assert json.loads((out / "results.json").read_text())["cells"] == summary["cells"]
    with Image.open(out / "grid.png") as grid:
        assert grid.width > 3 * 64 and grid.height > 2 * 64
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "sortBy" in html

    cell = out / rows[1]["file"]
    sidecar = json.loads(cell.with_suffix(".json").read_text())
    assert sidecar["steps"] == 4 and sidecar["scheduler"]["name"] == "Euler" and sidecar["seed"] == 7
    verify = cli("reproduce", cell, "--verify", "-q")
    assert verify.code == 0, verify.err  # a cell made from reused embeddings is the image txt2img makes


@pytest.mark.slow
@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_compare_on_flow_models_with_cfg_and_seed_axes(cli, tiny_models, tmp_path, family):
    out = tmp_path / family
    result = cli("compare", "a castle", "--model", tiny_models[family], "--cfg", "1,3", "--steps", "2,3",
                 "--seeds", "1,2", "--negative", "blurry", "--out", out, "--json", "-q")
    assert result.code == 0, result.err
    summary = json.loads(result.out)
    assert len(summary["cells"]) == 8
    assert sorted(p.rsplit("/", 1)[-1] for p in summary["grids"]) == ["grid-1.png", "grid-2.png"]  # one grid per seed
    reference = [c for c in summary["cells"] if c["steps"] == 3]
    assert all(c["mean_abs_diff"] == 0 for c in reference)
