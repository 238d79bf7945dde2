"""Parts of the tiny random-weight pipelines: byte-level tokenizers, small text encoders, VAEs, and saving them the
way diffusers loads them (all offline)."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# FLUX.1-dev's scheduler config (resolution-dependent shifting), which Chroma1-HD, FLUX.2 dev and klein ship too.
FLUX_DEV_SCHEDULER_CONFIG: dict[str, Any] = {
    "base_image_seq_len": 256,
    "base_shift": 0.5,
    "max_image_seq_len": 4096,
    "max_shift": 1.15,
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "time_shift_type": "exponential",
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


