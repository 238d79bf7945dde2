"""The tiny FLUX.2 [dev] pipeline: Flux2Pipeline with a small Flux2 transformer, a 4-block AutoencoderKLFlux2 (8 px a
latent, packed 2x2 as the real one) and a Mistral3ForConditionalGeneration encoder with tiny text and vision towers
and a byte-level tokenizer built in code (no hub)."""

from __future__ import annotations

from typing import Any

from ..parts import FLUX_DEV_SCHEDULER_CONFIG, _seed
from ..registry import tiny

# Mistral-Small-3.1's control tokens the chat template and the vision tower use, at its ids (tekken numbers its
# specials first: <unk> 0, <s> 1, </s> 2, [INST] 3, [/INST] 4, [IMG] 10, <pad> 11, ...).
_SPECIALS = ("<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]",
             "[TOOL_RESULTS]", "[/TOOL_RESULTS]", "[TOOL_CALLS]", "[IMG]", "<pad>", "[IMG_BREAK]", "[IMG_END]",
             "[PREFIX]", "[MIDDLE]", "[SUFFIX]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[TOOL_CONTENT]")

# Mistral-Small-3.1's chat template, cut down to what Flux2Pipeline sends (a system message, then user turns of
# text and image blocks) and laid out as the real one lays them out.
CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{%- set blocks = [{'type': 'text', 'text': message['content']}] if message['content'] is string"
    " else message['content'] %}"
    "{%- if message['role'] == 'system' %}{{- '[SYSTEM_PROMPT]' }}"
    "{%- elif message['role'] == 'user' %}{{- '[INST]' }}{%- endif %}"
    "{%- for block in blocks %}"
    "{%- if block['type'] == 'text' %}{{- block['text'] }}"
    "{%- elif block['type'] in ['image', 'image_url'] %}{{- '[IMG]' }}{%- endif %}"
    "{%- endfor %}"
    "{%- if message['role'] == 'system' %}{{- '[/SYSTEM_PROMPT]' }}"
    "{%- elif message['role'] == 'user' %}{{- '[/INST]' }}"
    "{%- else %}{{- eos_token }}{%- endif %}"
    "{%- endfor %}"
)

# black-forest-labs/FLUX.2-dev scheduler config (FLUX.1-dev's: resolution-dependent shifting; Flux2Pipeline passes
# its own empirical mu).
_SCHEDULER_CONFIG: dict[str, Any] = dict(FLUX_DEV_SCHEDULER_CONFIG)
_TEXT_LAYERS = 30  # the pipeline stacks the hidden states of layers 10, 20 and 30


def mistral_tokenizer():
    """Tekken-like byte-level BPE (the 256 byte characters, no merges) with Mistral's control tokens and a chat
    template, as a fast tokenizer (transformers' PixtralProcessor, the real one's wrapper, needs torchvision)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {token: i for i, token in enumerate(_SPECIALS)}
    vocab.update({c: len(_SPECIALS) + i for i, c in enumerate(bytes_to_unicode().values())})
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(list(_SPECIALS))
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>", chat_template=CHAT_TEMPLATE, model_max_length=131072)


def mistral3_encoder(vocab_size: int, hidden: int = 16):
    """A Mistral3ForConditionalGeneration with a 30-layer text tower `hidden` wide and a one-layer Pixtral vision
    tower (real: 40 layers 5120 wide, and a 24-layer vision tower 1024 wide; 24 B parameters)."""
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration

    config = Mistral3Config(
        text_config={
            "model_type": "mistral", "vocab_size": vocab_size, "hidden_size": hidden, "intermediate_size": 2 * hidden,
            "num_hidden_layers": _TEXT_LAYERS, "num_attention_heads": 4, "num_key_value_heads": 2,
            "head_dim": hidden // 4, "max_position_embeddings": 1024, "rms_norm_eps": 1e-5, "rope_theta": 1e9,
            "sliding_window": None, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 11,
        },
        vision_config={
            "model_type": "pixtral", "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
            "num_attention_heads": 4, "head_dim": 4, "image_size": 64, "patch_size": 8, "num_channels": 3,
        },
        image_token_index=_SPECIALS.index("[IMG]"),
        spatial_merge_size=2,
        vision_feature_layer=-1,
    )
    return Mistral3ForConditionalGeneration(config)


def flux2_vae(latent_channels: int):
    """A 4-block AutoencoderKLFlux2 (8 px a latent side, as the real one; real latent_channels 32)."""
    from diffusers import AutoencoderKLFlux2

    return AutoencoderKLFlux2(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 8, 16, 16), layers_per_block=1,
        latent_channels=latent_channels, norm_num_groups=4, sample_size=64,
        use_quant_conv=False, use_post_quant_conv=False,
    )


@tiny("flux2")
def _tiny_flux2(seed: int) -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler, Flux2Pipeline, Flux2Transformer2DModel

    tokenizer = mistral_tokenizer()
    hidden, latent_channels = 16, 4  # real: 5120, 32
    _seed(seed, 0)
    transformer = Flux2Transformer2DModel(
        patch_size=1,
        in_channels=4 * latent_channels,  # the VAE's latents in 2x2 patches
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=3 * hidden,  # three of the encoder's layers side by side
        timestep_guidance_channels=256,
        axes_dims_rope=(4, 4, 4, 4),  # sums to attention_head_dim
        guidance_embeds=True,
    )
    _seed(seed, 1)
    vae = flux2_vae(latent_channels)
    _seed(seed, 2)
    text_encoder = mistral3_encoder(len(tokenizer), hidden)
    return Flux2Pipeline(scheduler=FlowMatchEulerDiscreteScheduler.from_config(_SCHEDULER_CONFIG), vae=vae,
                         text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer)
