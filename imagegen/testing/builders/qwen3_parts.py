"""Tiny Qwen3 text encoders and their tokenizer, built offline, for the families whose pipelines read a Qwen3 LLM
(FLUX.2 klein, Z-Image). Registers no builder: the family builders import from it."""

from __future__ import annotations

from typing import Any

SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>")

# Qwen3's chat template, cut to what the pipelines ask of it: user turns and the assistant's generation prompt.
# With enable_thinking=False (FLUX.2 klein) Qwen3 opens an empty think block after the prompt, as the real template
# does; with enable_thinking=True (Z-Image) it does not. transformers has no Qwen3 template of its own to borrow.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
)


def qwen3_vocab() -> dict[str, int]:
    """Byte-level BPE vocab with no merges: the 256 byte characters, then Qwen's special tokens (numbered last, as in
    the real vocab)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {c: i for i, c in enumerate(bytes_to_unicode().values())}
    vocab.update({token: len(vocab) + i for i, token in enumerate(SPECIALS)})
    return vocab


def qwen3_tokenizer(model_max_length: int = 32768):
    """A Qwen2Tokenizer (what Qwen3 ships) over qwen3_vocab, with the chat template, padding with <|endoftext|>."""
    from tokenizers import AddedToken
    from transformers import Qwen2Tokenizer

    tokenizer = Qwen2Tokenizer(vocab=qwen3_vocab(), merges=[], chat_template=CHAT_TEMPLATE,
                               model_max_length=model_max_length, padding_side="right")
    # Whole tokens, not their bytes, wherever the template writes them (Qwen2Tokenizer adds only <|endoftext|>).
    tokenizer.add_tokens([AddedToken(token, special=True, normalized=False) for token in SPECIALS])
    return tokenizer


def qwen3_config(hidden_size: int, layers: int) -> Any:
    """A small Qwen3 config over qwen3_vocab (grouped-query attention, as the real models have)."""
    from transformers import Qwen3Config

    vocab = qwen3_vocab()
    return Qwen3Config(
        vocab_size=len(vocab),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=hidden_size // 2,
        max_position_embeddings=1024,  # the pipelines read 512 tokens
        tie_word_embeddings=True,
        pad_token_id=vocab["<|endoftext|>"],
        eos_token_id=vocab["<|im_end|>"],
    )


def qwen3_causal_lm(hidden_size: int, layers: int) -> Any:
    """Qwen3ForCausalLM (FLUX.2 klein's class), small."""
    from transformers import Qwen3ForCausalLM

    return Qwen3ForCausalLM(qwen3_config(hidden_size, layers))


def qwen3_model(hidden_size: int, layers: int) -> Any:
    """Qwen3Model (Z-Image's class: no language-model head), small."""
    from transformers import Qwen3Model

    return Qwen3Model(qwen3_config(hidden_size, layers))
