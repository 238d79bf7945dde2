"""The request model: one precedence order, strict values, and size checks from the model's own configs."""

from __future__ import annotations

import pytest

from imagegen import Request, UsageError, resolve


def test_precedence_defaults_preset_replay_flags():
    req = resolve(Request(prompt="p"))
    assert (req.preset, req.steps, req.cfg, req.scheduler.name, req.size) == ("sdxl", 30, 5.0, "DPM++ 2M Karras", "1024x1024")
    assert (req.n, req.batch_size, req.dtype, req.device, req.metadata) == (1, 1, "auto", "auto", "portable")
    replay = Request(prompt="old", steps=12, cfg=3.0, seed=7)
    req = resolve(Request(cfg=9.0), replay)
    assert (req.prompt, req.steps, req.cfg, req.seed) == ("old", 12, 9.0, 7)  # flags beat replay, replay beats preset
    assert req.scheduler.name == "DPM++ 2M Karras"  # nobody gave it: the preset's


def test_none_means_not_given_so_a_default_value_can_be_passed_on_purpose():
    replay = Request(prompt="p", steps=12)
    assert resolve(Request(steps=30), replay).steps == 30  # 30 is also the preset's value: still wins over replay
    assert resolve(Request(steps=None), replay).steps == 12


def test_preset_defaults_and_model_variant():
    req = resolve(Request(prompt="p", preset="flux-schnell"))
    assert (req.family.name, req.steps, req.cfg, req.model, req.variant) == ("flux", 4, 1.0, "black-forest-labs/FLUX.1-schnell", None)
    sdxl = resolve(Request(prompt="p"))
    assert sdxl.variant == "fp16"


def test_seeds_are_consecutive_and_random_seed_is_recorded():
    req = resolve(Request(prompt="p", seed=42, n=4))
    assert req.seeds == [42, 43, 44, 45] and not req.seed_was_random
    rnd = resolve(Request(prompt="p", n=2))
    assert rnd.seed_was_random and rnd.seeds == [rnd.seed, rnd.seed + 1]


def test_batch_size_is_capped_by_n():
    assert resolve(Request(prompt="p", n=3, batch_size=8)).batch_size == 3


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"size": (1020, 1024)}, "--size 1020x1024: width and height must be multiples of 8"),
        ({"size": (1000, 1024), "preset": "sd3"}, "multiples of 16 for this model"),
        ({"scheduler": "DDIM", "preset": "flux-schnell"}, "DDIM does not work with flux models"),
        ({"guidance": 3.0}, "distilled guidance; sdxl models use --cfg"),
        ({"preset": "nope"}, "unknown preset 'nope'"),
        ({"scheduler": "LMS", "preset": "sd3"}, "LMS does not work with sd3"),
    ],
)
def test_resolve_refuses(fields, message):
    with pytest.raises(UsageError, match=None) as info:
        resolve(Request(prompt="p", **fields))
    assert message in str(info.value)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("steps", "abc", "--steps: must be an integer from 1 to 1000, got 'abc'"),
        ("steps", 0, "--steps: must be from 1 to 1000, got 0"),
        ("cfg", "nan", "--cfg: must be from 0 to 100"),
        ("size", "1024", "--size: must be WIDTHxHEIGHT such as 1024x768, got '1024'"),
        ("seed", "-5", "--seed: must be from 0 to"),
        ("dtype", "fp8", "--dtype: must be one of auto, bfloat16, float16, float32"),
        ("device", "tpu", "--device: must be auto, cpu, cuda, cuda:N or mps"),
        ("batch_size", "0", "--batch-size: must be from 1 to 1024"),
        ("metadata", "some", "--metadata: must be one of portable, full, none"),
    ],
)
def test_flag_values_are_checked(key, value, message):
    with pytest.raises(UsageError) as info:
        Request.from_mapping({key: value}, where=None)
    assert message in str(info.value)


def test_unknown_field_in_a_mapping_names_where_and_choices():
    with pytest.raises(UsageError, match=r"jobs.jsonl:3: unknown key 'stpes' \(did you mean 'steps'\?\); valid keys:"):
        Request.from_mapping({"stpes": 3}, where="jobs.jsonl:3")


def test_size_multiple_comes_from_the_model_folder_configs(tmp_path):
    """A --model DIR is inspected without loading weights: family and multiple come from its JSON configs."""
    import json

    root = tmp_path / "fake-sd3"
    (root / "vae").mkdir(parents=True)
    (root / "transformer").mkdir()
    (root / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusion3Pipeline"}))
    (root / "vae" / "config.json").write_text(json.dumps({"block_out_channels": [8, 8, 8]}))  # scale factor 4
    (root / "transformer" / "config.json").write_text(json.dumps({"patch_size": 4}))
    req = resolve(Request(prompt="p", model=str(root), size=(96, 80)))
    assert (req.family.name, req.preset, req.multiple) == ("sd3", "sd3", 16)
    with pytest.raises(UsageError, match="multiples of 16"):
        resolve(Request(prompt="p", model=str(root), size=(72, 80)))
    with pytest.raises(UsageError, match="is a sd3 model but preset 'sdxl' is for sdxl"):
        resolve(Request(prompt="p", model=str(root), preset="sdxl", size=(96, 80)))


def test_model_folder_errors(tmp_path):
    with pytest.raises(UsageError, match="no such folder"):
        resolve(Request(prompt="p", model=str(tmp_path / "missing")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match=r"not a diffusers pipeline folder \(no model_index.json\)"):
        resolve(Request(prompt="p", model=str(tmp_path / "empty")))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "model_index.json").write_text('{"_class_name": "KandinskyPipeline"}')
    with pytest.raises(UsageError, match="pipeline 'KandinskyPipeline' is not supported"):
        resolve(Request(prompt="p", model=str(tmp_path / "other")))


def test_hostile_model_folders_are_one_line(tmp_path):
    """A model_index.json naming its pipeline with a list, or holding no JSON object, is refused, not a traceback."""
    (tmp_path / "listed").mkdir()
    (tmp_path / "listed" / "model_index.json").write_text('{"_class_name": ["StableDiffusionXLPipeline"]}')
    with pytest.raises(UsageError, match=r"pipeline \['StableDiffusionXLPipeline'\] is not supported"):
        resolve(Request(prompt="p", model=str(tmp_path / "listed")))
    for name, text in (("array", "[1, 2]"), ("broken", "{not json")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model_index.json").write_text(text)
        with pytest.raises(UsageError, match="its model_index.json is not a readable JSON object"):
            resolve(Request(prompt="p", model=str(tmp_path / name)))


def fake_model(root, class_name, vae_blocks, transformer=None):
    import json

    (root / "vae").mkdir(parents=True)
    (root / "model_index.json").write_text(json.dumps({"_class_name": class_name}))
    (root / "vae" / "config.json").write_text(json.dumps({"block_out_channels": [8] * vae_blocks}))
    if transformer is not None:
        (root / "transformer").mkdir()
        (root / "transformer" / "config.json").write_text(json.dumps(transformer))
    return root


def test_sdxl_pipeline_needs_multiples_of_8_even_with_a_small_vae(tmp_path):
    root = fake_model(tmp_path / "sdxl", "StableDiffusionXLPipeline", vae_blocks=2)  # VAE scale factor 2
    with pytest.raises(UsageError, match="--size 36x36: width and height must be multiples of 8"):
        resolve(Request(prompt="p", model=str(root), size=(36, 36)))
    assert resolve(Request(prompt="p", model=str(root), size=(40, 48))).multiple == 8


def test_sd3_size_is_capped_by_its_positional_embedding(tmp_path):
    root = fake_model(tmp_path / "sd3", "StableDiffusion3Pipeline", vae_blocks=1,
                      transformer={"patch_size": 1, "pos_embed_max_size": 96})
    with pytest.raises(UsageError, match="allows at most 96 px a side"):
        resolve(Request(prompt="p", model=str(root), size=(200, 200)))
    assert resolve(Request(prompt="p", model=str(root), size=(40, 24))).multiple == 1


def test_local_model_is_recorded_as_an_absolute_path(tmp_path, monkeypatch):
    fake_model(tmp_path / "mine", "FluxPipeline", vae_blocks=4)
    monkeypatch.chdir(tmp_path)
    req = resolve(Request(prompt="p", model="mine", size=(64, 64)))
    assert req.model == str((tmp_path / "mine").resolve()) and req.family.name == "flux"


def test_bare_name_is_not_taken_for_a_repo_id():
    with pytest.raises(UsageError, match=r"--model sdxl: no such folder, and not a hub repo id \(org/name\); did you mean --preset sdxl\?"):
        resolve(Request(prompt="p", model="sdxl"))
