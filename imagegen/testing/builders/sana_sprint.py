"""The tiny SANA-Sprint pipeline: a Gemma-2 encoder with a byte-fallback tokenizer, a three-stage DC-AE (4x, where the
real one is 32x), a guidance-embedded SanaTransformer2DModel with Sprint's QK norm, and the SCM scheduler."""

from __future__ import annotations

import string
from typing import Any

from ..parts import _seed
from ..registry import tiny

# Efficient-Large-Model/Sana_Sprint_1.6B_1024px_diffusers scheduler/scheduler_config.json, as SCMScheduler takes it.
SCM_SCHEDULER_CONFIG: dict[str, Any] = {"num_train_timesteps": 1000, "prediction_type": "trigflow", "sigma_data": 0.5}


def gemma_tokenizer():
    """A small Gemma tokenizer built offline: the specials, Gemma's 256 byte-fallback pieces (<0x00>..<0xFF>),
    printable ASCII alone and after the word marker '▁' (merged). Anything else falls back to its bytes, as in
    the real vocabulary."""
    from transformers import GemmaTokenizer

    vocab = {token: i for i, token in enumerate(("<pad>", "<eos>", "<bos>", "<unk>", "<mask>"))}
    for byte in range(256):
        vocab[f"<0x{byte:02X}>"] = len(vocab)
    chars = string.ascii_letters + string.digits + string.punctuation
    for piece in ("▁", *chars, *(f"▁{c}" for c in chars)):
        vocab.setdefault(piece, len(vocab))
    merges = [("▁", c) for c in chars]
    # Gemma's tokenizer_config sets add_bos_token: the pipeline keeps position 0 (the BOS) of every row
    return GemmaTokenizer(vocab=vocab, merges=merges, add_bos_token=True, model_max_length=8192)


def _gemma(vocab_size: int, hidden: int):
    from transformers import Gemma2Config, Gemma2Model

    config = Gemma2Config(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                          num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                          max_position_embeddings=4096, pad_token_id=0, eos_token_id=1, bos_token_id=2)
    return Gemma2Model(config)


def _dc_ae(latent_channels: int):
    from diffusers import AutoencoderDC

    # Three stages: 2 ** (3 - 1) = 4 pixels per latent side (SanaSprintPipeline.vae_scale_factor).
    return AutoencoderDC(
        in_channels=3, latent_channels=latent_channels, attention_head_dim=4,
        encoder_block_types=("ResBlock", "ResBlock", "EfficientViTBlock"),
        decoder_block_types=("ResBlock", "ResBlock", "EfficientViTBlock"),
        encoder_block_out_channels=(8, 8, 16), decoder_block_out_channels=(8, 8, 16),
        encoder_qkv_multiscales=((), (), (5,)), decoder_qkv_multiscales=((), (), (5,)),
        encoder_layers_per_block=(1, 1, 1), decoder_layers_per_block=(1, 1, 1),
        downsample_block_type="conv", upsample_block_type="interpolate",
        decoder_norm_types="rms_norm", decoder_act_fns="silu", scaling_factor=0.41407,
    )


@tiny("sana-sprint")
def _tiny_sana_sprint(seed: int, patch_size: int = 1) -> Any:
    from diffusers import SanaSprintPipeline, SanaTransformer2DModel, SCMScheduler

    tokenizer = gemma_tokenizer()
    caption, latent = 32, 8  # real: 2304 (Gemma-2-2B), 32
    _seed(seed, 0)
    transformer = SanaTransformer2DModel(
        patch_size=patch_size, in_channels=latent, out_channels=latent, num_layers=2,
        num_attention_heads=2, attention_head_dim=8, num_cross_attention_heads=2, cross_attention_head_dim=8,
        cross_attention_dim=16, caption_channels=caption,
        sample_size=16,  # not the real 32: a call left with resolution binning on fails instead of running at 1024 px
        qk_norm="rms_norm_across_heads", guidance_embeds=True,  # Sprint's, as the 1.6B and 0.6B have them
    )
    _seed(seed, 1)
    vae = _dc_ae(latent)
    _seed(seed, 2)
    text_encoder = _gemma(len(tokenizer), caption)
    return SanaSprintPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                              scheduler=SCMScheduler.from_config(SCM_SCHEDULER_CONFIG))
