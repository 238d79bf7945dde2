"""`imagegen plan`: component sizes read from safetensors headers (a folder, a single file, a cached repo) or built on
the meta device from the shipped configs when nothing is cached, the step chosen for a VRAM figure by the formula
in imagegen/memory.py, the default VRAM from the CUDA GPU's free memory, and one-line refusals."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from imagegen.memory import (ACTIVATION_FACTOR, GiB, RESERVE, STEPS, Activations, Component, choose, estimate,
                             peak)


@pytest.fixture(scope="module")
def tiny_sdxl(tmp_path_factory):
    """A tiny SDXL folder saved with save_pretrained, and the same weights as one original-layout file."""
    from imagegen.testing import build_tiny, write_checkpoint

    root = tmp_path_factory.mktemp("plan")
    folder = build_tiny("sdxl", root / "sdxl")
    return folder, write_checkpoint(folder, root / "sdxl.safetensors")


def header_bytes(path, keep=lambda name: True) -> int:
    """The bytes a safetensors header says its tensors take (data offsets), read here without imagegen."""
    with open(path, "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    return sum(v["data_offsets"][1] - v["data_offsets"][0] for k, v in header.items()
               if k != "__metadata__" and keep(k))


def plan_json(cli, *args) -> dict:
    result = cli("plan", *args, "--json")
    assert result.code == 0, result.err
    return json.loads(result.out)


def one_line(result, code: int, *words: str) -> None:
    assert result.code == code, (result.out, result.err)
    assert result.err.count("\n") == 1 and result.err.startswith("imagegen: error: "), result.err
    assert all(w in result.err for w in words), result.err


# ---- sizes


def test_a_folders_component_sizes_are_its_headers_byte_counts(cli, tiny_sdxl):
    folder, _ = tiny_sdxl
    data = plan_json(cli, "--model", folder, "--vram", "8")
    expected = {p.parent.name: header_bytes(p) for p in folder.glob("*/*.safetensors")}
    assert {c["name"]: c["bytes"]["stored"] for c in data["components"]} == expected
    assert {c["source"] for c in data["components"]} == {"headers"}
    unet = next(c for c in data["components"] if c["name"] == "unet")
    assert unet["bytes"]["fp16"] == 2 * unet["parameters"] and unet["bytes"]["fp32"] == 4 * unet["parameters"]
    assert unet["bytes"]["int4"] == unet["parameters"] // 2 and unet["bytes"]["fp8"] == unet["parameters"]
    assert unet["parameters"] < unet["bytes"]["int8"] < 1.02 * unet["parameters"]
    assert unet["parameters"] // 2 < unet["bytes"]["nf4"] < 0.52 * unet["parameters"]


def test_a_single_files_component_sizes_are_its_headers_byte_counts(cli, tiny_sdxl):
    from imagegen.families import FAMILIES

    _, path = tiny_sdxl
    data = plan_json(cli, "--model", path, "--vram", "8", "--size", "64x64")
    parts = FAMILIES["sdxl"].checkpoint_parts
    expected = {name: header_bytes(path, lambda k, p=pattern: re.search(p, k)) for name, pattern in parts.items()}
    assert {c["name"]: c["bytes"]["stored"] for c in data["components"]} == expected
    assert data["family"] == "sdxl" and data["size"] == "64x64"


def test_a_cached_repo_is_read_from_its_headers_in_the_presets_variant(cli, tiny_sdxl, tmp_path, monkeypatch,
                                                                       isolated_home):
    from huggingface_hub import constants
    from safetensors.numpy import load_file, save_file

    folder, _ = tiny_sdxl
    cache = tmp_path / "hub"
    snapshot = cache / "models--test--tiny-sdxl" / "snapshots" / ("a" * 40)
    shutil.copytree(folder, snapshot)
    (cache / "models--test--tiny-sdxl" / "refs").mkdir()
    (cache / "models--test--tiny-sdxl" / "refs" / "main").write_text("a" * 40)
    plain = snapshot / "unet" / "diffusion_pytorch_model.safetensors"
    unet = plain.with_suffix(".fp16.safetensors")  # the preset's variant, which its load reads
    save_file({k: v.astype(np.float16) for k, v in load_file(plain).items()}, unet)
    shutil.rmtree(snapshot / "text_encoder_2")  # not pulled: its figure comes from the configs
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    (isolated_home / "presets").mkdir(parents=True)
    (isolated_home / "presets" / "tiny.toml").write_text('family = "sdxl"\nmodel = "test/tiny-sdxl"\nvariant = '
                                                         '"fp16"\n[defaults]\nsteps = 2\ncfg = 5.0\nsize = "64x64"\n'
                                                         'scheduler = "Euler"\n')
    data = plan_json(cli, "--preset", "tiny", "--vram", "8")
    sources = {c["name"]: c["source"] for c in data["components"]}
    assert sources == {"text_encoder": "headers", "text_encoder_2": "configs", "unet": "headers", "vae": "headers"}
    stored = {c["name"]: c["bytes"]["stored"] for c in data["components"]}
    assert stored["unet"] == header_bytes(unet) < header_bytes(plain) and stored["text_encoder_2"] is None


def test_with_nothing_cached_the_sizes_come_from_the_shipped_configs(cli):
    data = plan_json(cli, "--preset", "flux-dev", "--vram", "12")
    params = {c["name"]: c["parameters"] for c in data["components"]}
    assert {c["source"] for c in data["components"]} == {"configs"}
    assert 11.8e9 < params["transformer"] < 12.0e9 and 4.7e9 < params["text_encoder_2"] < 4.8e9
    assert all(c["bytes"]["stored"] is None for c in data["components"])


# ---- the plan


def flux_dev_model_offload_peak() -> int:
    """The documented formula by hand: the transformer in bf16 plus its activations (4096 tokens of 3072 at 1024px)."""
    transformer = next(c for c in estimate("flux-dev").components if c.name == "transformer")
    return transformer.parameters * 2 + 1 * 4096 * 3072 * 2 * ACTIVATION_FACTOR["transformer"] + RESERVE


def test_the_model_offload_peak_is_the_largest_component_and_its_activations():
    est = estimate("flux-dev")
    assert peak("model-offload", est.components, est.activations) == flux_dev_model_offload_peak()


@pytest.mark.parametrize(("preset", "vram", "chosen"), [
    ("sdxl", 24, "none"), ("sdxl", 12, "none"), ("sdxl", 8, "model-offload"), ("sdxl", 6, "int8"),
    ("sdxl", 4, None),
    ("flux-dev", 40, "none"), ("flux-dev", 24, "model-offload"), ("flux-dev", 16, "int8"),
    ("flux-dev", 12, "group-offload"), ("flux-dev", 8, "group-offload"), ("flux-dev", 2, None),
    ("flux-schnell", 12, "group-offload"),
    ("sd3.5-large", 32, "none"), ("sd3.5-large", 24, "model-offload"), ("sd3.5-large", 12, "int8"),
    ("sd3.5-large", 8, "group-offload"),
])
def test_the_step_chosen_for_a_vram_figure(preset, vram, chosen):
    est = estimate(preset)
    assert choose(est.components, est.activations, vram * GiB).chosen == chosen


def test_vae_tiling_is_chosen_when_decoding_the_batch_is_the_peak():
    est = estimate("flux-schnell", batch=4)
    plan = choose(est.components, est.activations, 36 * GiB)
    assert plan.chosen == "vae-tiling" and not plan.steps[0].fits
    assert est.activations.decode == 4 * est.activations.decode_tiled  # four images, each within one tile


@pytest.mark.parametrize("preset", ["sdxl", "flux-dev", "sd3.5-large"])
def test_more_vram_never_picks_a_later_step(preset):
    est = estimate(preset)
    order = {s: i for i, s in enumerate(STEPS)}
    picks = [choose(est.components, est.activations, int(gb * GiB)).chosen for gb in range(1, 81)]
    ranks = [order.get(p, len(STEPS)) for p in picks]
    assert ranks == sorted(ranks, reverse=True) and picks[-1] == "none"


def test_choose_is_pure_and_quantizes_the_biggest_component():
    act = Activations(denoiser=GiB, decode=2 * GiB, decode_tiled=GiB, batch=1, tokens=1, width=1, value_bytes=2,
                      factor=1, tile=512)
    parts = (Component("transformer", "denoiser", "configs", 5 * GiB, None, "bf16", GiB // 4, 0, GiB // 64),
             Component("vae", "vae", "configs", GiB // 8, None, "bf16", GiB // 64, 0, GiB // 256))
    plan = choose(parts, act, 9 * GiB)
    peaks = {s.step: s.peak for s in plan.steps}
    assert peaks["none"] == 10 * GiB + GiB // 4 + 2 * GiB + RESERVE
    assert peaks["model-offload"] == 10 * GiB + GiB + RESERVE
    assert peaks["int8"] == round(5 * GiB * 1.01) + GiB + RESERVE
    assert peaks["group-offload"] == GiB + GiB + RESERVE  # two blocks of a quarter GiB parameters, in bf16
    assert plan.chosen == "int8" and plan.quantized == "transformer"


def test_cfg_doubles_the_denoisers_batch_only_where_it_runs_in_one_call():
    assert estimate("sdxl").activations.batch == 2  # preset cfg 5
    assert estimate("sdxl", cfg=1.0).activations.batch == 1
    assert estimate("flux-dev", cfg=3.0, batch=2).activations.batch == 2  # true CFG: a second, separate pass


def test_the_human_plan_says_why_each_earlier_step_does_not_fit(cli):
    result = cli("plan", "--preset", "flux-dev", "--vram", "12")
    assert result.code == 0, result.err
    assert re.search(r"model-offload\s+23\.6 GiB\s+no: 23\.6 GiB > 12\.0 GiB", result.out), result.out
    assert re.search(r"group-offload\s+\S+ GiB\s+yes  <- chosen", result.out)
    assert "transformer     configs" in result.out and "plan: group-offload" in result.out


def test_the_json_lists_every_step_and_the_choice(cli):
    data = plan_json(cli, "--preset", "sdxl", "--vram", "8", "--batch-size", "2")
    assert [s["step"] for s in data["steps"]] == list(STEPS)
    assert data["chosen"] == "model-offload" and data["vram"] == 8 * GiB and data["batch_size"] == 2
    assert [s["fits"] for s in data["steps"]][:3] == [False, False, True]
    assert data["activations"]["denoiser_batch"] == 4


# ---- the VRAM figure and refusals


def test_the_free_memory_of_the_cuda_gpu_is_the_default_vram(cli, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (16 * GiB, 24 * GiB))
    data = plan_json(cli, "--preset", "sdxl")
    assert data["vram"] == 16 * GiB and data["vram_source"] == "free on the CUDA GPU" and data["chosen"] == "none"


def test_no_gpu_and_no_vram_asks_for_vram(cli, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    one_line(cli("plan", "--preset", "sdxl"), 2, "no CUDA GPU", "--vram")


@pytest.mark.parametrize(("args", "words"), [
    (("--preset", "sdxxl", "--vram", "8"), ("unknown preset 'sdxxl'", "did you mean 'sdxl'")),
    (("--preset", "sdxl", "--size", "big", "--vram", "8"), ("--size", "WIDTHxHEIGHT")),
    (("--preset", "sdxl", "--vram", "0"), ("--vram", "positive")),
    (("--preset", "sdxl", "--vram", "-4"), ("--vram", "positive")),
    (("--preset", "sdxl", "--vram", "nan"), ("--vram", "positive")),
    (("--preset", "sdxl", "--vram", "lots"), ("--vram",)),
    (("--vram", "8"), ("--preset", "--model")),
    (("--model", "./missing.safetensors", "--vram", "8"), ("no such file",)),
    (("--model", "model.ckpt", "--vram", "8"), ("--model model.ckpt", "pickle")),
    (("--model", "nobody/nothing", "--vram", "8"), ("no model_index.json", "--configs-only")),
])
def test_refusals_are_one_line(cli, args, words, tmp_path):
    (tmp_path / "model.ckpt").write_bytes(b"a pickle")  # the test runs in tmp_path
    one_line(cli("plan", *args), 2, *words)


def test_nothing_fitting_is_one_line_after_the_plan(cli):
    result = cli("plan", "--preset", "flux-dev", "--vram", "1", "--json")
    assert json.loads(result.out)["chosen"] is None
    one_line(result, 1, "nothing fits", "sequential-offload")


def test_the_planner_imports_no_torch_until_it_plans():
    code = "import sys, imagegen.memory, imagegen.cli.plan; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
