"""Qwen-Image: true CFG (a space as the negative prompt when none is given), the samplers that take its pipelines'
custom sigmas, the size rule read from the Wan-style VAE, prompts encoded one row each, img2img and inpaint, and
Qwen-Image-Edit-2509's multi-reference edit (its area rule, and the pipeline with one and two references)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from imagegen.errors import UsageError
from imagegen.families import get_family
from imagegen.schedulers import resolve_scheduler

FAMILY = get_family("qwen-image")
# Qwen/Qwen-Image's configs, the keys the size rule and guidance read.
REAL = {"vae/config.json": {"_class_name": "AutoencoderKLQwenImage", "base_dim": 96, "dim_mult": [1, 2, 4, 4],
                            "temperal_downsample": [False, True, True], "z_dim": 16},
        "transformer/config.json": {"guidance_embeds": False, "in_channels": 64, "num_attention_heads": 24,
                                    "attention_head_dim": 128, "patch_size": 2}}


def pixels(path):
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).astype(int)


# ---- without a pipeline


@pytest.mark.parametrize("configs, rule", [
    (REAL, (16, None)),  # 8 pixels a latent x the 2x2 packing
    ({"vae/config.json": {"temperal_downsample": [False, True]}}, (8, None)),  # a 4x VAE
    ({"vae/config.json": {"z_dim": 16}}, (16, None)),  # the class's default: three downsamplings
    ({}, (None, None)),  # unreadable: not guessed
])
def test_size_rule_reads_the_wan_style_vae(configs, rule):
    assert FAMILY.size_rule(configs.get) == rule


def test_guidance_embedding_and_lora_width_come_from_the_transformer_config():
    assert FAMILY.guidance_embedded(REAL.get) is False
    assert FAMILY.guidance_embedded({"transformer/config.json": {"guidance_embeds": True}}.get) is True
    assert FAMILY.guidance_embedded({}.get) is None
    assert FAMILY.lora_widths(REAL.get)[0][1] == 3072


def test_cfg_is_true_cfg_with_a_space_for_a_missing_negative():
    on = FAMILY.guidance_arguments(4.0, None, ["", "blurry"])
    assert on == {"true_cfg_scale": 4.0, "guidance_scale": 1.0, "negative_prompt": [" ", "blurry"]}
    # at 1 no negative goes in: the pipelines' true_cfg_scale default (4) would otherwise turn CFG on
    assert FAMILY.guidance_arguments(1.0, None, ["blurry"])["negative_prompt"] is None
    assert FAMILY.guidance_arguments(1.0, 3.5, [""])["guidance_scale"] == 3.5  # a guidance-distilled model's
    assert FAMILY.cfg_problem("QwenImageEditPlusPipeline", 4.0) is None
    assert "a space" in FAMILY.cfg_notes(4.0, "")[0] and "a space" not in FAMILY.cfg_notes(4.0, "x")[0]
    assert FAMILY.cfg_notes(1.0, "") == []
    embeddings = {"prompt_embeds": 1, "prompt_embeds_mask": 2, "negative_prompt_embeds": 3,
                  "negative_prompt_embeds_mask": 4}
    assert set(FAMILY.embeddings_for(embeddings, 1.0)) == {"prompt_embeds", "prompt_embeds_mask"}
    assert FAMILY.embeddings_for(embeddings, 4.0) == embeddings


@pytest.mark.parametrize("sizes", [[(640, 480)], [(480, 640)], [(1000, 1000)], [(300, 900), (1920, 1080)],
                                   [(1080, 1920), (333, 777), (5000, 1200)]])
def test_edit_size_is_the_pipelines_area_rule(sizes):
    from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus import calculate_dimensions

    width, height, rule = FAMILY.edit_size(sizes, 16)
    expected = calculate_dimensions(1024 * 1024, sizes[-1][0] / sizes[-1][1])  # the last image's ratio
    assert (width, height) == (expected[0] // 16 * 16, expected[1] // 16 * 16)
    assert "last image" in rule and "1024x1024" in rule
    assert FAMILY.edit_size(sizes, 64)[0] % 64 == 0  # a model of another multiple gets its own


def test_edit_takes_three_references_as_one_list():
    assert FAMILY.edit_images == 3 and FAMILY.pipeline_class("edit") == "QwenImageEditPlusPipeline"
    images = [Image.new("RGB", (8, 8)) for _ in range(2)]
    assert FAMILY.edit_arguments(images, 64, 64, 1) == {"image": images}


@pytest.mark.parametrize("name", ["DPM++ 2M", "Heun", "DPMSolverMultistepScheduler", "DPM++ 2M Karras"])
def test_samplers_without_custom_sigmas_are_refused(name):
    with pytest.raises(UsageError, match="qwen-image"):
        resolve_scheduler(name, FAMILY)
    assert resolve_scheduler("UniPC", FAMILY).cls == "UniPCMultistepScheduler"
    assert resolve_scheduler("Euler Karras", FAMILY).cls == "FlowMatchEulerDiscreteScheduler"


def test_unipc_takes_the_native_schedule():
    """The pipelines pass sigmas and mu: UniPC, given the dynamic shifting and shift_terminal, runs the same sigmas
    as the native FlowMatchEuler (less its 1e-6 off the first)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from imagegen.schedulers import build_scheduler
    from imagegen.testing.builders.qwen_image import SCHEDULER_CONFIG

    native = FlowMatchEulerDiscreteScheduler.from_config(SCHEDULER_CONFIG)
    unipc = build_scheduler(resolve_scheduler("UniPC", FAMILY), dict(native.config))
    sigmas = np.linspace(1.0, 1 / 8, 8)
    for scheduler in (native, unipc):
        scheduler.set_timesteps(sigmas=sigmas, mu=0.7)
    assert np.abs(native.sigmas.numpy() - unipc.sigmas.numpy()).max() < 1e-5
    assert native.sigmas[-2].item() == pytest.approx(0.02, abs=1e-6)  # shift_terminal


@pytest.mark.parametrize("key, fits", [
    ("transformer.transformer_blocks.0.attn.to_q.lora_A.weight", True),  # diffusers' save_lora_weights
    ("transformer.transformer_blocks.3.img_mlp.net.0.proj.lora_B.weight", True),
    ("diffusion_model.transformer_blocks.0.attn.add_k_proj.lora_down.weight", True),  # ComfyUI's
    ("lora_unet_transformer_blocks_0_attn_to_q.lora_down.weight", True),  # kohya's
    ("transformer.transformer_blocks.0.ff.net.0.proj.lora_A.weight", False),  # SD3, Flux: ff, not img_mlp
    ("transformer.single_transformer_blocks.0.proj_out.lora_A.weight", False),  # Flux
    ("unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight", False),  # SDXL
])
def test_lora_layout(key, fits):
    assert FAMILY.lora_fits([key]) is fits


def test_its_controlnets_are_map_nets_not_the_inpainting_one():
    assert FAMILY.owns_controlnet({"_class_name": "QwenImageControlNetModel", "num_layers": 5})
    assert FAMILY.owns_controlnet({"_class_name": "QwenImageControlNetModel", "extra_condition_channels": 0})
    assert not FAMILY.owns_controlnet({"_class_name": "QwenImageControlNetModel", "extra_condition_channels": 4})
    assert FAMILY.pipeline_class("inpaint", "controlnet") is None


# ---- the tiny pipelines


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from imagegen.testing import build_tiny

    root = tmp_path_factory.mktemp("tiny")
    return {"t2i": build_tiny("qwen-image", root / "qwen-image"),
            "edit": build_tiny("qwen-image", root / "qwen-image-edit", edit=True)}


@pytest.fixture
def small_references(monkeypatch):
    """The edit pipeline VAE-encodes each reference at about 1 MP, seconds a reference for the tiny VAE on a CPU:
    64x64 here (the rule under test is the output size's, edit_size)."""
    from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit_plus

    monkeypatch.setattr(pipeline_qwenimage_edit_plus, "VAE_IMAGE_SIZE", 64 * 64)


def _load(folder):
    import diffusers

    index = json.loads((folder / "model_index.json").read_text())
    return getattr(diffusers, index["_class_name"]).from_pretrained(folder, use_safetensors=True)


@pytest.mark.slow
def test_encoded_prompts_are_one_row_each_and_draw_what_the_text_draws(tiny):
    import torch

    pipe = _load(tiny["t2i"])
    pipe.set_progress_bar_config(disable=True)
    rows = FAMILY.encode_prompt(pipe, "a fox", "", "cpu")
    assert set(rows) == {"prompt_embeds", "prompt_embeds_mask", "negative_prompt_embeds", "negative_prompt_embeds_mask"}
    assert rows["prompt_embeds"].shape[0] == 1 and rows["prompt_embeds_mask"].shape == rows["prompt_embeds"].shape[:2]

    def draw(**kwargs):
        return pipe(true_cfg_scale=4.0, width=64, height=64, num_inference_steps=2, output_type="np",
                    generator=torch.Generator().manual_seed(1), **kwargs).images

    assert np.abs(draw(prompt="a fox", negative_prompt=" ") - draw(**rows)).max() < 1e-5
    # the tiny tokenizer's template takes the real 34 tokens, so the prompt keeps the pipeline's 512
    prefix = pipe.prompt_template_encode.split("{}")[0]
    assert len(pipe.tokenizer(prefix)["input_ids"]) == pipe.prompt_template_encode_start_idx == 34
    (_, _, limit, _), = FAMILY.prompt_limits(pipe)
    assert limit == 512
    kept = "b" * (limit - 1)

    def embeds(text):
        return FAMILY.encode_prompt(pipe, text, "", "cpu")["prompt_embeds"]

    assert not torch.equal(embeds(kept + "c"), embeds(kept + "d"))
    assert torch.equal(embeds(kept + "bc"), embeds(kept + "bd"))


@pytest.mark.slow
def test_edit_pipeline_with_one_and_two_references(tiny, small_references):
    import torch

    pipe = _load(tiny["edit"])
    pipe.set_progress_bar_config(disable=True)
    prefix = pipe.prompt_template_encode.split("{}")[0]  # the tiny tokenizer's template takes the real 64 tokens
    assert len(pipe.tokenizer(prefix)["input_ids"]) == pipe.prompt_template_encode_start_idx == 64
    assert FAMILY.encode_prompt(pipe, "make it blue", "", "cpu") is None  # its encoder reads the references
    assert FAMILY.prompt_limits(pipe) == ()  # and keeps the whole prompt
    red, blue = Image.new("RGB", (80, 48), (200, 40, 40)), Image.new("RGB", (48, 64), (40, 40, 200))

    def edit(images):
        return pipe(prompt="make it blue", **FAMILY.edit_arguments(images, 64, 64, 1), width=64, height=64,
                    **FAMILY.guidance_arguments(4.0, None, [""]), num_inference_steps=2, output_type="np",
                    generator=torch.Generator().manual_seed(1)).images

    one, two, swapped = edit([red]), edit([red, blue]), edit([blue, red])
    assert one.shape == two.shape == (1, 64, 64, 3)
    assert np.abs(one - two).max() > 0 and np.abs(two - swapped).max() > 0  # each reference, and its place, counts


@pytest.mark.slow
def test_cli_cfg_without_a_negative_runs_a_space(cli, tiny, tmp_path):
    base = ("a fox", "--model", tiny["t2i"], "--size", "64x64", "--steps", "2", "--seed", "1", "-q")
    made = {}
    for name, extra in {"cfg4": (), "space": ("--negative", " "), "neg": ("--negative", "blurry"),
                        "cfg1": ("--cfg", "1")}.items():
        result = cli("txt2img", *base, *extra, "--out", tmp_path / name)
        assert result.code == 0, result.err
        made[name] = pixels(tmp_path / name / "0000-1.png")
    record = json.loads((tmp_path / "cfg4" / "0000-1.json").read_text())
    assert (record["cfg"], record["steps"], record["runtime"]["pipeline_class"]) == (4.0, 2, "QwenImagePipeline")
    assert np.array_equal(made["cfg4"], made["space"])
    assert (made["cfg4"] != made["neg"]).any() and (made["cfg4"] != made["cfg1"]).any()
    result = cli("txt2img", *base, "--scheduler", "DPM++ 2M", "--out", tmp_path / "refused")
    assert result.code != 0 and "for qwen-image: Euler, UniPC" in result.err
    assert len(result.err.strip().splitlines()) == 1 and not (tmp_path / "refused").exists()


@pytest.mark.slow
def test_cli_img2img_and_inpaint(cli, tiny, tmp_path):
    start, mask = tmp_path / "start.png", tmp_path / "mask.png"
    Image.new("RGB", (64, 64), (30, 160, 60)).save(start)
    hole = Image.new("L", (64, 64), 0)
    hole.paste(255, (16, 16, 48, 48))
    hole.save(mask)
    base = ("a fox", "--image", start, "--model", tiny["t2i"], "--steps", "3", "--seed", "1", "-q")
    for mode, extra in (("img2img", ()), ("inpaint", ("--mask", mask))):
        result = cli(mode, *base, *extra, "--out", tmp_path / mode)
        assert result.code == 0, result.err
        record = json.loads((tmp_path / mode / "0000-1.json").read_text())
        assert record["mode"] == mode and record["runtime"]["pipeline_class"] == FAMILY.pipeline_class(
            "image2image" if mode == "img2img" else "inpaint")
    painted = pixels(tmp_path / "inpaint" / "0000-1.png")
    assert np.array_equal(painted[:8, :8], np.full((8, 8, 3), (30, 160, 60)))  # kept outside the mask
    assert (painted[24:40, 24:40] != (30, 160, 60)).any()


@pytest.mark.slow
def test_cli_edit_with_two_references(cli, tiny, tmp_path, small_references):
    red, blue = tmp_path / "red.png", tmp_path / "blue.png"
    Image.new("RGB", (80, 48), (200, 40, 40)).save(red)
    Image.new("RGB", (48, 64), (40, 40, 200)).save(blue)
    base = ("make it blue", "--model", tiny["edit"], "--size", "64x64", "--steps", "2", "--seed", "1", "-q")
    result = cli("edit", *base, "--image", red, "--image", blue, "--out", tmp_path / "out")
    assert result.code == 0, result.err
    record = json.loads((tmp_path / "out" / "0000-1.json").read_text())
    assert record["runtime"]["pipeline_class"] == "QwenImageEditPlusPipeline" and len(record["edit"]["images"]) == 2
    assert pixels(tmp_path / "out" / "0000-1.png").shape == (64, 64, 3)
    result = cli("edit", *base, *(("--image", red) * 4), "--out", tmp_path / "refused")
    assert result.code != 0 and "at most 3 reference images" in result.err
