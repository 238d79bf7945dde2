"""`imagegen compare`: axes, validation before loading, one encode, cell images, grid, tables, convergence."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from PIL import Image

from imagegen.compare import parse_axis, plan_compare
from imagegen.errors import UsageError
from imagegen.request import Request


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


def test_a_runaway_grid_is_counted_and_refused_without_building_it():
    import tracemalloc

    tracemalloc.start()
    try:
        with pytest.raises(UsageError) as info:
            plan_compare("x", Request(preset="demo"), steps="1-1000", cfg="1-100:0.1", seeds="1-1000")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    message = str(info.value)
    assert message == ("the comparison makes 991,000,000 images (1000 step counts x 991 CFG scales x 1000 seeds), "
                       "over the limit of 1,000; narrow an axis or raise the limit with --max-images 991000000")
    assert peak < 5_000_000  # the 3.7 GB of cells it once built are never built
    with pytest.raises(UsageError, match=r"--seeds '1-100000000000': 100000000000 values; at most 1000"):
        plan_compare("x", Request(preset="demo"), seeds="1-100000000000")


def test_max_images_moves_the_limit():
    with pytest.raises(UsageError, match=r"makes 6 images \(2 schedulers x 3 step counts\), over the limit of 5"):
        plan_compare("x", Request(preset="demo"), schedulers="Euler,DDIM", steps="2-4", max_images=5)
    assert len(plan_compare("x", Request(preset="demo"), schedulers="Euler,DDIM", steps="2-4", max_images=6).cells) == 6
    with pytest.raises(UsageError, match=r"makes 7 images \(2 schedulers x 3 step counts \+ the --reference images\)"):
        plan_compare("x", Request(preset="demo"), schedulers="Euler,DDIM", steps="2-4", max_images=6, reference="Euler:9")
    assert len(plan_compare("x", Request(preset="demo"), schedulers="Euler,DDIM", steps="2-4", max_images=6,
                            reference="Euler:4").cells) == 6  # a reference on the grid adds nothing
    with pytest.raises(UsageError, match="--max-images: must be at least 1"):
        plan_compare("x", Request(preset="demo"), max_images=0)


def test_the_cli_refuses_a_runaway_grid_in_one_line(cli, monkeypatch):
    import imagegen.loading

    monkeypatch.setattr(imagegen.loading, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    result = cli("compare", "x", "--preset", "demo", "--steps", "1-1000", "--cfg", "1-100:0.1", "--seeds", "1-1000")
    assert result.code == 2 and result.err.count("\n") == 1 and "--max-images 991000000" in result.err
    assert "Traceback" not in result.err


def test_one_scheduler_under_several_spellings_is_computed_once():
    plan = plan_compare("x", Request(preset="demo"), schedulers="Euler,euler,EulerDiscreteScheduler,Euler normal,DDIM",
                        steps="2,4")
    assert plan.axes["scheduler"] == ("Euler", "DDIM") and len(plan.cells) == 4
    assert plan.notes[0] == "--schedulers: 'euler' is the same scheduler as 'Euler' (Euler); computed once"
    assert len(plan.notes) == 3
    # Same sampler, different schedule type: a different scheduler, kept.
    assert plan_compare("x", Request(preset="demo"), schedulers="Euler,Euler Karras").axes["scheduler"] == (
        "Euler", "Euler Karras")


def test_a_reference_off_the_grid_is_an_extra_cell():
    plan = plan_compare("x", Request(preset="demo"), schedulers="Euler,DDIM", steps="2,4", seeds="1,2",
                        reference="dpm++ 2m:9")
    extra = [c for c in plan.cells if c.extra]
    assert [(c.req.scheduler.name, c.req.steps, c.req.seed) for c in extra] == [("DPM++ 2M", 9, 1), ("DPM++ 2M", 9, 2)]
    assert extra[0].label == "reference: scheduler DPM++ 2M, steps 9, seed 1"
    on_grid = plan_compare("x", Request(preset="demo"), schedulers="Euler,DDIM", steps="2,4", reference="euler:4")
    assert not any(c.extra for c in on_grid.cells) and on_grid.reference == ("Euler", 4)


def test_a_reference_with_an_unknown_scheduler_lists_the_choices():
    with pytest.raises(UsageError) as info:
        plan_compare("x", Request(preset="demo"), reference="Eulr:9")
    assert str(info.value).startswith("--reference: unknown scheduler 'Eulr' (did you mean 'Euler'?); for sdxl: Euler,")


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
    result = cli("compare", "a red fox", "--model", tiny_models["sdxl"], "--schedulers", "Euler,DDIM",
                 "--steps", "2,4,6", "--seed", "7", "--size", "64x64", "--out", tmp_path / "cmp", "--json", "-q")
    out = tmp_path / "cmp" / "compare-001"  # each run has its own folder
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
    summary = json.loads(result.out, parse_constant=lambda c: pytest.fail(f"invalid JSON constant {c}"))
    assert summary["answer"] and len(summary["cells"]) == 6
    assert "model evaluations; wall time" in summary["answer"] or summary["answer"].startswith("no setting")
    assert json.loads((out / "results.json").read_text())["cells"] == summary["cells"]
    with Image.open(out / "grid.png") as grid:
        assert grid.width > 3 * 64 and grid.height > 2 * 64
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "sortBy" in html
    for r in rows:  # each row links to its cell image, shown as a thumbnail
        assert f'<a href="{r["file"]}"><img alt="{r["file"]}" src="{r["file"]}"' in html
    assert '<td data-sort="1e308">∞</td>' in html and ">inf<" not in html  # identical references: PSNR ∞ sorts last

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
                 "--seeds", "1,2", "--negative", "blurry", "--size", "64x64", "--out", out, "--json", "-q")
    assert result.code == 0, result.err
    summary = json.loads(result.out)
    assert len(summary["cells"]) == 8
    # One grid per seed, named by it.
    assert sorted(p.rsplit("/", 1)[-1] for p in summary["grids"]) == ["grid-seed-1.png", "grid-seed-2.png"]
    reference = [c for c in summary["cells"] if c["steps"] == 3]
    assert all(c["mean_abs_diff"] == 0 for c in reference)


@pytest.mark.slow
def test_reference_off_the_grid_reruns_and_cost_in_model_evaluations(cli, tiny_models, tmp_path):
    args = ("compare", "a fox", "--model", tiny_models["sdxl"], "--schedulers", "Euler,euler,DDIM", "--steps", "2,3",
            "--reference", "Euler:5", "--seed", "3", "--size", "64x64", "--out", tmp_path)
    first = cli(*args)
    assert first.code == 0, first.err
    err = " ".join(first.err.split())  # Rich wraps long lines
    assert "note: --schedulers: 'euler' is the same scheduler as 'Euler' (Euler); computed once" in err
    with open(tmp_path / "compare-001" / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["scheduler"], r["steps"], r["role"]) for r in rows] == [
        ("Euler", "2", "grid"), ("Euler", "3", "grid"), ("DDIM", "2", "grid"), ("DDIM", "3", "grid"),
        ("Euler", "5", "reference")]
    assert all(r["reference"] == "Euler:5" and r["mean_abs_diff"] != "" for r in rows)  # no null differences
    assert rows[-1]["file"].startswith("cells/reference_") and rows[-1]["mean_abs_diff"] == "0.0"
    assert [int(r["model_steps"]) for r in rows] == [2, 3, 2, 3, 5]
    again = cli(*args, "--json", "-q")
    assert again.code == 0, again.err
    summary = json.loads(again.out)
    assert summary["out_dir"] == str(tmp_path / "compare-002") and summary["grids"][0].endswith("compare-002/grid.png")
    assert (tmp_path / "compare-001" / "grid.png").exists()  # the first run's files are left alone


@pytest.mark.slow
def test_speed_axes_measure_each_setting_against_the_plain_cell(cli, tiny_models, tmp_path):
    """--caches and --quantizations: the plain value is added, each combination loads the model its own way, and
    every cell's mean pixel difference and PSNR are against the plain cell at the same scheduler and steps."""
    result = cli("compare", "a fox", "--model", tiny_models["flux"], "--caches", "fbcache:0.5", "--quantizations",
                 "int8", "--steps", "3", "--seed", "5", "--size", "64x64", "--out", tmp_path)
    assert result.code == 0, result.err
    err = " ".join(result.err.split())
    assert "note: --quantizations: none added, the cell the others are measured against" in err
    assert "note: --caches: none added" in err
    out = tmp_path / "compare-001"
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["quantize"], r["cache"]) for r in rows] == [("none", "none"), ("none", "fbcache:0.5"),
                                                          ("int8", "none"), ("int8", "fbcache:0.5")]
    plain = rows[0]
    assert all(r["reference"] == f"{plain['scheduler']}:3, quantize none, cache none" for r in rows)
    assert plain["mean_abs_diff"] == "0.0" and plain["psnr_db"] == "inf"
    for r in rows[1:]:
        mad = np.abs(_pixels(out / r["file"]) - _pixels(out / plain["file"])).mean()
        assert 0 < mad == pytest.approx(float(r["mean_abs_diff"]), abs=1e-3) and float(r["psnr_db"]) > 0
        sidecar = json.loads((out / r["file"]).with_suffix(".json").read_text())
        assert (sidecar["runtime"]["quantize"], sidecar["runtime"]["cache"]) == (r["quantize"], r["cache"])
    cell = out / rows[3]["file"]
    assert cli("reproduce", cell, "--verify").code == 0


def test_a_speed_axis_value_the_model_cannot_take_names_the_axis(cli, tiny_models, tmp_path):
    result = cli("compare", "a fox", "--model", tiny_models["sdxl"], "--caches", "fbcache", "--steps", "2",
                 "--size", "64x64", "--out", tmp_path)
    assert result.code == 2 and result.err.strip().splitlines()[-1].startswith("imagegen: error: --caches fbcache:")
    assert not (tmp_path / "compare-001").exists()
