"""A1111 prompt syntax on real (tiny) pipelines: weights and BREAK change the image, long prompts are chunked and
never silently cut, `--prompt-syntax plain` keeps the text literal, and records from before the syntax replay as
plain."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SMALL = ("--size", "64x64", "--steps", "2", "--seed", "5")
LONG = "a fox, " + ", ".join(f"tag{i}" for i in range(40))  # ~300 tokens for the tiny byte-level tokenizers


@pytest.fixture(scope="module")
def models(tiny_models, tmp_path_factory):
    from imagegen.testing import build_tiny

    return {**tiny_models, "sd15": build_tiny("sd15", tmp_path_factory.mktemp("weighting") / "sd15")}


def run(cli, family_models, family, prompt, *args):
    result = cli("txt2img", prompt, "--model", family_models[family], *SMALL, "--json", *args)
    assert result.code == 0, result.err
    return json.loads(result.out)["images"][0]["pixels_sha256"], result.err


@pytest.mark.parametrize("family", ["sd15", "sdxl", "sd3"])
def test_weights_break_and_long_prompts_change_the_image(cli, models, family):
    plain, _ = run(cli, models, family, "a red fox")
    assert run(cli, models, family, "a (red:1.5) fox")[0] != plain
    assert run(cli, models, family, "a [red] fox")[0] != plain
    assert run(cli, models, family, "a red BREAK fox")[0] != plain
    assert run(cli, models, family, "a (red:1) fox")[0] == plain  # weight 1 is the plain text, exactly
    assert run(cli, models, family, "a red fox", "--prompt-syntax", "plain")[0] == plain
    first, err = run(cli, models, family, LONG + ", end")
    assert "cut" not in err.replace("T5", "")  # CLIP is chunked, not cut
    assert run(cli, models, family, LONG + ", fin")[0] != first  # the last word counts


@pytest.mark.parametrize("family", ["sd15", "sdxl", "sd3", "flux"])
def test_plain_syntax_cuts_with_a_note_and_keeps_brackets_literal(cli, models, family):
    end, err = run(cli, models, family, LONG + ", end", "--prompt-syntax", "plain")
    assert "tokens and CLIP" in err and "are cut" in err
    changed = run(cli, models, family, LONG + ", fin", "--prompt-syntax", "plain")[0]
    assert (changed == end) == (family in ("sd15", "sdxl"))  # CLIP alone: cut, as before; T5 still reads it
    literal = run(cli, models, family, "a (red:1.5) fox", "--prompt-syntax", "plain")[0]
    assert literal != run(cli, models, family, "a (red:1.5) fox")[0]


def test_flux_reads_the_text_without_weights_and_notes_cuts(cli, models):
    assert run(cli, models, "flux", "a (red:1.5) [fox]")[0] == run(cli, models, "flux", "a red fox")[0]
    _, err = run(cli, models, "flux", LONG)
    assert "CLIP (pooled) reads" in err


def test_t5_cut_is_a_note(cli, models):
    _, err = run(cli, models, "sd3", "a fox " + "x" * 400)
    assert "T5 reads 255" in err


def test_records_without_a_syntax_replay_as_plain(cli, models, tmp_path):
    result = cli("txt2img", "a (red:1.5) fox", "--model", models["sd15"], *SMALL, "--prompt-syntax", "plain",
                 "-o", tmp_path)
    assert result.code == 0, result.err
    sidecar = next(tmp_path.glob("*.json"))
    record = json.loads(sidecar.read_text())
    assert record["prompt_syntax"] == "plain"
    del record["prompt_syntax"]  # as imagegen wrote records before prompt syntax existed
    sidecar.write_text(json.dumps(record))
    verify = cli("reproduce", sidecar, "--verify", "-o", tmp_path / "again")
    assert verify.code == 0 and "identical" in verify.err


def test_images_batched_with_other_prompt_lengths_are_unchanged(cli, models, tmp_path):
    lines = [{"prompt": "a red fox", "seed": 5}, {"prompt": LONG, "seed": 5}, {"prompt": "a (red:1.4) fox", "seed": 5},
             {"prompt": "a fox BREAK snow", "seed": 5}]
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("\n".join(json.dumps(line) for line in lines))
    result = cli("batch", prompts, "--model", models["sdxl"], "--size", "64x64", "--steps", "2", "--batch-size", "4",
                 "-o", tmp_path / "o", "--json")
    assert result.code == 0, result.err
    images = sorted(json.loads(result.out)["images"], key=lambda i: i["index"])
    batched = [json.loads(Path(i["path"]).with_suffix(".json").read_text())["output"]["pixels_sha256"] for i in images]
    assert batched == [run(cli, models, "sdxl", line["prompt"])[0] for line in lines]


def test_the_encoder_gets_a1111s_tokens_and_weighted_states(models):
    """The ids and the weighted, mean-restored hidden states, computed by hand for one CLIP chunk."""
    import diffusers
    import torch

    from imagegen.weighting import encode_pair

    pipe = diffusers.StableDiffusionPipeline.from_pretrained(models["sd15"], safety_checker=None)
    tok = pipe.tokenizer
    parsed = [("a ", 1.0), ("red", 1.5), (" fox", 1.0)]
    encoded = encode_pair(pipe, ("tokenizer", "text_encoder"), parsed, [("", 1.0)], layer="last")
    body = [tok(t, add_special_tokens=False)["input_ids"] for t, _ in parsed]
    ids = [tok.bos_token_id, *[i for part in body for i in part], tok.eos_token_id]
    ids += [tok.pad_token_id] * (77 - len(ids))
    weights = torch.tensor([1.0] * (1 + len(body[0])) + [1.5] * len(body[1]) + [1.0] * (76 - len(body[0]) - len(body[1])))
    with torch.no_grad():
        z = pipe.text_encoder(torch.tensor([ids])).last_hidden_state
    expected = z * weights.reshape(1, -1, 1)
    expected = expected * (z.mean() / expected.mean())
    assert torch.equal(encoded.prompt, expected)
    assert encoded.negative.shape == encoded.prompt.shape
