"""Memory and speed settings (imagegen.runtime): each applied through diffusers' machinery, recorded and replayed;
refusals in one line before loading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

SMALL = ("--size", "64x64", "--steps", "3", "--seed", "4")


def one_line_error(result, code: int = 2) -> str:
    assert result.code == code, (result.out, result.err)
    assert result.err.strip().splitlines()[-1].startswith("imagegen: error: ") and "Traceback" not in result.err
    assert all(line.startswith("note:") for line in result.err.strip().splitlines()[:-1]), result.err
    return result.err.strip().splitlines()[-1]


@pytest.mark.parametrize("args, words", [
    (("--cache", "fastercache:zero"), "must be a int"),
    (("--cache", "teacache"), "unknown cache"),
    (("--cache", "fbcache:zero"), "must be a float"),
    (("--cache", "fbcache:-1"), "above 0"),
    (("--offload", "disk"), "one of none, model, group, sequential"),
    (("--vae-tiling", "maybe"), "on or off"),
    (("--attention", "warp-speed"), "unknown backend"),
    (("--attention", "flash"), "not available here"),
])
def test_bad_settings_are_one_line(cli, tiny_models, args, words):
    err = one_line_error(cli("txt2img", "a fox", "--model", tiny_models["flux"], *args, *SMALL))
    assert words in err


def test_a_cache_on_a_unet_is_refused(cli, tiny_models):
    err = one_line_error(cli("txt2img", "a fox", "--model", tiny_models["sdxl"], "--cache", "fbcache", *SMALL))
    assert "UNet2DConditionModel takes no cache hooks" in err


def test_magcache_and_fastercache_need_what_the_family_gives():
    """A denoiser that takes cache hooks, of a family with no calibrated MagCache ratios or attention block names."""
    from imagegen.errors import UsageError
    from imagegen.families import Family
    from imagegen.runtime import _check_cache_family

    bare = type("Bare", (Family,), {"name": "bare", "label": "Bare"})()
    with pytest.raises(UsageError, match="diffusers has none for Bare; use fbcache or taylorseer"):
        _check_cache_family("magcache:0.1", bare)
    with pytest.raises(UsageError, match="FasterCache needs the names of Bare's attention blocks"):
        _check_cache_family("fastercache", bare)


def test_sequential_offload_needs_a_gpu(cli, tiny_models):
    err = one_line_error(cli("txt2img", "a fox", "--model", tiny_models["flux"], "--offload", "sequential",
                             "--device", "cpu", *SMALL))
    assert "needs a GPU" in err


def generate(cli, model, out: Path, *args) -> tuple[dict, dict]:
    result = cli("txt2img", "a red fox", "--model", model, *args, *SMALL, "-o", out, "--json")
    assert result.code == 0, result.err
    image = json.loads(result.out)["images"][0]
    return image, json.loads(Path(image["path"]).with_suffix(".json").read_text())


def loaded_pipe():
    from imagegen.loading import _LOADED

    return next(iter(_LOADED.values())).pipe


@pytest.mark.slow
def test_first_block_cache_skips_block_calls_and_replays(cli, tiny_models, tmp_path):
    import torch

    model = tiny_models["flux"]
    calls = {"n": 0}

    def count(*_):
        calls["n"] += 1

    def counted(*args) -> tuple[dict, int]:
        calls["n"] = 0
        from imagegen.loading import _LOADED

        _LOADED.clear()
        handles = []
        from imagegen import loading

        real = loading.apply_options

        def hooked(pipe, family, options):
            real(pipe, family, options)
            # a block's attention runs only when the block computes (a cache hook returns its cached output instead)
            blocks = [*pipe.transformer.transformer_blocks, *pipe.transformer.single_transformer_blocks]
            handles.extend(block.attn.register_forward_pre_hook(count) for block in blocks)

        loading.apply_options = hooked
        try:
            image, record = generate(cli, model, tmp_path / str(len(args)), *args)
        finally:
            loading.apply_options = real
            for handle in handles:
                handle.remove()
        return image, record, calls["n"]

    plain, _, full = counted()
    cached, record, fewer = counted("--cache", "fbcache:0.5")
    assert record["runtime"]["cache"] == "fbcache:0.5"
    assert fewer < full, (fewer, full)  # steps where the first block changed little skipped the others
    assert cached["pixels_sha256"] != plain["pixels_sha256"]
    assert cli("reproduce", cached["path"], "--verify").code == 0
    assert torch.is_grad_enabled()


@pytest.mark.slow
@pytest.mark.parametrize("offload", ["model", "group"])
def test_offload_on_the_cpu_keeps_the_pixels_and_is_recorded(cli, tiny_models, tmp_path, offload):
    model = tiny_models["sdxl"]
    plain, _ = generate(cli, model, tmp_path / "plain")
    image, record = generate(cli, model, tmp_path / offload, "--offload", offload)
    assert image["pixels_sha256"] == plain["pixels_sha256"] and record["runtime"]["offload"] == offload
    pipe = loaded_pipe()
    if offload == "model":
        assert pipe._offload_gpu_id is not None or getattr(pipe, "_all_hooks", None)
    else:
        assert getattr(pipe.unet, "_diffusers_hook", None) is not None
    assert cli("reproduce", image["path"], "--verify").code == 0


@pytest.mark.slow
def test_vae_tiling_and_slicing_are_applied_and_replayed(cli, tiny_models, tmp_path):
    model = tiny_models["sdxl"]
    plain, _ = generate(cli, model, tmp_path / "plain")
    image, record = generate(cli, model, tmp_path / "tiled", "--vae-tiling", "on", "--vae-slicing", "on")
    assert loaded_pipe().vae.use_tiling and loaded_pipe().vae.use_slicing
    assert (record["runtime"]["vae_tiling"], record["runtime"]["vae_slicing"]) == ("on", "on")
    assert image["pixels_sha256"] == plain["pixels_sha256"]  # 64x64 is below the tile size: one tile
    assert cli("reproduce", image["path"], "--verify").code == 0
    generate(cli, model, tmp_path / "again")
    assert not loaded_pipe().vae.use_tiling  # another setting, another loaded pipeline


@pytest.mark.slow
def test_attention_backend_is_set_and_recorded(cli, tiny_models, tmp_path):
    model = tiny_models["flux"]
    plain, _ = generate(cli, model, tmp_path / "plain")
    image, record = generate(cli, model, tmp_path / "native", "--attention", "native")
    assert record["runtime"]["attention"] == "native"
    assert image["pixels_sha256"] == plain["pixels_sha256"]  # PyTorch's SDPA either way on the CPU
    assert cli("reproduce", image["path"], "--verify").code == 0


@pytest.mark.slow
@pytest.mark.parametrize("kind, bound", [("int8", 1.0), ("fp8", 3.0)])
def test_quantize_stores_the_denoiser_quantized_close_to_full_precision(cli, tiny_models, tmp_path, kind, bound):
    """torchao weight-only through diffusers' quantization config: the denoiser's linear weights become torchao
    tensors; the mean pixel difference from float32 stays under a measured bound (int8 0.12/255, fp8 0.9/255 on a
    tiny SDXL at 64x64, 3 steps), and the replay is exact."""
    import numpy as np
    from PIL import Image

    model = tiny_models["sdxl"]
    plain, _ = generate(cli, model, tmp_path / "plain")
    image, record = generate(cli, model, tmp_path / kind, "--quantize", kind)
    assert record["runtime"]["quantize"] == kind
    weight = loaded_pipe().unet.down_blocks[1].attentions[0].proj_in.weight
    assert type(weight).__module__.startswith("torchao"), type(weight)
    diff = np.abs(np.asarray(Image.open(image["path"]), float) - np.asarray(Image.open(plain["path"]), float))
    assert 0 < diff.mean() < bound
    assert cli("reproduce", image["path"], "--verify").code == 0


@pytest.mark.parametrize("value, words", [
    ("nf4", "bitsandbytes 4-bit NormalFloat needs a CUDA GPU"),
    ("int4", "needs a CUDA GPU"),
    ("int3", "unknown quantization 'int3'"),
    ("text_encoder_9=int8", "the model has no component 'text_encoder_9'; its components: text_encoder, "),
    ("int8,unet=fp8", "unet is quantized twice (int8, unet=fp8)"),
    ("int8,gguf:x.gguf", "the denoiser is quantized twice"),
    ("gguf:", "name the GGUF file"),
    ("gguf:flux.gguf", "SDXL transformers are not loaded from GGUF files"),
])
def test_quantize_refusals_are_one_line(cli, tiny_models, value, words, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec  # nf4's refusal is the device's, whether bitsandbytes is installed or not
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "bitsandbytes" else
                        real(name, *a))
    err = one_line_error(cli("txt2img", "a fox", "--model", tiny_models["sdxl"], "--quantize", value, *SMALL))
    assert words in err


@pytest.mark.slow
@pytest.mark.parametrize("model, args, mode", [("sdxl", ("--compile",), "regional"), ("sd3", ("--compile",), "regional"),
                                               ("flux", ("--compile", "full"), "full")])
def test_compile_is_applied_recorded_and_replayed(cli, tiny_models, tmp_path, monkeypatch, model, args, mode):
    """A bare --compile compiles each repeated block (diffusers' class names them, or the family where it does not:
    SD3); full compiles the whole denoiser. The eager backend keeps the test fast: it traces as inductor would."""
    monkeypatch.setenv("IMAGEGEN_COMPILE_BACKEND", "eager")
    from imagegen.loading import _LOADED

    image, record = generate(cli, tiny_models[model], tmp_path / mode, *args)
    assert record["runtime"]["compile"] == mode
    denoiser = getattr(loaded_pipe(), "unet", None) or loaded_pipe().transformer
    compiled = [type(m).__name__ for m in denoiser.modules() if getattr(m, "_compiled_call_impl", None) is not None]
    if mode == "full":
        assert compiled[0] == type(denoiser).__name__
    else:
        assert compiled and type(denoiser).__name__ not in compiled
        assert set(compiled) == {"BasicTransformerBlock" if model == "sdxl" else "JointTransformerBlock"}
    result = cli("reproduce", image["path"], "--verify")
    _LOADED.clear()  # the compiled pipeline is not for other tests
    assert result.code == 0, result.err


def test_compile_refuses_an_unknown_mode_in_one_line(cli, tiny_models):
    err = one_line_error(cli("txt2img", "a fox", "--model", tiny_models["sdxl"], "--compile", "ful", *SMALL))
    assert "unknown compile mode 'ful'" in err and "regional, full" in err


@pytest.mark.parametrize("words, read", [
    (["--compile"], ["--compile", "regional"]),
    (["--compile", "full", "a fox"], ["--compile", "full", "a fox"]),
    (["--compile", "a fox"], ["--compile", "regional", "a fox"]),  # a prompt cannot be a mode
    (["--compile", "prompts.txt"], ["--compile", "regional", "prompts.txt"]),
    (["--compile", "--size", "64x64"], ["--compile", "regional", "--size", "64x64"]),
    (["--compile", "ful"], ["--compile", "ful"]),  # a mode misspelt: refused by the parser, naming the choices
    (["--", "--compile"], ["--", "--compile"]),
])
def test_a_bare_compile_means_regional(words, read):
    from imagegen.cli.options import with_bare_values

    assert with_bare_values(["txt2img", *words]) == ["txt2img", *read]


@pytest.mark.slow
@pytest.mark.parametrize("cache", ["magcache:0.5", "fastercache"])
def test_magcache_and_fastercache_change_the_image_and_replay(cli, tiny_models, tmp_path, cache):
    """MagCache (diffusers' FLUX.1 ratios, interpolated to the call's steps) and FasterCache (Flux's attention
    blocks, the pipeline's current timestep), through enable_cache; recorded and replayed exactly."""
    model = tiny_models["flux"]
    plain, _ = generate(cli, model, tmp_path / "plain", "--steps", "8")
    image, record = generate(cli, model, tmp_path / "cached", "--cache", cache, "--steps", "8")
    assert record["runtime"]["cache"] == cache
    registries = [getattr(m, "_diffusers_hook", None) for m in loaded_pipe().transformer.modules()]
    hooks = {name for registry in registries if registry is not None for name in registry.hooks}
    assert any(name.startswith(cache.partition(":")[0].replace("cache", "_cache")) for name in hooks), hooks
    assert image["pixels_sha256"] != plain["pixels_sha256"]
    result = cli("reproduce", image["path"], "--verify")
    assert result.code == 0, result.err


@pytest.mark.slow
@pytest.mark.parametrize("cache", ["magcache:0.5", "fastercache"])
def test_caches_follow_img2img_calls(cli, tiny_models, tmp_path, cache):
    """img2img runs the last `strength` of the steps (MagCache's count) in a pipeline made with from_pipe, which keeps
    no current timestep of its own (FasterCache reads the scheduler's)."""
    from PIL import Image

    Image.new("RGB", (64, 64), (200, 100, 50)).save(tmp_path / "init.png")
    result = cli("img2img", "a fox", "--image", tmp_path / "init.png", "--strength", "0.5", "--model",
                 tiny_models["flux"], "--cache", cache, "--size", "64x64", "--steps", "8", "--seed", "2", "-o",
                 tmp_path / "out", "--json")
    assert result.code == 0, result.err
    image = json.loads(result.out)["images"][0]
    assert cli("reproduce", image["path"], "--verify").code == 0
