"""The tiny Z-Image pipeline: a small single-stream Z-Image transformer (2x2 patches), a FLUX.1-style AutoencoderKL
(scale 8) and a tiny Qwen3Model, whose second-to-last hidden states are the caption features."""

from __future__ import annotations

from typing import Any

from ..parts import _seed, _vae
from ..registry import tiny
from .qwen3_parts import qwen3_model, qwen3_tokenizer

# Tongyi-MAI/Z-Image-Turbo scheduler/scheduler_config.json: a static shift of 3 (the pipeline's `mu` is ignored).
Z_IMAGE_SCHEDULER_CONFIG: dict[str, Any] = {"num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": False}


@tiny("z-image")
def _tiny_z_image(seed: int) -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel

    # 16 latent channels, as the real VAE: ZImageImg2ImgPipeline's image processor tells latents from images by a
    # channel count of 4, so a 4-channel tiny model would hide how its img2img treats latents (hires fix).
    width, latent_channels = 16, 16  # real: 2560 (Qwen3-4B), 16
    _seed(seed, 0)
    transformer = ZImageTransformer2DModel(
        all_patch_size=(2,),
        all_f_patch_size=(1,),
        in_channels=latent_channels,
        dim=32,
        n_layers=2,
        n_refiner_layers=1,
        n_heads=2,
        n_kv_heads=2,
        cap_feat_dim=width,
        axes_dims=[8, 4, 4],  # sums to the head width (dim / n_heads)
        axes_lens=[1536, 512, 512],  # Z-Image-Turbo's: caption positions, then 512 patches a side
    )
    _seed(seed, 1)
    # Z-Image-Turbo's VAE is FLUX.1's: its scaling and shift factors.
    vae = _vae(latent_channels=latent_channels, scaling_factor=0.3611, shift_factor=0.1159, quant_conv=False)
    _seed(seed, 2)
    text_encoder = qwen3_model(width, 2)  # the pipeline reads hidden_states[-2]
    return ZImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler.from_config(Z_IMAGE_SCHEDULER_CONFIG), vae=vae,
                          text_encoder=text_encoder, tokenizer=qwen3_tokenizer(), transformer=transformer)
