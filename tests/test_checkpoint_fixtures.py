"""Original-layout single-file fixtures (imagegen.testing.checkpoints) load back through diffusers' own
from_single_file, tensor for tensor; header-only files are valid and sparse; real-size configs give the key shapes
diffusers' converters expect."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

CONFIGS = Path(__file__).resolve().parents[1] / "imagegen" / "configs"


def _single_file_family(index: Path) -> bool:
    """Whether the folder's pipeline belongs to a family with single-file checkpoint kinds (an original layout)."""
    from imagegen.families import family_of_pipeline

    family = family_of_pipeline(json.loads(index.read_text()).get("_class_name"))
    return family is not None and bool(family.checkpoints)


REAL_CONFIGS = sorted(p.parent for p in CONFIGS.glob("*/model_index.json") if _single_file_family(p))

# what diffusers' infer_diffusers_model_type may say of a real-size header, per pipeline class prefix
REAL_TYPES = {"StableDiffusionXL": {"xl_base", "xl_refiner", "xl_inpaint"},
              "StableDiffusion3": {"sd3", "sd35_medium", "sd35_large"},
              "Flux": {"flux-dev", "flux-schnell", "flux-fill", "flux-depth"},
              "StableDiffusion": {"v1", "v2", "inpainting", "inpainting_v2"}}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """The tiny sd15, sdxl, sd3 and Flux (dev-like: with guidance_in) folders, built once for this module."""
    from imagegen.testing import build_tiny

    root = tmp_path_factory.mktemp("checkpoint-fixtures")
    options = {"sd15": {}, "sdxl": {}, "sd3": {}, "flux": {"guidance_embeds": True}}
    return {family: build_tiny(family, root / family, **opts) for family, opts in options.items()}


def _reference(folder: Path):
    from diffusers import DiffusionPipeline

    return DiffusionPipeline.from_pretrained(folder, local_files_only=True)


def _differing(module, reference) -> list[str]:
    """Names of the reference's tensors that the loaded module lacks, left on meta, or holds with other values."""
    import torch

    got, want = module.state_dict(), reference.state_dict()
    return [k for k, v in want.items() if k not in got or got[k].is_meta or not torch.equal(got[k], v)]


def _assert_same_pipeline(pipe, reference, allowed: dict[str, set[str]] | None = None) -> None:
    """Every model component of ``pipe`` equals the reference's, apart from the ``allowed`` tensor names."""
    import torch

    modules = {n: m for n, m in reference.components.items() if isinstance(m, torch.nn.Module)}
    assert modules
    for name, module in modules.items():
        assert set(_differing(pipe.components[name], module)) == (allowed or {}).get(name, set()), name


def _keys(path: Path, framework: str = "pt") -> dict[str, tuple[str, tuple[int, ...]]]:
    """Name -> (dtype, shape) of every tensor in the file, read from its header only."""
    from safetensors import safe_open

    with safe_open(str(path), framework) as f:
        names = f.keys()
        return {k: (f.get_slice(k).get_dtype(), tuple(f.get_slice(k).get_shape())) for k in names}


def _flux_to_diffusers(state: dict, config) -> dict:
    """diffusers' Flux converter with the transformer's own width: diffusers hard-codes FLUX.1's inner_dim 3072, so
    it cannot convert a tiny Flux (imagegen converts Flux keys itself for that reason)."""
    import inspect

    import diffusers.loaders.single_file_utils as sfu

    source = inspect.getsource(sfu.convert_flux_transformer_checkpoint_to_diffusers)
    width = "kwargs['config']['num_attention_heads'] * kwargs['config']['attention_head_dim']"
    patched = source.replace("inner_dim = 3072", f"inner_dim = {width}")
    assert patched != source
    namespace = dict(vars(sfu))
    exec(patched, namespace)  # diffusers' own source with that one constant changed
    return namespace["convert_flux_transformer_checkpoint_to_diffusers"](dict(state), config=dict(config))


def test_header_only_file_is_valid_and_sparse(tmp_path):
    import torch
    from safetensors import safe_open

    from imagegen.testing import write_header_only

    shapes = {"big": ("F16", (4096, 4096, 16)), "b": ("BF16", (3, 5)), "f8": ("F8_E4M3", (7,)), "w": ("F32", (2, 2))}
    path = write_header_only(tmp_path / "h.safetensors", shapes, metadata={"modelspec.architecture": "x"})
    assert _keys(path) == shapes
    with safe_open(str(path), "pt") as f:
        assert f.metadata() == {"modelspec.architecture": "x"}
        assert torch.equal(f.get_tensor("w"), torch.zeros(2, 2))  # the hole reads back as zeros
    apparent = path.stat().st_size
    assert apparent > 4096 * 4096 * 16 * 2
    assert path.stat().st_blocks * 512 < apparent / 1000


@pytest.mark.slow
@pytest.mark.parametrize("text_layout", ["clip", "openclip"])
def test_sd_layouts_round_trip(tiny, tmp_path, text_layout):
    from diffusers import StableDiffusionPipeline

    from imagegen.testing import write_checkpoint

    path = write_checkpoint(tiny["sd15"], tmp_path / "sd.safetensors", text_layout=text_layout)
    keys = _keys(path)
    assert keys["first_stage_model.encoder.mid.attn_1.q.weight"][1][2:] == (1, 1)  # LDM's 1x1-conv attention
    assert "model.diffusion_model.input_blocks.0.0.weight" in keys
    if text_layout == "clip":  # SD 1.x
        assert "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight" in keys
    else:  # SD 2.x: OpenCLIP with q, k, v fused
        assert keys["cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight"][1] == (96, 32)
        assert not any(k.startswith("cond_stage_model.transformer.") for k in keys)
    pipe = StableDiffusionPipeline.from_single_file(str(path), config=str(tiny["sd15"]), local_files_only=True)
    _assert_same_pipeline(pipe, _reference(tiny["sd15"]))


@pytest.mark.slow
def test_sdxl_round_trips(tiny, tmp_path):
    import torch
    from diffusers import StableDiffusionXLPipeline

    from imagegen.testing import write_checkpoint

    path = write_checkpoint(tiny["sdxl"], tmp_path / "sdxl.safetensors")
    keys = _keys(path)
    assert "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight" in keys
    assert "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight" in keys
    assert "model.diffusion_model.label_emb.0.0.weight" in keys
    reference = _reference(tiny["sdxl"])
    pipe = StableDiffusionXLPipeline.from_single_file(str(path), config=str(tiny["sdxl"]), local_files_only=True)
    _assert_same_pipeline(pipe, reference)
    from safetensors.torch import load_file

    projection = load_file(str(path))["conditioner.embedders.1.model.text_projection"]
    assert torch.equal(projection, reference.text_encoder_2.text_projection.weight.T)  # OpenCLIP's x @ proj


@pytest.mark.slow
def test_sd3_all_in_one_round_trips(tiny, tmp_path):
    import torch
    from diffusers import StableDiffusion3Pipeline

    from imagegen.testing import write_checkpoint

    path = write_checkpoint(tiny["sd3"], tmp_path / "sd3.safetensors")
    keys = _keys(path)
    assert "model.diffusion_model.joint_blocks.1.context_block.adaLN_modulation.1.bias" in keys
    assert "text_encoders.clip_l.transformer.text_projection.weight" in keys
    assert "text_encoders.t5xxl.transformer.shared.weight" in keys
    assert "text_encoders.t5xxl.transformer.encoder.embed_tokens.weight" not in keys  # tied: stored once
    pipe = StableDiffusion3Pipeline.from_single_file(str(path), config=str(tiny["sd3"]), local_files_only=True)
    # diffusers behaviours: (1) it always replaces clip_l's text_projection with the identity, whatever the file
    # holds (SD3's reference code never projects clip_l's pooled output); (2) it loads T5's shared.weight but
    # leaves encoder.embed_tokens (tied to it) on meta until tie_weights() is called.
    assert torch.equal(pipe.text_encoder.text_projection.weight, torch.eye(32))
    assert pipe.text_encoder_3.encoder.embed_tokens.weight.is_meta
    pipe.text_encoder_3.tie_weights()
    _assert_same_pipeline(pipe, _reference(tiny["sd3"]), allowed={"text_encoder": {"text_projection.weight"}})


@pytest.mark.slow
def test_sd3_transformer_and_vae_file_round_trips(tiny, tmp_path):
    from diffusers import StableDiffusion3Pipeline

    from imagegen.testing import write_checkpoint

    path = write_checkpoint(tiny["sd3"], tmp_path / "sd3-dit.safetensors", parts=("transformer", "vae"))
    assert {k.split(".")[0] for k in _keys(path)} == {"model", "first_stage_model"}
    reference = _reference(tiny["sd3"])
    # diffusers only falls back on the config folder for components saved as diffusion_pytorch_model.*; the
    # transformers text encoders (model.safetensors) must be passed in, as for a real sd3.5_large.safetensors
    encoders = {n: getattr(reference, n) for n in ("text_encoder", "text_encoder_2", "text_encoder_3")}
    pipe = StableDiffusion3Pipeline.from_single_file(str(path), config=str(tiny["sd3"]), local_files_only=True,
                                                     **encoders)
    _assert_same_pipeline(pipe, reference)


@pytest.mark.slow
def test_component_only_files_load_as_models(tiny, tmp_path):
    import torch
    from diffusers import SD3Transformer2DModel, UNet2DConditionModel

    from imagegen.testing import write_checkpoint

    unet = write_checkpoint(tiny["sdxl"], tmp_path / "unet.safetensors", parts=("unet",), dtype="float16")
    assert {dtype for dtype, _ in _keys(unet).values()} == {"F16"}  # as fp16 releases
    loaded = UNet2DConditionModel.from_single_file(str(unet), config=str(tiny["sdxl"]), subfolder="unet",
                                                   torch_dtype=torch.float16, local_files_only=True)
    reference = _reference(tiny["sdxl"]).unet.to(torch.float16)
    assert _differing(loaded, reference) == []
    dit = write_checkpoint(tiny["sd3"], tmp_path / "dit.safetensors", parts=("transformer",), prefix="")
    assert not any(k.startswith("model.") for k in _keys(dit))
    loaded = SD3Transformer2DModel.from_single_file(str(dit), config=str(tiny["sd3"]), subfolder="transformer",
                                                    local_files_only=True)
    assert _differing(loaded, _reference(tiny["sd3"]).transformer) == []


@pytest.mark.slow
def test_flux_bfl_transformer_file_round_trips(tiny, tmp_path):
    from diffusers import FluxTransformer2DModel
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type
    from safetensors.torch import load_file

    from imagegen.testing import write_checkpoint

    path = write_checkpoint(tiny["flux"], tmp_path / "flux1-dev.safetensors", parts=("transformer",))
    state = load_file(str(path))
    assert {k.split(".")[0] for k in state} == {"double_blocks", "single_blocks", "img_in", "txt_in", "time_in",
                                                "vector_in", "guidance_in", "final_layer"}  # no prefix, as BFL's
    assert infer_diffusers_model_type(state) == "flux-dev"
    reference = _reference(tiny["flux"]).transformer
    converted = _flux_to_diffusers(state, reference.config)
    loaded = FluxTransformer2DModel.from_single_file(converted, config=str(tiny["flux"]), subfolder="transformer")
    assert _differing(loaded, reference) == []


@pytest.mark.slow
def test_flux_comfy_all_in_one_round_trips(tiny, tmp_path):
    from diffusers import FluxPipeline, FluxTransformer2DModel
    from safetensors.torch import load_file

    from imagegen.testing import write_checkpoint

    path = write_checkpoint(tiny["flux"], tmp_path / "flux-aio.safetensors")
    state = load_file(str(path))
    assert {k.split(".")[0] for k in state} == {"model", "vae", "text_encoders"}
    assert "text_encoders.clip_l.transformer.text_model.final_layer_norm.weight" in state
    assert "text_encoders.t5xxl.transformer.shared.weight" in state
    assert "vae.decoder.up.0.block.0.conv1.weight" in state
    reference = _reference(tiny["flux"])
    denoiser = {k: v for k, v in state.items() if k.startswith("model.diffusion_model.")}
    transformer = FluxTransformer2DModel.from_single_file(_flux_to_diffusers(denoiser, reference.transformer.config),
                                                          config=str(tiny["flux"]), subfolder="transformer")
    # diffusers reads the VAE under `vae.`, CLIP-L and T5 under `text_encoders.{clip_l,t5xxl}.transformer.`
    pipe = FluxPipeline.from_single_file(str(path), config=str(tiny["flux"]), transformer=transformer,
                                         local_files_only=True)
    assert pipe.text_encoder_2.encoder.embed_tokens.weight.is_meta  # the T5 tie bug, as for SD3
    pipe.text_encoder_2.tie_weights()
    _assert_same_pipeline(pipe, reference)


@pytest.mark.slow
@pytest.mark.parametrize(("family", "options"), [("sd15", {}), ("sd15", {"text_layout": "openclip"}), ("sdxl", {}),
                                                 ("sdxl", {"parts": ("text_encoder_2",)}), ("sd3", {}), ("flux", {}),
                                                 ("flux", {"parts": ("transformer",)})])
def test_meta_shapes_equal_the_written_ones(tiny, family, options):
    from imagegen.testing import meta_original_shapes, original_state_dict

    state = original_state_dict(_reference(tiny[family]), **options)
    assert meta_original_shapes(tiny[family], **options) == {k: ("F32", tuple(v.shape)) for k, v in state.items()}


@pytest.mark.parametrize("folder", REAL_CONFIGS or [pytest.param(None, marks=pytest.mark.skip("no imagegen/configs"))],
                         ids=lambda p: p.name if p else "none")
def test_real_config_headers_convert_back(folder, tmp_path):
    """A header-only fixture of a real-size config: diffusers detects its type and converts its keys back to the
    model's own names and shapes (the text encoders are covered by the round trips above)."""
    import diffusers.loaders.single_file_utils as sfu
    import torch

    from imagegen.testing import meta_original_shapes, write_header_only
    from imagegen.testing.checkpoints import _meta_modules

    class_name, modules = _meta_modules(folder)
    sd2 = class_name == "StableDiffusionPipeline" and modules["unet"].config["cross_attention_dim"] == 1024
    layout = "openclip" if sd2 else "clip"
    path = write_header_only(tmp_path / "h.safetensors", meta_original_shapes(folder, text_layout=layout, dtype="F16"))
    assert path.stat().st_blocks * 512 < 1 << 20 < path.stat().st_size
    # "numpy": safetensors' "pt" maps the file private-writable, which Linux's overcommit heuristic refuses for a
    # file larger than RAM + swap (ENOMEM on a 27 GB Flux header here); "numpy" maps it read-only
    header = {k: torch.empty(shape, device="meta") for k, (_, shape) in _keys(path, "numpy").items()}
    expected = next(types for start, types in REAL_TYPES.items() if class_name.startswith(start))
    assert sfu.infer_diffusers_model_type(dict(header)) in expected
    converters = {"unet": lambda: sfu.convert_ldm_unet_checkpoint(dict(header), dict(modules["unet"].config)),
                  "vae": lambda: sfu.convert_ldm_vae_checkpoint(dict(header), dict(modules["vae"].config)),
                  "transformer": lambda: (sfu.convert_flux_transformer_checkpoint_to_diffusers(dict(header))
                                          if class_name.startswith("Flux")
                                          else sfu.convert_sd3_transformer_checkpoint_to_diffusers(dict(header)))}
    for name, convert in converters.items():
        if name in modules:
            want = {k: tuple(v.shape) for k, v in modules[name].state_dict().items()}
            assert {k: tuple(v.shape) for k, v in convert().items()} == want, name
