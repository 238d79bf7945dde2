"""AUTOMATIC1111 stable-diffusion-webui 1.10's prompt grammar and CLIP chunking, ported to pure Python so a prompt
copied from civitai means here what it meant in A1111: `(x)` / `[x]` / `(x:1.3)` emphasis, escapes, BREAK, the
`<lora:name:0.8>` extra-network tags, and the split into 75-token chunks with A1111's comma backtrack. It is written
here rather than taken from compel because compel reads a different language (`x++`, `(x)1.3`; not `(x:1.3)`, `[x]`
or BREAK), does different maths (it scales a token's difference from the empty prompt's embedding and down-weights by
blending with a masked prompt, where A1111 multiplies each token's embedding by its weight and then restores the
chunk's mean), and splits long prompts at sentence boundaries where A1111 splits at 75 tokens, backing up to the last
comma. Ported from A1111 1.10's modules/prompt_parser.py (read at commit 28bd8e1), modules/sd_hijack_clip.py
(5ad03e6), modules/extra_networks.py and extensions-builtin/Lora/extra_networks_lora.py."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field

BREAK = ("BREAK", -1.0)  # the fragment parse_attention gives for BREAK (A1111: ["BREAK", -1])

# modules/prompt_parser.py: re_attention and re_break, verbatim.
_RE_ATTENTION = re.compile(r"""
\\\(|
\\\)|
\\\[|
\\]|
\\\\|
\\|
\(|
\[|
:\s*([+-]?[.\d]+)\s*\)|
\)|
]|
[^\\()\[\]:]+|
:
""", re.X)
_RE_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)
# modules/extra_networks.py: re_extra_net, verbatim.
_RE_EXTRA_NET = re.compile(r"<(\w+):([^>]+)>")
_LORA_KINDS = ("lora", "lyco")  # extensions-builtin/Lora/lora_script.py registers "lyco" as an alias of "lora"
_ROUND, _SQUARE = 1.1, 1 / 1.1


def _is_break(text: str, weight: float) -> bool:
    """True for the BREAK marker fragment (A1111 tests `text == 'BREAK' and weight == -1`)."""
    return text == "BREAK" and weight == -1


def parse_attention(text: str) -> list[tuple[str, float]]:
    """The (text, weight) fragments of a prompt, exactly as A1111's parse_prompt_attention gives them."""
    # Mirrors modules/prompt_parser.py: parse_prompt_attention (same order of float multiplications).
    res: list[list] = []
    round_brackets: list[int] = []
    square_brackets: list[int] = []

    def multiply_range(start: int, multiplier: float) -> None:
        for p in range(start, len(res)):
            res[p][1] *= multiplier

    for m in _RE_ATTENTION.finditer(text):
        part, weight = m.group(0), m.group(1)
        if part.startswith("\\"):
            res.append([part[1:], 1.0])
        elif part == "(":
            round_brackets.append(len(res))
        elif part == "[":
            square_brackets.append(len(res))
        elif weight is not None and round_brackets:
            try:
                value = float(weight)
            except ValueError:
                raise ValueError(f"prompt weight {part!r} is not a number: write (text:1.3)") from None
            multiply_range(round_brackets.pop(), value)
        elif part == ")" and round_brackets:
            multiply_range(round_brackets.pop(), _ROUND)
        elif part == "]" and square_brackets:
            multiply_range(square_brackets.pop(), _SQUARE)
        else:
            for i, piece in enumerate(_RE_BREAK.split(part)):
                if i > 0:
                    res.append(list(BREAK))
                res.append([piece, 1.0])

    for pos in round_brackets:  # unbalanced: an unclosed bracket still applies to the rest of the prompt
        multiply_range(pos, _ROUND)
    for pos in square_brackets:
        multiply_range(pos, _SQUARE)
    return _merged(res) if res else [("", 1.0)]


def _merged(res: list[list]) -> list[tuple[str, float]]:
    """Neighbouring fragments of identical weight joined (A1111's 'merge runs of identical weights')."""
    i = 0
    while i + 1 < len(res):
        if res[i][1] == res[i + 1][1]:
            res[i][0] += res[i + 1][0]
            res.pop(i + 1)
        else:
            i += 1
    return [(t, float(w)) for t, w in res]


def has_weights(parsed: list[tuple[str, float]]) -> bool:
    """True when any fragment has a weight other than 1 or is a BREAK."""
    return any(weight != 1.0 for _, weight in parsed)


def plain_text(parsed: list[tuple[str, float]]) -> str:
    """The prompt without weights or brackets (for a T5 encoder): BREAK is a space, whitespace runs collapsed."""
    text = "".join(" " if _is_break(t, w) else t for t, w in parsed)
    return " ".join(text.split())


@dataclass(frozen=True)
class Tag:
    """One extra-network tag `<kind:name:arg...>` as written in the prompt."""

    kind: str
    name: str
    args: tuple[str, ...]
    text: str


def extract_tags(prompt: str) -> tuple[str, list[Tag]]:
    """The prompt with every `<kind:name:args>` tag replaced by "", and the tags in order."""
    # Mirrors modules/extra_networks.py: parse_prompt (items = args.split(":"); name = items[0]).
    tags: list[Tag] = []

    def found(m: re.Match) -> str:
        items = m.group(2).split(":")
        tags.append(Tag(kind=m.group(1), name=items[0], args=tuple(items[1:]), text=m.group(0)))
        return ""

    return _RE_EXTRA_NET.sub(found, prompt), tags


def _float_arg(tag: Tag, value: str) -> float:
    """A lora tag's multiplier as a finite float, or a one-line ValueError naming the tag."""
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        raise ValueError(f"{tag.text}: the LoRA scale {value!r} is not a number; write <lora:NAME> or <lora:NAME:0.8>")
    return number


def lora_tags(prompt: str) -> list[tuple[str, float | None]]:
    """(name, scale) of each `<lora:...>` / `<lyco:...>` tag in order; scale None when the tag gives none."""
    # Mirrors modules/extra_networks.py: ExtraNetworkParams (an item splitting into exactly two at "=" is named) and
    # extensions-builtin/Lora/extra_networks_lora.py: ExtraNetworkLora.activate (te = positional[1], then te=).
    # unet=, dyn= and the third/fourth positional values are accepted and ignored.
    out: list[tuple[str, float | None]] = []
    for tag in extract_tags(prompt)[1]:
        if tag.kind not in _LORA_KINDS:
            continue
        items = (tag.name, *tag.args)
        positional = [item for item in items if len(item.split("=", 2)) != 2]
        named = dict(item.split("=", 1) for item in items if len(item.split("=", 2)) == 2)
        if not positional:
            raise ValueError(f"{tag.text}: a LoRA tag needs a name first; write <lora:NAME> or <lora:NAME:0.8>")
        scale = _float_arg(tag, positional[1]) if len(positional) > 1 else None
        if "te" in named:
            scale = _float_arg(tag, named["te"])
        out.append((positional[0], scale))
    return out


@dataclass(frozen=True)
class Chunk:
    """One CLIP window's own tokens (no BOS/EOS/padding, at most chunk_length) and their weights."""

    tokens: tuple[int, ...]
    weights: tuple[float, ...]
    # True when A1111 closed this chunk before the prompt ended (full, comma backtrack or BREAK): it then counts
    # chunk_length toward token_count whatever its length; the prompt's last chunk counts its own tokens.
    closed: bool = field(default=False, compare=False)


def chunks(parsed: list[tuple[str, float]], tokenize: Callable[[list[str]], list[list[int]]],
           comma_token: int | None, *, chunk_length: int = 75, backtrack: int = 20) -> list[Chunk]:
    """The prompt's tokens split into CLIP chunks exactly as A1111's tokenize_line splits them."""
    # Mirrors modules/sd_hijack_clip.py: TextConditionalModel.tokenize_line, without textual-inversion embeddings;
    # backtrack is opts.comma_padding_backtrack (0 turns it off).
    out: list[Chunk] = []
    tokens: list[int] = []
    weights: list[float] = []
    last_comma = -1

    def next_chunk(is_last: bool = False) -> None:
        nonlocal tokens, weights, last_comma
        out.append(Chunk(tuple(tokens), tuple(weights), closed=not is_last))
        tokens, weights, last_comma = [], [], -1

    for ids, (text, weight) in zip(tokenize([t for t, _ in parsed]), parsed):
        if _is_break(text, weight):
            next_chunk()
            continue
        for token in ids:
            if token == comma_token:
                last_comma = len(tokens)
            elif backtrack != 0 and len(tokens) == chunk_length and last_comma != -1 \
                    and len(tokens) - last_comma <= backtrack:
                cut = last_comma + 1  # the tokens after the last comma move to the next chunk
                moved, moved_weights = tokens[cut:], weights[cut:]
                tokens, weights = tokens[:cut], weights[:cut]
                next_chunk()
                tokens, weights = moved, moved_weights
            if len(tokens) == chunk_length:
                next_chunk()
            tokens.append(token)
            weights.append(weight)
    if tokens or not out:
        next_chunk(is_last=True)
    return out


def token_count(result: list[Chunk], chunk_length: int = 75) -> int:
    """The token count A1111's tokenize_line reports for these chunks (what its UI shows as N/75)."""
    return sum(chunk_length if c.closed else len(c.tokens) for c in result)


def padded(chunk: Chunk, bos: int, eos: int, pad: int, chunk_length: int = 75) -> tuple[list[int], list[float]]:
    """The chunk_length + 2 ids and multipliers the text encoder gets for a chunk, as A1111 builds them."""
    # Mirrors modules/sd_hijack_clip.py: tokenize_line's next_chunk (body padded with id_end, then BOS/EOS around it)
    # and process_tokens (when id_pad != id_end, everything after the first id_end becomes id_pad).
    rest = chunk_length - len(chunk.tokens)
    ids = [bos, *chunk.tokens, eos, *([pad] * rest)]
    multipliers = [1.0, *chunk.weights, *([1.0] * (rest + 1))]
    return ids, multipliers
