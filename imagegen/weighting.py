"""A1111's prompt weighting on CLIP text encoders: the torch half of imagegen.prompts. Each 75-token chunk goes through
the encoder as [BOS] + tokens + [EOS] + padding (77 ids), its hidden states are multiplied by the tokens' weights and
rescaled to the chunk's original mean (A1111's "Original" emphasis, modules/sd_emphasis.py), and the chunks are
concatenated. The pooled vector is the first chunk's, as in A1111. Written here rather than taken from compel because
compel's maths are not A1111's (see imagegen/prompts.py and the README)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .prompts import Chunk, chunks, padded


@dataclass(frozen=True)
class Encoded:
    """One CLIP encoder's output for a prompt and its negative, padded to the same number of chunks."""

    prompt: Any  # (1, 77 * chunks, width)
    negative: Any
    prompt_pooled: Any  # (1, projection) or None where the encoder has no pooled output
    negative_pooled: Any


def expand_tokens(pipe, text: str, tokenizer) -> str:
    """A multi-vector textual-inversion token spelled out as its vectors' tokens ("tok" -> "tok tok_1 ..."), as the
    pipeline's own encode_prompt does (TextualInversionLoaderMixin.maybe_convert_prompt)."""
    convert = getattr(pipe, "maybe_convert_prompt", None)
    return convert(text, tokenizer) if convert is not None else text


def chunk_length(tokenizer) -> int:
    """Prompt tokens one pass of the encoder reads: 75 for CLIP (77 with BOS and EOS)."""
    return min(int(tokenizer.model_max_length), 77) - 2


def chunked(pipe, parsed: list[tuple[str, float]], tokenizer) -> list[Chunk]:
    """A parsed prompt as A1111's 75-token chunks for this tokenizer."""
    comma = tokenizer.convert_tokens_to_ids(",</w>")
    comma = comma if comma != tokenizer.unk_token_id else None

    def tokenize(texts: list[str]) -> list[list[int]]:
        texts = [expand_tokens(pipe, t, tokenizer) for t in texts]
        return tokenizer(texts, truncation=False, add_special_tokens=False)["input_ids"]

    return chunks(parsed, tokenize, comma, chunk_length=chunk_length(tokenizer))


def token_count(pipe, text: str, tokenizer) -> int:
    """Tokens the text takes in this tokenizer, without BOS and EOS."""
    return len(tokenizer(expand_tokens(pipe, text, tokenizer), truncation=False, add_special_tokens=False)["input_ids"])


def encode_pair(pipe, names: tuple[str, str], parsed: list, parsed_negative: list, *, layer: str) -> Encoded:
    """The prompt and the negative through one CLIP encoder (`names`: its tokenizer's and encoder's attributes on the
    pipeline), weighted and chunked as A1111 does; the shorter one is padded with empty chunks, as A1111 pads the
    unconditional prompt, so the two have the same length."""
    tokenizer, encoder = getattr(pipe, names[0]), getattr(pipe, names[1])
    pos, neg = chunked(pipe, parsed, tokenizer), chunked(pipe, parsed_negative, tokenizer)
    count = max(len(pos), len(neg))
    empty = Chunk(tokens=(), weights=())
    pos += [empty] * (count - len(pos))
    neg += [empty] * (count - len(neg))
    z, pooled = _encode(tokenizer, encoder, pos, layer)
    neg_z, neg_pooled = _encode(tokenizer, encoder, neg, layer)
    return Encoded(prompt=z, negative=neg_z, prompt_pooled=pooled, negative_pooled=neg_pooled)


def _encode(tokenizer, encoder, parts: list[Chunk], layer: str):
    """(hidden states of every chunk, concatenated; the first chunk's pooled output or None)."""
    import torch

    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    device = encoder.device
    hidden, pooled = [], None
    with torch.no_grad():
        for index, chunk in enumerate(parts):
            ids, weights = padded(chunk, bos, eos, pad, chunk_length(tokenizer))
            out = encoder(torch.tensor([ids], device=device), output_hidden_states=True)
            z = out.hidden_states[-2] if layer == "penultimate" else out.last_hidden_state
            if any(w != 1.0 for w in weights):
                z = _emphasis(z, torch.tensor(weights, dtype=z.dtype, device=z.device))
            hidden.append(z)
            if index == 0:
                pooled = getattr(out, "text_embeds", None)
                pooled = pooled if pooled is not None else getattr(out, "pooler_output", None)
    return torch.cat(hidden, dim=1), pooled


def _emphasis(z, weights):
    """A1111's original emphasis: each token's vector times its weight, then the chunk rescaled to its old mean."""
    original_mean = z.mean()
    z = z * weights.reshape(1, -1, 1)
    return z * (original_mean / z.mean())
