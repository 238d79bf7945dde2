"""Tiny Qwen-Image pipelines (random weights, offline): QwenImagePipeline, or with `edit=True` Qwen-Image-Edit-2509's
QwenImageEditPlusPipeline and its processor.

Layout as the real models, shrunk: a Qwen2.5-VL text encoder (small text and vision towers) reading a byte-level
ChatML tokenizer (the 256 byte characters, Qwen's special tokens, and merges for the words of the pipelines' prompt
templates, so their system prompts take 34 and 64 tokens as in Qwen's tokenizer and the pipelines drop exactly
them, leaving the prompt's tokens to condition the image), the Wan-style AutoencoderKLQwenImage
(three downsamplings: 8 pixels a latent, 16 latent channels) and a QwenImageTransformer2DModel on 2x2-packed latents
(64 input channels). Sizes are multiples of 16; 64x64 is the size to test at.

The edit pipeline VAE-encodes each reference image at about 1024x1024 whatever its size (the pipeline's
VAE_IMAGE_SIZE): on a CPU that takes this tiny VAE several seconds an image, so quick tests lower that constant.
Its processor is a Qwen2VLProcessor without the video processor (see _processor_class), which the folder's
model_index.json names by this module: diffusers loads such a component only from a module already imported, so the
edit folder loads where imagegen.testing is imported (tests, or a script importing it first), not in a bare
`imagegen` process.
"""

from __future__ import annotations

from typing import Any

from ..parts import _seed
from ..registry import tiny

# Qwen/Qwen-Image scheduler/scheduler_config.json (the same in Qwen-Image-Edit-2509).
SCHEDULER_CONFIG: dict[str, Any] = {
    "base_image_seq_len": 256,
    "base_shift": 0.5,
    "invert_sigmas": False,
    "max_image_seq_len": 8192,
    "max_shift": 0.9,
    "num_train_timesteps": 1000,
    "shift": 1.0,
    "shift_terminal": 0.02,
    "stochastic_sampling": False,
    "time_shift_type": "exponential",
    "use_beta_sigmas": False,
    "use_dynamic_shifting": True,
    "use_exponential_sigmas": False,
    "use_karras_sigmas": False,
}
PAD, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
VISION = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
# Qwen2-VL's ChatML template, images and text only (the pipelines format their prompts themselves; a tokenizer of
# this family carries one all the same).
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>{% elif part['type'] == 'text' %}"
    "{{ part['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# The pipelines' prompt templates (QwenImagePipeline's and QwenImageEditPlusPipeline's prompt_template_encode,
# before the prompt; the assistant turn after it) and the edit prompt's picture label: their words get merges.
TEMPLATE_WORDS = (
    "<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, text, spatial "
    "relationships of the objects and background:<|im_end|>\n<|im_start|>user\n",
    "<|im_start|>system\nDescribe the key features of the input image (color, shape, size, texture, objects, "
    "background), then explain how the user's text instruction should alter or modify the image. Generate a new image "
    "that meets the user's requirements while maintaining consistency with the original input where appropriate."
    "<|im_end|>\n<|im_start|>user\n",
    "<|im_end|>\n<|im_start|>assistant\n",
    "Picture 1: ",
)
TEXT_WIDTH = 32  # real: 3584 (Qwen2.5-VL-7B), the transformer's joint_attention_dim
LATENT_CHANNELS = 16  # as the real VAE's z_dim
PROCESSOR = "QwenImageTinyProcessor"


@tiny("qwen-image")
def _tiny_qwen_image(seed: int, edit: bool = False) -> Any:
    import torch
    from diffusers import (AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImageEditPlusPipeline,
                           QwenImagePipeline, QwenImageTransformer2DModel)

    tokenizer = _tokenizer()
    _seed(seed, 0)
    transformer = QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=4 * LATENT_CHANNELS,  # 2x2 packing
        out_channels=LATENT_CHANNELS,
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=TEXT_WIDTH,
        guidance_embeds=False,  # as Qwen-Image and its Edit models
        axes_dims_rope=(4, 6, 6),  # sums to attention_head_dim
    )
    _seed(seed, 1)
    vae = AutoencoderKLQwenImage(
        base_dim=8,
        z_dim=LATENT_CHANNELS,
        dim_mult=[1, 2, 2, 2],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],  # 2 ** 3 = 8 pixels a latent, as the real one
        latents_mean=[0.0] * LATENT_CHANNELS,
        latents_std=[1.0] * LATENT_CHANNELS,
    )
    with torch.no_grad():  # its random output layer decodes to a narrow grey band: spread it so changes show in pixels
        vae.decoder.conv_out.weight.mul_(4)
        vae.decoder.conv_out.bias.mul_(4)
    _seed(seed, 2)
    text_encoder = _text_encoder(tokenizer)
    components = dict(scheduler=FlowMatchEulerDiscreteScheduler.from_config(SCHEDULER_CONFIG), vae=vae,
                      text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer)
    if edit:
        return QwenImageEditPlusPipeline(processor=_processor(tokenizer), **components)
    return QwenImagePipeline(**components)


def _tokenizer():
    """A byte-level Qwen2 tokenizer: the 256 byte characters, the template words, then Qwen's special tokens (ChatML
    and vision), numbered last as in Qwen's vocabulary."""
    from transformers import Qwen2Tokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {c: i for i, c in enumerate(bytes_to_unicode().values())}
    merges = _template_merges(Qwen2Tokenizer(vocab=dict(vocab), merges=[]))
    for token in [left + right for left, right in merges] + [PAD, IM_START, IM_END, *VISION]:
        vocab.setdefault(token, len(vocab))
    return Qwen2Tokenizer(vocab=vocab, merges=merges, eos_token=IM_END, pad_token=PAD,
                          additional_special_tokens=[IM_START, IM_END, *VISION], chat_template=CHAT_TEMPLATE,
                          model_max_length=131072)


def _template_merges(plain) -> list[tuple[str, str]]:
    """BPE merges that make each pre-token of the template words one token: each word's prefixes grown a character
    at a time. Words after a space (Ġ...) come first: their chains then outrank any merge inside them, which could
    otherwise split them."""
    import re

    pieces: list[str] = []
    for text in TEMPLATE_WORDS:
        for part in re.split(r"(<\|[a-z_]+\|>)", text):
            if part and not part.startswith("<|"):
                pieces += [piece for piece, _ in plain.backend_tokenizer.pre_tokenizer.pre_tokenize_str(part)]
    merges: dict[tuple[str, str], None] = {}
    for piece in sorted(dict.fromkeys(pieces), key=lambda p: not p.startswith("\u0120")):
        for end in range(1, len(piece)):
            merges[(piece[:end], piece[end])] = None
    return list(merges)


def _text_encoder(tokenizer):
    """Qwen2.5-VL with 2 small text layers and a 2-block vision tower, its special ids the tokenizer's."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    ids = tokenizer.convert_tokens_to_ids
    config = Qwen2_5_VLConfig(
        text_config={
            "hidden_size": TEXT_WIDTH, "intermediate_size": 2 * TEXT_WIDTH, "num_hidden_layers": 2,
            "num_attention_heads": 2, "num_key_value_heads": 2, "vocab_size": len(tokenizer),
            # multimodal RoPE: temporal, height and width sections sum to half a head (16 / 2)
            "rope_scaling": {"mrope_section": [2, 3, 3], "rope_type": "default", "type": "default"},
            "rope_theta": 1000000.0, "bos_token_id": None, "eos_token_id": ids(IM_END), "pad_token_id": ids(PAD),
        },
        vision_config={
            "depth": 2, "hidden_size": 16, "intermediate_size": 32, "num_heads": 2, "out_hidden_size": TEXT_WIDTH,
            "fullatt_block_indexes": [1], "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2,
        },
        vocab_size=len(tokenizer),
        vision_start_token_id=ids(VISION[0]), vision_end_token_id=ids(VISION[1]), image_token_id=ids(VISION[2]),
        video_token_id=ids(VISION[3]),
    )
    return Qwen2_5_VLForConditionalGeneration(config)


def _processor(tokenizer):
    """The edit pipeline's processor: the tokenizer and a small Qwen2-VL image processor (at most 112x112 pixels a
    condition image: 16 image tokens)."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    images = Qwen2VLImageProcessorPil(size={"shortest_edge": 56 * 56, "longest_edge": 112 * 112}, patch_size=14,
                                      temporal_patch_size=2, merge_size=2)
    return _processor_class()(image_processor=images, tokenizer=tokenizer)


def _processor_class():
    """Qwen2VLProcessor without its video processor. In transformers 5 Qwen2VLProcessor requires one, and the video
    processor needs torchvision (imagegen does not); the Qwen-Image-Edit pipelines give the processor text and
    images only. The class is defined here (made on first use, so importing this module stays light) and a saved
    folder's model_index.json names this module, where diffusers finds it again when loading."""
    cls = globals().get(PROCESSOR)
    if cls is None:
        from transformers import Qwen2VLProcessor

        class QwenImageTinyProcessor(Qwen2VLProcessor):
            """Qwen2VLProcessor taking an image processor and a tokenizer, no video processor."""

            def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
                # ProcessorMixin takes the sub-processors this signature names: the video one is left out.
                super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

        cls = globals()[PROCESSOR] = QwenImageTinyProcessor
    return cls


def __getattr__(name: str) -> Any:
    """The tiny processor class, and ProcessorMixin beside it, for diffusers' loader: a saved folder names this module
    as the processor's library, and diffusers looks the class and its loading base class up in it."""
    if name == PROCESSOR:
        return _processor_class()
    if name == "ProcessorMixin":
        from transformers import ProcessorMixin

        return ProcessorMixin
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
