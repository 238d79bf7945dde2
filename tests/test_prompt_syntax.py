"""A1111's prompt language, as imagegen.prompts reads it: weights, BREAK, extra-network tags and 75-token chunks.
Expected values come from A1111 1.10's own rules (modules/prompt_parser.py, modules/sd_hijack_clip.py)."""

from __future__ import annotations

import re

import pytest

from imagegen.prompts import (
    BREAK, Chunk, Tag, chunks, extract_tags, has_weights, lora_tags, padded, parse_attention, plain_text, token_count,
)

UP, DOWN = 1.1, 1 / 1.1

PARSED = [
    # A1111's own docstring examples for parse_prompt_attention, verbatim.
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", 1.1)]),
    ("\\(literal\\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
     [("a ", 1.0), ("house", 1.5730000000000004), (" ", 1.1), ("on", 1.0), (" a ", 1.1), ("hill", 0.55),
      (", sun, ", 1.1), ("sky", 1.4641000000000006), (".", 1.1)]),
    # Nesting multiplies.
    ("((a))", [("a", UP * UP)]),
    ("[[a]]", [("a", DOWN * DOWN)]),
    ("[(a:1.5)] b", [("a", 1.5 * DOWN), (" b", 1.0)]),
    ("(a [b] c:1.2)", [("a ", 1.2), ("b", DOWN * 1.2), (" c", 1.2)]),
    ("(a : 1.3 )", [("a ", 1.3)]),  # whitespace around the number is allowed
    ("(a:b)", [("a:b", 1.1)]),  # a colon not followed by a number is text
    # Escapes.
    ("\\(a\\) \\[b\\] c\\\\d", [("(a) [b] c\\d", 1.0)]),
    ("\\((a)\\)", [("(", 1.0), ("a", 1.1), (")", 1.0)]),
    # Unbalanced brackets: an unclosed one applies to the rest, a stray closing one is text.
    ("a (b", [("a ", 1.0), ("b", 1.1)]),
    ("[a", [("a", DOWN)]),
    ("a) b]", [("a) b]", 1.0)]),
    ("a:1.2) b", [("a:1.2) b", 1.0)]),
    # BREAK, uppercase and a word of its own, swallowing the whitespace around it.
    ("a BREAK b", [("a", 1.0), BREAK, ("b", 1.0)]),
    ("BREAK a", [("", 1.0), BREAK, ("a", 1.0)]),
    ("a BREAK", [("a", 1.0), BREAK, ("", 1.0)]),
    ("a,BREAK,b", [("a,", 1.0), BREAK, (",b", 1.0)]),
    ("BREAKFAST at tiffany's", [("BREAKFAST at tiffany's", 1.0)]),
    ("a break b", [("a break b", 1.0)]),
    ("(a BREAK b)", [("a", 1.1), ("BREAK", -1.1), ("b", 1.1)]),  # A1111 multiplies the marker too: no break then
    ("", [("", 1.0)]),
    ("()", [("", 1.0)]),
]


@pytest.mark.parametrize("prompt, expected", PARSED)
def test_parse_attention_matches_a1111(prompt, expected):
    got = parse_attention(prompt)
    assert [text for text, _ in got] == [text for text, _ in expected]
    assert [w for _, w in got] == pytest.approx([w for _, w in expected], abs=1e-9)
    assert all(type(fragment) is tuple for fragment in got)


def test_a_weight_that_is_no_number_is_refused_in_one_line():
    with pytest.raises(ValueError, match=re.escape("(text:1.3)")):
        parse_attention("(a:1.2.3)")


@pytest.mark.parametrize("prompt, expected", [
    ("a (red:1.3) [cat], BREAK (sky)", "a red cat, sky"),
    ("  ((masterpiece)),   best\nquality ", "masterpiece, best quality"),
    ("\\(literal\\) BREAK BREAK end", "(literal) end"),
    ("", ""),
])
def test_plain_text_is_what_a_t5_encoder_reads(prompt, expected):
    assert plain_text(parse_attention(prompt)) == expected


@pytest.mark.parametrize("prompt, weighted", [
    ("a cat", False), ("\\(a cat\\)", False), ("(a cat:1)", False), ("(a cat)", True), ("a BREAK b", True),
])
def test_has_weights(prompt, weighted):
    assert has_weights(parse_attention(prompt)) is weighted


def test_tags_are_removed_from_the_prompt_and_returned_in_order():
    text, tags = extract_tags("a cat <lora:fluffy:0.8>, <hypernet:anime:1> in a hat<lora:hats>")
    assert text == "a cat ,  in a hat"
    assert tags == [Tag("lora", "fluffy", ("0.8",), "<lora:fluffy:0.8>"),
                    Tag("hypernet", "anime", ("1",), "<hypernet:anime:1>"),
                    Tag("lora", "hats", (), "<lora:hats>")]


def test_text_without_tags_is_unchanged():
    assert extract_tags("a <b> c <:x> d") == ("a <b> c <:x> d", [])


@pytest.mark.parametrize("prompt, expected", [
    ("<lora:fluffy:0.8> a cat", [("fluffy", 0.8)]),
    ("<lora:hats>", [("hats", None)]),
    ("<lyco:old:-1>", [("old", -1.0)]),
    ("<lora:a:0.5:unet=0.2><lora:b:te=0.3:dyn=8>", [("a", 0.5), ("b", 0.3)]),
    ("<lora:x:1:0.7:16>", [("x", 1.0)]),  # the third and fourth values (unet, dyn) are ignored
    ("<hypernet:anime:1> <embedding:x>", []),
    ("<lora:first:1> then <lora:second:0.25>", [("first", 1.0), ("second", 0.25)]),
])
def test_lora_tags(prompt, expected):
    assert lora_tags(prompt) == expected


@pytest.mark.parametrize("tag", ["<lora:fluffy:strong>", "<lora:fluffy:nan>", "<lyco:fluffy:te=lots>"])
def test_a_lora_scale_that_is_no_number_is_refused_in_one_line(tag):
    with pytest.raises(ValueError, match=re.escape(tag)) as raised:
        lora_tags(f"a cat {tag}")
    assert "\n" not in str(raised.value) and "<lora:NAME:0.8>" in str(raised.value)


COMMA, OTHER = 0, 999


def tokenize(texts: list[str]) -> list[list[int]]:
    """A fake CLIP tokenizer, one token per word: "wN" is token N, "," is COMMA, any other word OTHER."""
    ids = {",": COMMA}
    return [[ids.get(w, int(w[1:]) if w[1:].isdigit() else OTHER) for w in re.findall(r",|[^\s,]+", t)] for t in texts]


def words(start: int, stop: int) -> str:
    return " ".join(f"w{i}" for i in range(start, stop))


def split(prompt: str, **options) -> list[Chunk]:
    return chunks(parse_attention(prompt), tokenize, COMMA, **options)


def test_a_short_prompt_is_one_chunk_with_its_weights():
    result = split("w1 (w2 w3:1.5) [w4]")
    assert result == [Chunk((1, 2, 3, 4), (1.0, 1.5, 1.5, DOWN))]
    assert token_count(result) == 4


def test_an_empty_prompt_is_one_empty_chunk():
    assert split("") == [Chunk((), ())]
    assert token_count(split("")) == 0


def test_150_tokens_make_two_full_chunks():
    result = split(words(1, 151))
    assert [c.tokens for c in result] == [tuple(range(1, 76)), tuple(range(76, 151))]
    assert token_count(result) == 150


def test_76_tokens_spill_one_into_a_second_chunk():
    result = split(words(1, 77))
    assert [len(c.tokens) for c in result] == [75, 1]
    assert token_count(result) == 76


def test_a_late_comma_moves_the_words_after_it_to_the_next_chunk():
    result = split(f"{words(1, 71)}, ({words(71, 81)}:1.2)")  # the comma is token 71 of 81
    assert result[0].tokens == (*range(1, 71), COMMA)
    assert result[1].tokens == tuple(range(71, 81))
    assert result[1].weights == (1.2,) * 10  # weights travel with their tokens
    assert token_count(result) == 85  # A1111 counts the closed chunk as 75


@pytest.mark.parametrize("options", [{"backtrack": 0}, {"backtrack": 4}])
def test_the_backtrack_reaches_only_as_far_as_allowed(options):
    result = split(f"{words(1, 71)}, {words(71, 81)}", **options)  # the comma is 5 tokens from the end
    assert [len(c.tokens) for c in result] == [75, 6]


def test_an_early_comma_does_not_move_anything():
    result = split(f"{words(1, 51)}, {words(51, 81)}")  # 25 tokens from the end: beyond the default 20
    assert [len(c.tokens) for c in result] == [75, 6]


def test_break_closes_the_chunk_and_pads_it():
    result = split("w1 (w2:1.3) BREAK w3")
    assert result == [Chunk((1, 2), (1.0, 1.3)), Chunk((3,), (1.0,))]
    assert token_count(result) == 76
    ids, multipliers = padded(result[0], bos=100, eos=101, pad=101)
    assert ids == [100, 1, 2] + [101] * 74 and multipliers == [1.0, 1.0, 1.3] + [1.0] * 74


def test_break_at_the_start_or_end():
    assert split("BREAK w1") == [Chunk((), ()), Chunk((1,), (1.0,))]
    assert split("w1 BREAK") == [Chunk((1,), (1.0,))]
    assert token_count(split("w1 BREAK")) == 75  # as A1111 reports it


def test_break_inside_brackets_is_a_word_as_in_a1111():
    assert split("(w1 BREAK w2)") == [Chunk((1, OTHER, 2), (1.1, -1.1, 1.1))]


@pytest.mark.parametrize("pad", [49407, 0])  # SD1's CLIP pads with its end token; SD2's OpenCLIP with 0
def test_padded_is_77_ids_with_bos_eos_and_padding(pad):
    ids, multipliers = padded(Chunk((5, 6), (1.2, 0.9)), bos=49406, eos=49407, pad=pad)
    assert ids == [49406, 5, 6, 49407] + [pad] * 73
    assert multipliers == [1.0, 1.2, 0.9] + [1.0] * 74
    assert len(ids) == len(multipliers) == 77


def test_a_full_chunk_pads_to_77_too():
    full = split(words(1, 76))[0]
    ids, multipliers = padded(full, bos=49406, eos=49407, pad=49407)
    assert ids == [49406, *range(1, 76), 49407] and len(multipliers) == 77
