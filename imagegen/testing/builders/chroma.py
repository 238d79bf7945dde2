"""The tiny Chroma pipeline: ChromaPipeline with a small Chroma transformer (FLUX.1's blocks with a distilled
modulation approximator), FLUX.1's 4-block VAE layout and a small T5 encoder, its tokenizer built in code."""

from __future__ import annotations

from typing import Any

from ..parts import FLUX_DEV_SCHEDULER_CONFIG, _seed, _t5_encoder, _t5_tokenizer, _vae
from ..registry import tiny

# lodestones/Chroma1-HD scheduler config: FLUX.1-dev's (resolution-dependent shifting through the pipeline's mu).
_SCHEDULER_CONFIG: dict[str, Any] = dict(FLUX_DEV_SCHEDULER_CONFIG)


@tiny("chroma")
def _tiny_chroma(seed: int) -> Any:
    from diffusers import ChromaPipeline, FlowMatchEulerDiscreteScheduler

    t5_tok = _t5_tokenizer()
    t5_dim, latent_channels = 64, 16  # real: 4096 (T5-XXL), 16 (FLUX.1's VAE)
    _seed(seed, 0)
    transformer = _transformer(latent_channels, t5_dim)
    _seed(seed, 1)
    vae = _vae(latent_channels=latent_channels, scaling_factor=0.3611, shift_factor=0.1159, quant_conv=False)
    _seed(seed, 2)
    text_encoder = _t5_encoder(t5_dim, len(t5_tok))
    return ChromaPipeline(scheduler=FlowMatchEulerDiscreteScheduler.from_config(_SCHEDULER_CONFIG), vae=vae,
                          text_encoder=text_encoder, tokenizer=t5_tok, transformer=transformer,
                          image_encoder=None, feature_extractor=None)


def _transformer(latent_channels: int, t5_dim: int):
    import warnings

    from diffusers import ChromaTransformer2DModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # its FluxPosEmbed deprecation notice, from diffusers itself
        return ChromaTransformer2DModel(
            patch_size=1,
            in_channels=4 * latent_channels,  # 2x2 latent packing, as FLUX.1
            num_layers=1,
            num_single_layers=2,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=t5_dim,
            axes_dims_rope=(4, 4, 8),  # sums to attention_head_dim
            approximator_num_channels=16,  # real: 64, 5120 wide, 5 layers
            approximator_hidden_dim=32,
            approximator_layers=1,
        )
