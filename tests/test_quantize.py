"""--quantize beyond the denoiser: a named component (Flux's T5) and a GGUF transformer file (city96's layout, written
by imagegen.testing.write_gguf), each through the libraries' own quantization configs, recorded and replayed; and the
refusals, one line each before loading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

SMALL = ("--size", "64x64", "--steps", "3", "--seed", "4")


@pytest.fixture(scope="module")
def ggufs(tiny_models, tmp_path_factory) -> dict[str, Path]:
    from imagegen.testing import write_gguf

    root = tmp_path_factory.mktemp("gguf")
    return {name: write_gguf(tiny_models[name], root / f"{name}-Q8_0.gguf") for name in ("flux", "sd3")}


def one_line_error(result, code: int = 2) -> str:
    assert result.code == code, (result.out, result.err)
    lines = result.err.strip().splitlines()
    assert lines[-1].startswith("imagegen: error: ") and "Traceback" not in result.err, result.err
    return lines[-1]


def generate(cli, model, out: Path, *args) -> tuple[dict, dict]:
    result = cli("txt2img", "a red fox", "--model", model, *args, *SMALL, "-o", out, "--json")
    assert result.code == 0, result.err
    image = json.loads(result.out)["images"][0]
    return image, json.loads(Path(image["path"]).with_suffix(".json").read_text())


def pixels_apart(a: dict, b: dict) -> float:
    import numpy as np
    from PIL import Image

    return float(np.abs(np.asarray(Image.open(a["path"]), float) - np.asarray(Image.open(b["path"]), float)).mean())


def loaded_pipe():
    from imagegen.loading import _LOADED

    return next(iter(_LOADED.values())).pipe


def test_a_gguf_file_of_another_family_is_refused_before_loading(cli, tiny_models, ggufs):
    err = one_line_error(cli("txt2img", "a fox", "--model", tiny_models["flux"], "--quantize",
                             f"gguf:{ggufs['sd3']}", *SMALL))
    assert "a sd3 GGUF file, not a flux one (the Flux transformer)" in err


def test_a_file_that_is_not_gguf_is_refused(cli, tiny_models, tmp_path):
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"not a gguf file at all" * 10)
    err = one_line_error(cli("txt2img", "a fox", "--model", tiny_models["flux"], "--quantize", f"gguf:{fake}", *SMALL))
    assert "not a readable GGUF file" in err and "fake.gguf" in err


def test_a_missing_gguf_file_is_refused(cli, tiny_models, tmp_path):
    err = one_line_error(cli("txt2img", "a fox", "--model", tiny_models["flux"], "--quantize",
                             f"gguf:{tmp_path / 'none.gguf'}", *SMALL))
    assert "none.gguf: no such file" in err


def test_a_gguf_file_as_model_names_the_quantize_flag(cli, ggufs):
    err = one_line_error(cli("txt2img", "a fox", "--model", ggufs["flux"], *SMALL))
    assert "--quantize gguf:FILE" in err


@pytest.mark.slow
@pytest.mark.parametrize("family, bound", [("flux", 0.2), ("sd3", 0.3)])
def test_a_gguf_transformer_loads_quantized_and_replays(cli, tiny_models, ggufs, tmp_path, family, bound):
    """The Q8_0 file's linear layers stay GGUF-quantized (dequantized as they run); the image stays within a
    measured bound of the unquantized one (Flux 0.008/255, SD3 0.03/255 at 64x64, 2 steps) and replays exactly."""
    model = tiny_models[family]
    plain, _ = generate(cli, model, tmp_path / "plain")
    image, record = generate(cli, model, tmp_path / "gguf", "--quantize", f"gguf:{ggufs[family]}")
    recorded = record["runtime"]["quantize"]  # portable metadata: relative to the image's folder, no absolute path
    assert recorded.startswith("gguf:") and not Path(recorded[5:]).is_absolute()
    assert (Path(image["path"]).parent / recorded[5:]).resolve() == ggufs[family].resolve()
    linears = {type(m).__name__ for m in loaded_pipe().transformer.modules() if "Linear" in type(m).__name__}
    assert "GGUFLinear" in linears
    assert 0 < pixels_apart(image, plain) < bound
    result = cli("reproduce", image["path"], "--verify")
    assert result.code == 0, result.err


@pytest.mark.slow
def test_a_named_component_loads_quantized_with_its_own_library(cli, tiny_models, tmp_path):
    """text_encoder_2=int8 quantizes Flux's T5 through transformers' TorchAoConfig (a transformers model), the
    transformer through diffusers' one; both recorded and replayed."""
    model = tiny_models["flux"]
    plain, _ = generate(cli, model, tmp_path / "plain")
    image, record = generate(cli, model, tmp_path / "t5", "--quantize", "fp8,text_encoder_2=int8")
    assert record["runtime"]["quantize"] == "fp8,text_encoder_2=int8"
    pipe = loaded_pipe()
    t5 = pipe.text_encoder_2.encoder.block[0].layer[0].SelfAttention.q.weight
    assert type(t5).__module__.startswith("torchao"), type(t5)
    assert type(pipe.transformer.transformer_blocks[0].attn.to_q.weight).__module__.startswith("torchao")
    clip = [p for n, p in pipe.text_encoder.named_parameters() if n.endswith("q_proj.weight")]
    assert clip and all(type(p).__module__ == "torch.nn.parameter" for p in clip)  # not named: not quantized
    assert pixels_apart(image, plain) > 0
    result = cli("reproduce", image["path"], "--verify")
    assert result.code == 0, result.err


def test_nf4_without_bitsandbytes_names_the_gpu_and_the_package(cli, tiny_models, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else
                        real(name, *a))
    err = one_line_error(cli("txt2img", "a fox", "--model", tiny_models["flux"], "--quantize", "nf4", *SMALL))
    assert "needs a CUDA GPU and the bitsandbytes package (pip install bitsandbytes); on the CPU use int8" in err


def test_each_component_gets_its_own_librarys_config():
    """What from_pretrained is given on a GPU (nf4 and int4 run only there): diffusers' config class for the
    transformer, transformers' for the T5, told apart by the pipeline's constructor annotations."""
    import diffusers
    import transformers

    from imagegen.families import get_family
    from imagegen.quantize import configs

    made = configs("int8,text_encoder_2=fp8,text_encoder=int4", get_family("flux"), diffusers.FluxPipeline, "bfloat16")
    assert type(made["transformer"]) is diffusers.TorchAoConfig
    assert type(made["text_encoder_2"]) is transformers.TorchAoConfig
    assert type(made["text_encoder_2"].quant_type).__name__ == "Float8WeightOnlyConfig"
    assert type(made["text_encoder"]) is transformers.TorchAoConfig
    assert type(made["text_encoder"].quant_type).__name__ == "Int4WeightOnlyConfig"
    assert str(getattr(made["text_encoder"].quant_type.int4_packing_format, "value", None) or
               made["text_encoder"].quant_type.int4_packing_format) == "tile_packed_to_4d"


@pytest.mark.parametrize("text, canonical", [
    ("INT8", "int8"), (" fp8 , text_encoder_2=int8 ", "fp8,text_encoder_2=int8"), ("none", "none"),
])
def test_quantize_values_are_spelled_one_way(text, canonical):
    from imagegen.quantize import parse_quantize

    assert parse_quantize(text) == canonical


def test_nf4_configs_where_bitsandbytes_is_installed():
    pytest.importorskip("bitsandbytes")
    import diffusers
    import transformers

    from imagegen.families import get_family
    from imagegen.quantize import configs

    made = configs("nf4,text_encoder_2=nf4", get_family("flux"), diffusers.FluxPipeline, "bfloat16")
    assert type(made["transformer"]) is diffusers.BitsAndBytesConfig
    assert type(made["text_encoder_2"]) is transformers.BitsAndBytesConfig
    assert made["transformer"].bnb_4bit_quant_type == "nf4" and made["transformer"].load_in_4bit


def test_device_refusals_before_loading(monkeypatch):
    import torch

    from imagegen.errors import UsageError
    from imagegen.quantize import check_device

    with pytest.raises(UsageError, match="needs a CUDA GPU"):
        check_device("text_encoder_2=nf4", "cpu")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (8, 6))  # an RTX 3090
    with pytest.raises(UsageError, match="compute capability 8.9 or later \\(this one is 8.6\\); use int8"):
        check_device("fp8", "cuda")
    check_device("int8,text_encoder_2=int4", "cuda")  # fine there
    with pytest.raises(UsageError, match="nf4 with --offload group: bitsandbytes' layers cannot be moved"):
        check_device("nf4", "cuda", "group")
