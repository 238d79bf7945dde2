"""Tiny random-weight pipelines, one builder per family, registered under the family's name (the family modules
never import this; tests and benchmarks build through `build_tiny`).

Size rules for the tiny pipelines (their VAEs have 4 blocks, so vae_scale_factor = 2 ** 3 = 8, as in the real
models; checked on diffusers 0.42.1):
  SD 1.5: like SDXL, a multiple of 8. Default size 64x64. `build_tiny("sd15", DIR, v_prediction=True)` makes an
        SD 2.x-style v-prediction one.
  SDXL: height/width must be a multiple of 8 (vae_scale_factor); the pipeline raises otherwise. Odd latent
        sides (e.g. 72 px -> 9) work: the UNet pads its upsampling. Default size 64x64 (unet sample_size 8 * 8).
  SD3:  multiple of 16 (vae_scale_factor 8 * transformer patch_size 2); the pipeline raises otherwise.
        Max side 1024 (pos_embed_max_size 64 * patch 2 * 8). Default size 64x64 (sample_size 8 * 8).
  Flux: multiple of 16 (vae_scale_factor 8 * 2 for the 2x2 latent packing); the pipeline only warns and
        rounds down otherwise (72 -> 64). Its default size is hard-coded to 128 * 8 = 1024: always pass
        height/width.
Text sequence lengths are the real ones (CLIP 77; T5 256 for SD3, 512 for Flux by default); pass a smaller
max_sequence_length to go faster.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from . import builders  # noqa: F401  (the later families' builders register themselves)
from .parts import _clip_tokenizer, _clip_vocab, _private_rng, _save, _seed, _t5_encoder, _t5_tokenizer, _vae, clip_text_config
from .registry import TINY, tiny

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

# stable-diffusion-v1-5/stable-diffusion-v1-5 scheduler/scheduler_config.json (PNDM, epsilon).
_SD15_SCHEDULER_CONFIG: dict[str, Any] = {
    "_class_name": "PNDMScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
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


def build_tiny(family: str, path: str | os.PathLike, *, seed: int = 0, safetensors: bool = True, **options) -> Path:
    """Build and save the tiny pipeline of `family` in ``path`` with save_pretrained; returns the folder."""
    with _private_rng():
        return _save(TINY[family](seed, **options), path, safetensors)


def build_tiny_sdxl(path: str | os.PathLike, *, seed: int = 0, safetensors: bool = True) -> Path:
    """Build and save a tiny StableDiffusionXLPipeline in ``path`` (about 3 MB); returns the folder."""
    return build_tiny("sdxl", path, seed=seed, safetensors=safetensors)


def build_tiny_sd3(path: str | os.PathLike, *, seed: int = 0, safetensors: bool = True) -> Path:
    """Build and save a tiny StableDiffusion3Pipeline (SD3-medium layout, about 4 MB) in ``path``."""
    return build_tiny("sd3", path, seed=seed, safetensors=safetensors)


def build_tiny_flux(path: str | os.PathLike, *, seed: int = 0, safetensors: bool = True,
                    dynamic_shifting: bool = False, guidance_embeds: bool = False, fill: bool = False,
                    kontext: bool = False) -> Path:
    """Build and save a tiny FluxPipeline (about 1.5 MB) in ``path``; returns the folder.

    By default the transformer has no guidance embedding (like FLUX.1-schnell); ``guidance_embeds=True`` gives it
    FLUX.1-dev's. ``dynamic_shifting=False`` gives schnell's scheduler config (static shift 1.0); ``True`` gives
    FLUX.1-dev's (resolution-dependent ``mu``). ``fill=True`` makes FLUX.1-Fill-dev's layout: a FluxFillPipeline
    whose transformer also reads the masked image and the mask (in_channels 384 in the real one). ``kontext=True``
    makes FLUX.1-Kontext-dev's: a FluxKontextPipeline (the same components, which also read a reference image).
    """
    return build_tiny("flux", path, seed=seed, safetensors=safetensors, dynamic_shifting=dynamic_shifting,
                      guidance_embeds=guidance_embeds, fill=fill, kontext=kontext)


@tiny("sdxl")
def _tiny_sdxl(seed: int) -> Any:
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    vocab = _clip_vocab()
    te1_hidden, te2_hidden, te2_proj, time_dim = 32, 64, 32, 8  # real: 768, 1280, 1280, 256

    _seed(seed, 0)
    unet = _tiny_unet(
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


def _tiny_unet(**extra) -> Any:
    """The two-block UNet SD 1.5 and SDXL share; `extra` adds the family's cross-attention and conditioning."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=8,  # default size 8 * 8 = 64 px
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(16, 32),
        layers_per_block=1,
        norm_num_groups=8,
        attention_head_dim=(2, 4),
        **extra,
    )


@tiny("sd15")
def _tiny_sd15(seed: int, v_prediction: bool = False) -> Any:
    from diffusers import PNDMScheduler, StableDiffusionPipeline
    from transformers import CLIPTextModel

    vocab = _clip_vocab()
    _seed(seed, 0)
    unet = _tiny_unet(cross_attention_dim=32)  # real: 768 (CLIP ViT-L/14)
    _seed(seed, 1)
    vae = _vae(latent_channels=4, scaling_factor=0.18215, shift_factor=None, quant_conv=True)
    _seed(seed, 2)
    text_encoder = CLIPTextModel(clip_text_config(vocab, 32, 32))
    prediction = "v_prediction" if v_prediction else "epsilon"
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=_clip_tokenizer(), unet=unet,
        scheduler=PNDMScheduler.from_config({**_SD15_SCHEDULER_CONFIG, "prediction_type": prediction}),
        safety_checker=None, feature_extractor=None, image_encoder=None, requires_safety_checker=False,
    )


@tiny("sd3")
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


@tiny("flux")
def _tiny_flux(seed: int, dynamic_shifting: bool = False, guidance_embeds: bool = False, fill: bool = False,
               kontext: bool = False) -> Any:
    from diffusers import (FlowMatchEulerDiscreteScheduler, FluxFillPipeline, FluxKontextPipeline, FluxPipeline,
                           FluxTransformer2DModel)
    from transformers import CLIPTextModel

    vocab = _clip_vocab()
    t5_tok = _t5_tokenizer()
    clip_dim, t5_dim, latent_channels = 32, 64, 16  # real: 768, 4096, 16

    _seed(seed, 0)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        # 2x2 latent packing; Fill adds the masked image's latents and the mask (8x8 pixels a latent), packed alike
        in_channels=4 * latent_channels + (4 * latent_channels + 4 * 64 if fill else 0),
        **({"out_channels": 4 * latent_channels} if fill else {}),
        num_layers=1,
        num_single_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=t5_dim,
        pooled_projection_dim=clip_dim,
        guidance_embeds=guidance_embeds,
        axes_dims_rope=(4, 6, 6),  # sums to attention_head_dim
    )
    _seed(seed, 1)
    vae = _vae(latent_channels=latent_channels, scaling_factor=0.3611, shift_factor=0.1159, quant_conv=False)
    _seed(seed, 2)
    text_encoder = CLIPTextModel(clip_text_config(vocab, clip_dim, clip_dim))
    _seed(seed, 3)
    text_encoder_2 = _t5_encoder(t5_dim, len(t5_tok))
    config = _FLUX_DEV_SCHEDULER_CONFIG if dynamic_shifting else _FLUX_SCHNELL_SCHEDULER_CONFIG
    pipe = (FluxFillPipeline if fill else FluxKontextPipeline if kontext else FluxPipeline)(
        scheduler=FlowMatchEulerDiscreteScheduler.from_config(config),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=_clip_tokenizer(),
        text_encoder_2=text_encoder_2,
        tokenizer_2=t5_tok,
        transformer=transformer,
    )
    return pipe
