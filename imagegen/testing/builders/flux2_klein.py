"""The tiny FLUX.2 [klein] pipeline: a small Flux2 transformer, an AutoencoderKLFlux2 (scale 8, latents packed 2x2)
and a tiny Qwen3ForCausalLM. The pipeline reads the encoder's hidden states after layers 9, 18 and 27, so the tiny
encoder keeps 28 (narrow) layers; the transformer reads the three side by side (joint_attention_dim = 3 x width)."""

from __future__ import annotations

from typing import Any

from ..parts import FLUX_DEV_SCHEDULER_CONFIG, _seed
from ..registry import tiny
from .qwen3_parts import qwen3_causal_lm, qwen3_tokenizer

# black-forest-labs/FLUX.2-klein-4B scheduler/scheduler_config.json: resolution shifting, with `mu` from the
# pipeline's own empirical formula (compute_empirical_mu), not from these base/max values.
KLEIN_SCHEDULER_CONFIG: dict[str, Any] = dict(FLUX_DEV_SCHEDULER_CONFIG)
ENCODER_LAYERS = 28  # hidden states 9, 18 and 27 are read (text_encoder_out_layers)


@tiny("flux2-klein")
def _tiny_flux2_klein(seed: int, distilled: bool = False, inpaint: bool = False) -> Any:
    """A klein Base model by default (real CFG above 1, so CFG on and off differ); distilled=True is klein 4B or 9B
    (step-distilled: the pipeline ignores guidance_scale). inpaint=True saves the folder as
    Flux2KleinInpaintPipeline (the same components)."""
    from diffusers import (AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2KleinInpaintPipeline,
                           Flux2KleinPipeline, Flux2Transformer2DModel)

    width, latent_channels = 16, 4  # real: 2560 (Qwen3-4B) or 4096 (Qwen3-8B); 32
    _seed(seed, 0)
    transformer = Flux2Transformer2DModel(
        patch_size=1,
        in_channels=4 * latent_channels,  # latents are packed 2x2 before the transformer
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=3 * width,
        timestep_guidance_channels=32,
        axes_dims_rope=(4, 4, 4, 4),  # sums to attention_head_dim
        guidance_embeds=False,  # klein has no guidance embedding
    )
    _seed(seed, 1)
    vae = AutoencoderKLFlux2(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16),  # 4 blocks: scale 8, as the real VAE
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=4,
        sample_size=64,
    )
    _seed(seed, 2)
    text_encoder = qwen3_causal_lm(width, ENCODER_LAYERS)
    cls = Flux2KleinInpaintPipeline if inpaint else Flux2KleinPipeline
    return cls(scheduler=FlowMatchEulerDiscreteScheduler.from_config(KLEIN_SCHEDULER_CONFIG), vae=vae,
               text_encoder=text_encoder, tokenizer=qwen3_tokenizer(), transformer=transformer,
               is_distilled=distilled)
