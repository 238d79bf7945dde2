"""Tiny random-weight diffusers pipelines for tests and benchmarks, built offline."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["build_tiny_controlnet", "build_tiny_flux", "build_tiny_ip_adapter", "build_tiny_sd3", "build_tiny_sdxl", "clip_byte_vocab", "clip_text_config", "with_clip_specials"]

# Size rules for the tiny pipelines (all three VAEs have 4 blocks, so vae_scale_factor = 2 ** 3 = 8, as in
# the real models; checked on diffusers 0.42.1):
#   SDXL: height/width must be a multiple of 8 (vae_scale_factor); the pipeline raises otherwise. Odd latent
#         sides (e.g. 72 px -> 9) work: the UNet pads its upsampling. Default size 64x64 (unet sample_size 8 * 8).
#   SD3:  multiple of 16 (vae_scale_factor 8 * transformer patch_size 2); the pipeline raises otherwise.
#         Max side 1024 (pos_embed_max_size 64 * patch 2 * 8). Default size 64x64 (sample_size 8 * 8).
#   Flux: multiple of 16 (vae_scale_factor 8 * 2 for the 2x2 latent packing); the pipeline only warns and
#         rounds down otherwise (72 -> 64). Its default size is hard-coded to 128 * 8 = 1024: always pass
#         height/width.
# Text sequence lengths are the real ones (CLIP 77; T5 256 for SD3, 512 for Flux by default); pass a smaller
# max_sequence_length to go faster.

_SDXL_SCHEDULER_CONFIG: dict[str, Any] = {
    # stabilityai/stable-diffusion-xl-base-1.0 scheduler/scheduler_config.json. The keys EulerDiscrete does not
    # take (clip_sample, set_alpha_to_one, skip_prk_steps, sample_max_value) are kept as hidden config entries,
    # exactly as when the real folder is loaded, so DDIM / PNDM built with from_config see the real values.
    "_class_name": "EulerDiscreteScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
    "use_karras_sigmas": False,
}

# stabilityai/stable-diffusion-3-medium-diffusers scheduler config.
_SD3_SCHEDULER_CONFIG: dict[str, Any] = {"num_train_timesteps": 1000, "shift": 3.0}

# black-forest-labs/FLUX.1-schnell (static shift 1.0) and FLUX.1-dev (dynamic shifting) scheduler configs.
_FLUX_SCHNELL_SCHEDULER_CONFIG: dict[str, Any] = {
    "base_image_seq_len": 256,
    "base_shift": 0.5,
    "max_image_seq_len": 4096,
    "max_shift": 1.15,
    "num_train_timesteps": 1000,
    "shift": 1.0,
    "use_dynamic_shifting": False,
}
_FLUX_DEV_SCHEDULER_CONFIG: dict[str, Any] = {
    **_FLUX_SCHNELL_SCHEDULER_CONFIG,
    "shift": 3.0,
    "use_dynamic_shifting": True,
}

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"


def _seed(seed: int, offset: int) -> None:
    import torch

    torch.manual_seed(seed * 1000 + offset)


def clip_byte_vocab() -> dict[str, int]:
    """CLIP's byte-level base vocab: the 256 byte characters, then the same with '</w>' (no specials, no merges)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    return vocab


def with_clip_specials(vocab: dict[str, int]) -> dict[str, int]:
    """A copy of ``vocab`` with BOS and EOS appended, as real CLIP numbers them (last)."""
    full = dict(vocab)
    full[BOS] = len(full)
    full[EOS] = len(full)
    return full


def _clip_vocab() -> dict[str, int]:
    """Byte-level CLIP vocab with no merges: 256 bytes, 256 bytes + '</w>', then BOS and EOS (like real CLIP)."""
    return with_clip_specials(clip_byte_vocab())


def _clip_tokenizer(pad_token: str = EOS):
    from transformers import CLIPTokenizer

    return CLIPTokenizer(vocab=_clip_vocab(), merges=[], pad_token=pad_token, model_max_length=77)


def _t5_tokenizer(model_max_length: int = 512):
    import string

    from transformers import T5TokenizerFast

    vocab: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    chars = string.ascii_letters + string.digits + string.punctuation
    vocab += [("\u2581" + c, -4.0) for c in chars]
    vocab += [(c, -5.0) for c in chars]
    return T5TokenizerFast(vocab=vocab, extra_ids=0, model_max_length=model_max_length)


def clip_text_config(vocab: dict[str, int], hidden_size: int, projection_dim: int, *, layers: int = 5,
                     max_positions: int = 77):
    """A small CLIP text config whose special-token ids come from ``vocab`` (layers=5: clip_skip up to 4 works)."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        projection_dim=projection_dim,
        num_hidden_layers=layers,
        num_attention_heads=4,
        max_position_embeddings=max_positions,
        hidden_act="gelu",
        layer_norm_eps=1e-5,
        bos_token_id=vocab[BOS],
        eos_token_id=vocab[EOS],
        pad_token_id=vocab[EOS],
    )


def _t5_encoder(d_model: int, vocab_size: int):
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=vocab_size,
        d_model=d_model,
        d_kv=d_model // 4,
        d_ff=2 * d_model,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=32,
        dropout_rate=0.0,
        feed_forward_proj="gated-gelu",  # as T5 v1.1 / T5-XXL
        is_encoder_decoder=False,
        use_cache=False,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    return T5EncoderModel(config)


def _vae(latent_channels: int, scaling_factor: float, shift_factor: float | None, quant_conv: bool):
    from diffusers import AutoencoderKL

    # 4 blocks -> vae_scale_factor 8, like the real VAEs.
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=4,
        sample_size=64,
        scaling_factor=scaling_factor,
        shift_factor=shift_factor,
        use_quant_conv=quant_conv,
        use_post_quant_conv=quant_conv,
    )


def _save(pipe: Any, path: str | os.PathLike, safetensors: bool) -> Path:
    import torch

    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    with _quiet_bars():
        pipe.save_pretrained(out, safe_serialization=safetensors)
    if not safetensors:
        # transformers 5 always writes model.safetensors (its save_pretrained has no safe_serialization):
        # rewrite the text encoders as pickle pytorch_model.bin so the folder holds no safetensors at all.
        from transformers import PreTrainedModel

        for name, component in pipe.components.items():
            if isinstance(component, PreTrainedModel):
                sub = out / name
                for f in list(sub.glob("*.safetensors")) + list(sub.glob("*.safetensors.index.json")):
                    f.unlink()
                state = {k: v.contiguous() for k, v in component.state_dict().items()}
                torch.save(state, sub / "pytorch_model.bin")
        leftovers = list(out.rglob("*.safetensors"))
        if leftovers:
            raise RuntimeError(f"safetensors files left in a pickle-only folder: {leftovers}")
    return out


@contextmanager
def _quiet_bars():
    """No transformers "Writing model shards" bar while saving; the caller's setting is restored."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if bars:
            hf_logging.enable_progress_bar()


def _private_rng():
    """Seeding for the build must not change the caller's global torch RNG state."""
    import torch

    return torch.random.fork_rng(devices=[])


def build_tiny_sdxl(path: str | os.PathLike, *, seed: int = 0, safetensors: bool = True) -> Path:
    """Build and save a tiny StableDiffusionXLPipeline in ``path`` (about 3 MB); returns the folder."""
    with _private_rng():
        return _save(_tiny_sdxl(seed), path, safetensors)


def build_tiny_sd3(path: str | os.PathLike, *, seed: int = 0, safetensors: bool = True) -> Path:
    """Build and save a tiny StableDiffusion3Pipeline (SD3-medium layout, about 4 MB) in ``path``.

    Returns the folder.
    """
    with _private_rng():
        return _save(_tiny_sd3(seed), path, safetensors)


def build_tiny_flux(
    path: str | os.PathLike, *, seed: int = 0, safetensors: bool = True, dynamic_shifting: bool = False
) -> Path:
    """Build and save a tiny FluxPipeline (about 1.5 MB) in ``path``; returns the folder.

    The transformer has no guidance embedding (like FLUX.1-schnell). ``dynamic_shifting=False`` gives schnell's
    scheduler config (static shift 1.0); ``True`` gives FLUX.1-dev's (resolution-dependent ``mu``).
    """
    with _private_rng():
        return _save(_tiny_flux(seed, dynamic_shifting), path, safetensors)


def _tiny_sdxl(seed: int) -> Any:
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    vocab = _clip_vocab()
    te1_hidden, te2_hidden, te2_proj, time_dim = 32, 64, 32, 8  # real: 768, 1280, 1280, 256

    _seed(seed, 0)
    unet = UNet2DConditionModel(
        sample_size=8,  # default size 8 * 8 = 64 px
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(16, 32),
        layers_per_block=1,
        norm_num_groups=8,
        attention_head_dim=(2, 4),
        transformer_layers_per_block=(1, 2),
        use_linear_projection=True,
        cross_attention_dim=te1_hidden + te2_hidden,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=6 * time_dim + te2_proj,
    )
    _seed(seed, 1)
    vae = _vae(latent_channels=4, scaling_factor=0.13025, shift_factor=None, quant_conv=True)
    _seed(seed, 2)
    text_encoder = CLIPTextModel(clip_text_config(vocab, te1_hidden, te1_hidden))
    _seed(seed, 3)
    text_encoder_2 = CLIPTextModelWithProjection(clip_text_config(vocab, te2_hidden, te2_proj))
    scheduler = EulerDiscreteScheduler.from_config(_SDXL_SCHEDULER_CONFIG)
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=_clip_tokenizer(),
        tokenizer_2=_clip_tokenizer(pad_token="!"),  # as the real SDXL tokenizer_2
        unet=unet,
        scheduler=scheduler,
    )
    return pipe


def _tiny_sd3(seed: int) -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    vocab = _clip_vocab()
    t5_tok = _t5_tokenizer()
    clip_l, clip_g, t5_dim = 32, 64, 128  # real: 768, 1280, 4096 (CLIP-L + CLIP-G are padded up to T5's width)

    _seed(seed, 0)
    transformer = SD3Transformer2DModel(
        sample_size=8,  # default size 8 * 8 = 64 px
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        caption_projection_dim=32,  # = heads * head_dim
        joint_attention_dim=t5_dim,
        pooled_projection_dim=clip_l + clip_g,
        pos_embed_max_size=64,
    )
    _seed(seed, 1)
    vae = _vae(latent_channels=16, scaling_factor=1.5305, shift_factor=0.0609, quant_conv=False)
    _seed(seed, 2)
    text_encoder = CLIPTextModelWithProjection(clip_text_config(vocab, clip_l, clip_l))
    _seed(seed, 3)
    text_encoder_2 = CLIPTextModelWithProjection(clip_text_config(vocab, clip_g, clip_g))
    _seed(seed, 4)
    text_encoder_3 = _t5_encoder(t5_dim, len(t5_tok))
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler.from_config(_SD3_SCHEDULER_CONFIG),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=_clip_tokenizer(),
        text_encoder_2=text_encoder_2,
        tokenizer_2=_clip_tokenizer(pad_token="!"),
        text_encoder_3=text_encoder_3,
        tokenizer_3=t5_tok,
    )
    return pipe


def _tiny_flux(seed: int, dynamic_shifting: bool) -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel

    vocab = _clip_vocab()
    t5_tok = _t5_tokenizer()
    clip_dim, t5_dim, latent_channels = 32, 64, 16  # real: 768, 4096, 16

    _seed(seed, 0)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=4 * latent_channels,  # 2x2 latent packing
        num_layers=1,
        num_single_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=t5_dim,
        pooled_projection_dim=clip_dim,
        guidance_embeds=False,
        axes_dims_rope=(4, 6, 6),  # sums to attention_head_dim
    )
    _seed(seed, 1)
    vae = _vae(latent_channels=latent_channels, scaling_factor=0.3611, shift_factor=0.1159, quant_conv=False)
    _seed(seed, 2)
    text_encoder = CLIPTextModel(clip_text_config(vocab, clip_dim, clip_dim))
    _seed(seed, 3)
    text_encoder_2 = _t5_encoder(t5_dim, len(t5_tok))
    config = _FLUX_DEV_SCHEDULER_CONFIG if dynamic_shifting else _FLUX_SCHNELL_SCHEDULER_CONFIG
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler.from_config(config),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=_clip_tokenizer(),
        text_encoder_2=text_encoder_2,
        tokenizer_2=t5_tok,
        transformer=transformer,
    )
    return pipe


# ---- tiny ControlNets and IP-Adapters (the conditioning models of issue 6), matched to the tiny pipelines above


def _wake(module, seed: int) -> None:
    """ControlNets start with zero convolutions (no effect until trained): give every all-zero weight small noise."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if param.dim() > 1 and not param.any():
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)


def _tiny_controlnet(family: str, seed: int) -> Any:
    """A net made from the tiny pipeline's own denoiser, as ControlNets are initialised (config and weights copied)."""
    from diffusers import ControlNetModel, FluxControlNetModel, SD3ControlNetModel

    if family == "sdxl":
        # 4 conditioning channels -> 3 stride-2 convolutions: the map's pixels come down to the latent size.
        net = ControlNetModel.from_unet(_tiny_sdxl(seed).unet, conditioning_embedding_out_channels=(8, 8, 16, 16))
    elif family == "sd3":  # the map is VAE-encoded by the pipeline
        net = SD3ControlNetModel.from_transformer(_tiny_sd3(seed).transformer, num_layers=1,
                                                 num_extra_conditioning_channels=0)
    elif family == "flux":
        transformer = _tiny_flux(seed, False).transformer
        net = FluxControlNetModel.from_transformer(
            transformer, num_layers=1, num_single_layers=1, attention_head_dim=transformer.config.attention_head_dim,
            num_attention_heads=transformer.config.num_attention_heads,
        )
    else:
        raise ValueError(f"unknown family {family!r}")
    _wake(net, seed)
    return net.eval()


def build_tiny_controlnet(path: str | os.PathLike, family: str, *, seed: int = 0, safetensors: bool = True) -> Path:
    """Build and save a tiny ControlNet for the tiny ``family`` pipeline (diffusers folder layout); returns the folder."""
    import warnings

    with _private_rng(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # FluxControlNetModel's FluxPosEmbed deprecation notice
        net = _tiny_controlnet(family, seed)
        out = Path(path)
        net.save_pretrained(out, safe_serialization=safetensors)
    return out


# IP-Adapter image encoders: CLIP vision with projection (SDXL's ViT-bigG, Flux's CLIP-L) or SigLIP (SD3.5).
_ENCODER_IMAGE_SIZE = 32


def _tiny_image_encoder(family: str, seed: int) -> tuple[Any, Any]:
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection,
                              SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel)

    _seed(seed, 20)
    common = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  image_size=_ENCODER_IMAGE_SIZE, patch_size=8)
    if family == "sd3":
        encoder = SiglipVisionModel(SiglipVisionConfig(**common))
        processor = SiglipImageProcessor(size={"height": _ENCODER_IMAGE_SIZE, "width": _ENCODER_IMAGE_SIZE})
    else:
        encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**common, projection_dim=32))
        processor = CLIPImageProcessor(size=_ENCODER_IMAGE_SIZE, crop_size=_ENCODER_IMAGE_SIZE)
    return encoder.eval(), processor


def _ip_adapter_state_dict(family: str, seed: int) -> dict[str, Any]:
    """A tiny adapter's tensors, keyed as the published files key them (what load_ip_adapter reads)."""
    import torch
    from diffusers.models.attention_processor import SD3IPAdapterJointAttnProcessor2_0
    from diffusers.models.embeddings import ImageProjection, IPAdapterTimeImageProjection

    _seed(seed, 30)
    out: dict[str, Any] = {}

    def linear(out_features: int, in_features: int, bias: bool) -> dict:
        layer = torch.nn.Linear(in_features, out_features, bias=bias)
        return {k: v.detach().clone() for k, v in layer.state_dict().items()}

    if family == "sdxl":  # h94 ip-adapter_sdxl layout: image_proj.proj/norm, ip_adapter.<id>.to_{k,v}_ip (ids 1, 3, ...)
        unet = _tiny_sdxl(seed).unet
        proj = ImageProjection(cross_attention_dim=96, image_embed_dim=32, num_image_text_embeds=4)
        for k, v in proj.state_dict().items():
            out["image_proj." + k.replace("image_embeds", "proj")] = v
        key_id = 1
        for name in unet.attn_processors:
            if name.endswith("attn1.processor"):
                continue
            block = name.split(".")[0]
            if block == "mid_block":
                hidden = unet.config.block_out_channels[-1]
            elif block == "up_blocks":
                hidden = list(reversed(unet.config.block_out_channels))[int(name.split(".")[1])]
            else:
                hidden = unet.config.block_out_channels[int(name.split(".")[1])]
            for kind in ("to_k_ip", "to_v_ip"):
                out[f"ip_adapter.{key_id}.{kind}.weight"] = linear(hidden, 96, False)["weight"]
            key_id += 2
    elif family == "flux":  # XLabs flux-ip-adapter layout: ip_adapter_proj_model.*, double_blocks.<i>.processor.*
        transformer = _tiny_flux(seed, False).transformer
        proj = ImageProjection(cross_attention_dim=transformer.config.joint_attention_dim, image_embed_dim=32,
                               num_image_text_embeds=4)
        for k, v in proj.state_dict().items():
            out["ip_adapter_proj_model." + k.replace("image_embeds", "proj")] = v
        inner = transformer.inner_dim
        for i in range(transformer.config.num_layers):
            for kind in ("k", "v"):
                for k, v in linear(inner, transformer.config.joint_attention_dim, True).items():
                    out[f"double_blocks.{i}.processor.ip_adapter_double_stream_{kind}_proj.{k}"] = v
    elif family == "sd3":  # InstantX SD3.5-Large-IP-Adapter layout, with diffusers' own module names
        transformer = _tiny_sd3(seed).transformer
        dim = transformer.config.attention_head_dim * transformer.config.num_attention_heads
        hidden = 64  # the resampler width; the loader infers heads as to_q.out_features // 64
        proj = IPAdapterTimeImageProjection(embed_dim=32, output_dim=dim, hidden_dim=hidden, heads=1, num_queries=4,
                                            timestep_in_dim=32)
        for k, v in proj.state_dict().items():
            out["image_proj." + k] = v
        for i, _ in enumerate(transformer.attn_processors):
            processor = SD3IPAdapterJointAttnProcessor2_0(hidden_size=dim, ip_hidden_states_dim=dim,
                                                          head_dim=transformer.config.attention_head_dim,
                                                          timesteps_emb_dim=hidden)
            for k, v in processor.state_dict().items():
                out[f"ip_adapter.{i}.{k}"] = v
    else:
        raise ValueError(f"unknown family {family!r}")
    return {k: v.detach().contiguous().clone() for k, v in out.items()}


IP_ADAPTER_WEIGHT = "ip-adapter.safetensors"


def build_tiny_ip_adapter(path: str | os.PathLike, family: str, *, seed: int = 0) -> Path:
    """Save a tiny IP-Adapter for the tiny ``family`` pipeline: ``ip-adapter.safetensors`` and ``image_encoder/``.

    Returns the folder. Load it with ``--ip-adapter-model DIR --ip-adapter-weight ip-adapter.safetensors
    --image-encoder DIR/image_encoder``.
    """
    from safetensors.torch import save_file

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    with _private_rng():
        tensors = _ip_adapter_state_dict(family, seed)
        encoder, processor = _tiny_image_encoder(family, seed)
    save_file(tensors, str(out / IP_ADAPTER_WEIGHT))
    with _quiet_bars():
        encoder.save_pretrained(out / "image_encoder")
        processor.save_pretrained(out / "image_encoder")
    return out
