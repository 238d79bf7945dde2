"""How one micro-batch's prompts reach the pipeline. Under the a1111 syntax the extra-network tags are removed from the
text the encoders read, and a prompt with weights, BREAK or more tokens than one CLIP chunk is encoded by
imagegen.weighting and passed as embeddings; any other prompt goes in as text, exactly as before. Under the plain
syntax the prompt goes in as written. Each image's embeddings depend on its own prompt only, and images whose
embeddings differ in length run in separate calls, so no image depends on what it was batched with. Wherever an
encoder cuts a prompt, the user gets a note naming the encoder and the token count."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .prompts import extract_tags, has_weights, parse_attention, plain_text
from .weighting import chunk_length, encode_pair, token_count


@dataclass(frozen=True)
class PromptBatch:
    """The images of a micro-batch that share one pipeline call, and what their prompts are in that call."""

    indexes: tuple[int, ...]  # their positions in the micro-batch
    prompts: list[str]  # the text the encoders read (used when embeddings is None)
    negatives: list[str]
    embeddings: dict | None = None  # the family's embedding arguments, one row per image


def split(batch: PromptBatch, size: int) -> list[PromptBatch]:
    """A call's images in calls of at most `size` (a pipeline that takes fewer prompts than a micro-batch has)."""
    out = []
    for start in range(0, len(batch.indexes), size):
        part = slice(start, start + size)
        embeddings = None if batch.embeddings is None else {
            name: None if value is None else value[part] for name, value in batch.embeddings.items()}
        out.append(PromptBatch(indexes=batch.indexes[part], prompts=batch.prompts[part],
                               negatives=batch.negatives[part], embeddings=embeddings))
    return out


def encoder_texts(req, adapters) -> tuple[str, str]:
    """(prompt, negative) as the encoders read them: tags removed under a1111, then each adapter's rewrite."""
    prompt, negative = req.prompt, req.negative
    if req.prompt_syntax == "a1111":
        prompt, negative = extract_tags(prompt)[0], extract_tags(negative)[0]
    for adapter, spec in adapters:
        prompt, negative = adapter.prompt_text(spec, prompt), adapter.prompt_text(spec, negative)
    return prompt, negative


def prepare(pipe, reqs: list, adapters: list, note: Callable[[str], None], *, embed: bool = False,
            device: str = "cpu", cache: dict | None = None) -> list[PromptBatch]:
    """The micro-batch split into calls by how its prompts go in; `embed` encodes every prompt once (compare), as
    a family with large text encoders always does (Family.encode_each_prompt), through `cache`: a run encodes each
    distinct prompt once."""
    import torch

    groups: dict = {}
    for index, req in enumerate(reqs):
        prompt, negative = encoder_texts(req, adapters)
        embeddings, prompt, negative = _one(pipe, req, prompt, negative, note)
        if embeddings is None and (embed or req.family.encode_each_prompt):
            embeddings = _encoded(pipe, req.family, prompt, negative, device, adapters, cache)
        key = None if embeddings is None else tuple(
            (name, None if value is None else tuple(value.shape)) for name, value in embeddings.items())
        groups.setdefault(key, []).append((index, prompt, negative, embeddings))
    batches = []
    for key, items in groups.items():
        embeddings = None
        if key is not None:
            embeddings = {name: None if items[0][3][name] is None else torch.cat([i[3][name] for i in items])
                          for name, _ in key}
        batches.append(PromptBatch(indexes=tuple(i[0] for i in items), prompts=[i[1] for i in items],
                                   negatives=[i[2] for i in items], embeddings=embeddings))
    return batches


CACHED_PROMPTS = 256  # encoded prompts kept per loaded model (an LLM encoder's are a few hundred KB each)


def _encoded(pipe, family, prompt: str, negative: str, device: str, adapters: list, cache: dict | None) -> dict | None:
    """The family's embeddings of a prompt and negative, from `cache` where this pipeline encoded them before with
    the same in-place adapters (a text-encoder LoRA or an embedding changes them), else encoded and kept."""
    key = (type(pipe).__name__, prompt, negative,
           tuple((a.name, repr(a.hash_value(spec))) for a, spec in adapters if a.in_place))
    if cache is not None and key in cache:
        return cache[key]
    embeddings = family.encode_prompt(pipe, prompt, negative, device)
    if cache is not None:
        if len(cache) >= CACHED_PROMPTS:
            del cache[next(iter(cache))]  # the oldest
        cache[key] = embeddings
    return embeddings


def _one(pipe, req, prompt: str, negative: str, note) -> tuple[dict | None, str, str]:
    """(embeddings or None, prompt text, negative text) for one image."""
    family = req.family
    if req.prompt_syntax != "a1111":
        _note_cuts(pipe, family, prompt, negative, note, chunked=False)
        return None, prompt, negative
    parsed, parsed_negative = parse_attention(prompt), parse_attention(negative)
    plain, plain_negative = plain_text(parsed), plain_text(parsed_negative)
    _note_cuts(pipe, family, plain, plain_negative, note, chunked=True)
    if family.weighted_encoders and _needs_weighting(pipe, family, parsed, parsed_negative):
        encoded = [encode_pair(pipe, names, parsed, parsed_negative, layer=family.clip_layer)
                   for names in family.weighted_encoders]
        embeddings = family.weighted_embeddings(pipe, encoded, plain, plain_negative, negative_empty=not negative)
        return embeddings, prompt, negative
    return None, _literal(prompt, parsed), _literal(negative, parsed_negative)


def _needs_weighting(pipe, family, parsed: list, parsed_negative: list) -> bool:
    """Whether the text path would lose something: a weight, a BREAK, or tokens past one CLIP chunk."""
    if has_weights(parsed) or has_weights(parsed_negative):
        return True
    texts = ["".join(t for t, _ in parsed), "".join(t for t, _ in parsed_negative)]
    return any(token_count(pipe, text, getattr(pipe, names[0])) > chunk_length(getattr(pipe, names[0]))
               for names in family.weighted_encoders for text in texts)


def _literal(text: str, parsed: list) -> str:
    """The text without escapes and stray brackets (all weights 1): what the encoder should read."""
    return text if parsed == [(text, 1.0)] else "".join(t for t, _ in parsed)


def _note_cuts(pipe, family, prompt: str, negative: str, note, *, chunked: bool) -> None:
    """A note for each encoder that reads fewer tokens than the prompt (or negative) has."""
    for label, attr, limit, a1111_chunks in family.prompt_limits(pipe):
        tokenizer = getattr(pipe, attr, None)
        if tokenizer is None or (chunked and a1111_chunks):
            continue
        limit = limit or chunk_length(tokenizer)
        for which, text in (("prompt", prompt), ("negative prompt", negative)):
            count = token_count(pipe, text, tokenizer) if text else 0
            if count > limit:
                note(f"{family.name}: the {which} has {count} tokens and {label} reads {limit}: the last "
                     f"{count - limit} are cut" + (" (--prompt-syntax a1111 chunks it instead)"
                                                   if a1111_chunks else ""))
