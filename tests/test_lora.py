"""LoRAs and textual-inversion embeddings from the command line: --lora and <lora:NAME:SCALE> tags, scale 0 as the base
image, unloading without a trace, batch lines, compare's --lora-scales axis, A1111's hashes and replay."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from PIL import Image

pytestmark = pytest.mark.slow

FAMILIES = ("sd15", "sdxl", "sd3", "flux")
SMALL = ("--size", "64x64", "--steps", "2", "--seed", "3")


@pytest.fixture(scope="module")
def kit(tiny_models, tmp_path_factory):
    """Tiny models of every family, and a LoRA folder: <family>-style (diffusers layout), <family>-kohya (kohya's
    layout, where diffusers converts one) and <family>-other (another LoRA), plus embeddings beside it."""
    from imagegen.testing import build_tiny, build_tiny_embedding, build_tiny_lora
    from imagegen.testing.loras import KOHYA_FAMILIES

    root = tmp_path_factory.mktemp("lora-kit")
    models = {**tiny_models, "sd15": build_tiny("sd15", root / "sd15")}
    loras = root / "loras"
    for family in FAMILIES:
        build_tiny_lora(loras / f"{family}-style.safetensors", family, seed=0)
        build_tiny_lora(loras / "more" / f"{family}-other.safetensors", family, seed=1)
        if family in KOHYA_FAMILIES:
            build_tiny_lora(loras / f"{family}-kohya.safetensors", family, layout="kohya", seed=0)
    build_tiny_embedding(root / "embeddings" / "tinycat.safetensors", "sd15")
    build_tiny_embedding(root / "embeddings" / "xlcat.safetensors", "sdxl")
    return {"models": models, "loras": loras, "root": root, "kohya": KOHYA_FAMILIES}


def pixels(cli, *args) -> str:
    result = cli("txt2img", *args, *SMALL, "--json")
    assert result.code == 0, result.err
    return json.loads(result.out)["images"][0]["pixels_sha256"]


@pytest.mark.parametrize("family", FAMILIES)
def test_scale_zero_is_the_base_image_and_a_tag_is_the_flag(cli, kit, family):
    model, loras = kit["models"][family], kit["loras"]
    base = pixels(cli, "a fox", "--model", model)
    styled = pixels(cli, "a fox", "--model", model, "--lora", loras / f"{family}-style.safetensors")
    assert styled != base
    assert pixels(cli, "a fox", "--model", model, "--lora", f"{loras / f'{family}-style.safetensors'}:0") == base
    tagged = pixels(cli, f"a fox <lora:{family.upper()}-Style:1>", "--model", model, "--lora-dir", loras)
    assert tagged == styled  # the name is matched without case; the tag leaves the encoder's text
    assert pixels(cli, "a fox", "--model", model) == base  # unloaded: no trace
    if family in kit["kohya"]:
        assert pixels(cli, "a fox", "--model", model, "--lora", loras / f"{family}-kohya.safetensors") == styled


def test_two_loras_have_their_own_scales_and_a_subfolder_is_searched(cli, kit):
    model, loras = kit["models"]["sdxl"], kit["loras"]
    one = pixels(cli, "a fox <lora:sdxl-style:0.8>", "--model", model, "--lora-dir", loras)
    both = pixels(cli, "a fox <lora:sdxl-style:0.8> <lora:sdxl-other:0.5>", "--model", model, "--lora-dir", loras)
    other_scale = pixels(cli, "a fox <lora:sdxl-style:0.8> <lora:sdxl-other:0.2>", "--model", model,
                         "--lora-dir", loras)
    assert len({one, both, other_scale}) == 3


def test_lora_env_folder_and_a1111_hashes(cli, kit, monkeypatch, tmp_path):
    model, loras = kit["models"]["sd15"], kit["loras"]
    monkeypatch.setenv("IMAGEGEN_LORA_DIR", str(loras))
    result = cli("txt2img", "a fox <lora:sd15-style:0.7>, (red:1.2)", "--model", model, *SMALL, "-o", tmp_path)
    assert result.code == 0, result.err
    png = next(tmp_path.glob("*.png"))
    text = Image.open(png).text["parameters"]
    data = (loras / "sd15-style.safetensors").read_bytes()
    header = int.from_bytes(data[:8], "little")
    autov3 = hashlib.sha256(data[8 + header:]).hexdigest()[:12]  # A1111's LoRA hash: the tensors, not the header
    assert f'Lora hashes: "sd15-style: {autov3}"' in text
    assert text.splitlines()[0] == "a fox <lora:sd15-style:0.7>, (red:1.2)"  # the tag stays in the recorded prompt
    record = json.loads(png.with_suffix(".json").read_text())
    lora = record["lora"]["loras"][0]
    assert (lora["name"], lora["scale"], lora["from"]) == ("sd15-style", 0.7, "prompt")
    assert lora["sha256"] == hashlib.sha256(data).hexdigest() and record["prompt_syntax"] == "a1111"
    assert str(loras) not in png.with_suffix(".json").read_text()  # portable: the file by name and sha256
    monkeypatch.delenv("IMAGEGEN_LORA_DIR")
    verify = cli("reproduce", png, "--verify", "-o", tmp_path / "again")
    assert verify.code == 0, verify.err
    assert "identical" in verify.err


def test_verify_checks_the_lora_files_sha256_first(cli, kit, tmp_path):
    model = kit["models"]["sd15"]
    lora = tmp_path / "mine.safetensors"
    lora.write_bytes((kit["loras"] / "sd15-style.safetensors").read_bytes())
    assert cli("txt2img", "a fox", "--model", model, "--lora", f"{lora}:0.6", *SMALL, "-o", tmp_path / "a",
               "--metadata", "full").code == 0
    from imagegen.testing import build_tiny_lora

    build_tiny_lora(lora, "sd15", seed=5)  # the same path, other weights
    result = cli("reproduce", next((tmp_path / "a").glob("*.png")), "--verify", "-o", tmp_path / "b")
    assert result.code != 0
    assert "sha256" in result.err and "--lora" in result.err and "Traceback" not in result.err


@pytest.mark.parametrize("args, message", [
    (("--lora", "{root}/bad.ckpt"), "pickle file"),
    (("--lora", "{loras}/sd15-style.safetensors"), "made for another base model"),
    (("--lora", "{loras}/sd15-kohya.safetensors"), "a LoRA for SD 1.5 models, not for this SDXL model"),
    (("--lora", "{root}/missing.safetensors"), "no such file"),
    (("--lora-dir", "{loras}", "--prompt-extra", "<lora:sdxl-styel:1>"), "did you mean 'sdxl-style'"),
    (("--lora-dir", "{loras}", "--prompt-extra", "<hypernet:x:1>"), "<lora:NAME:SCALE> tags only"),
    (("--lora-scale", "0.5"), "--lora-scale needs a LoRA"),
    (("--lora-dir", "{loras}", "--prompt-extra", "<lora:sdxl-style:abc>"), "is not a number"),
    (("--prompt-extra", "(red:1.2.3)"), "the prompt: prompt weight"),
    (("--lora", "{loras}/sdxl-style.safetensors:abc"), "no such file"),
])
def test_bad_lora_input_is_one_line_before_loading(cli, kit, no_weights, args, message):
    (kit["root"] / "bad.ckpt").write_bytes(b"not really")
    values = [a.format(root=kit["root"], loras=kit["loras"]) for a in args]
    prompt = "a fox"
    if "--prompt-extra" in values:
        prompt += " " + values.pop(values.index("--prompt-extra") + 1)
        values.remove("--prompt-extra")
    result = cli("txt2img", prompt, "--model", kit["models"]["sdxl"], *values)
    assert result.code == 2, result.err
    assert message in result.err and len(result.err.strip().splitlines()) == 1


@pytest.fixture
def no_weights(monkeypatch):
    import imagegen.loading

    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded")

    monkeypatch.setattr(imagegen.loading, "load_model", refuse)


def test_batch_lines_take_loras_and_switching_leaks_nothing(cli, kit, tmp_path):
    model, loras = kit["models"]["sdxl"], kit["loras"]
    lines = [{"prompt": "a fox", "seed": 3},
             {"prompt": "a fox", "seed": 3, "lora": f"{loras}/sdxl-style.safetensors:0.8"},
             {"prompt": "a fox", "seed": 3, "lora": [f"{loras}/sdxl-style.safetensors:0.8",
                                                     f"{loras}/more/sdxl-other.safetensors"]},
             {"prompt": "a fox <lora:sdxl-other:1>", "seed": 3},
             {"prompt": "a fox", "seed": 3, "cfg": 4}]
    prompts = tmp_path / "lines.jsonl"
    prompts.write_text("\n".join(json.dumps(line) for line in lines))
    result = cli("batch", prompts, "--model", model, "--lora-dir", loras, "--size", "64x64", "--steps", "2",
                 "-o", tmp_path / "out", "--json")
    assert result.code == 0, result.err
    images = sorted(json.loads(result.out)["images"], key=lambda i: i["index"])
    hashes = [json.loads(Path(i["path"]).with_suffix(".json").read_text())["output"]["pixels_sha256"] for i in images]
    assert len(set(hashes)) == 5
    # each line alone, in a fresh order: the same pixels (no LoRA leaked from the groups before it)
    assert pixels(cli, "a fox", "--model", model) == hashes[0]
    assert pixels(cli, "a fox", "--model", model, "--lora", f"{loras}/sdxl-style.safetensors:0.8") == hashes[1]
    assert pixels(cli, "a fox", "--model", model, "--cfg", "4") == hashes[4]
    # resume: a deleted image is made again, identical
    first = Path(images[2]["path"])
    first.unlink()
    again = cli("batch", prompts, "--model", model, "--lora-dir", loras, "--size", "64x64", "--steps", "2",
                "-o", tmp_path / "out", "--json")
    assert again.code == 0, again.err
    assert json.loads(Path(first.with_suffix(".json")).read_text())["output"]["pixels_sha256"] == hashes[2]


def test_batch_orders_groups_so_each_lora_set_loads_once(kit, monkeypatch, tmp_path):
    from imagegen.adapters.lora import Lora

    model, loras = kit["models"]["sd15"], kit["loras"]
    loads = []
    original = Lora.apply
    monkeypatch.setattr(Lora, "apply", lambda self, pipe, spec, loaded: (loads.append(self.key(spec)),
                                                                          original(self, pipe, spec, loaded)))
    style, other = f"{loras}/sd15-style.safetensors", f"{loras}/more/sd15-other.safetensors"
    lines = [{"prompt": "a", "lora": style}, {"prompt": "b", "lora": other}, {"prompt": "c"},
             {"prompt": "d", "lora": f"{style}:0.5", "steps": 3}, {"prompt": "e", "lora": other, "cfg": 3}]
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("\n".join(json.dumps(line) for line in lines))
    from conftest import run_cli

    result = run_cli("batch", prompts, "--model", model, "--size", "64x64", "--steps", "2", "-o", tmp_path / "o")
    assert result.code == 0, result.err
    assert len(loads) == len(set(loads)) == 2


def test_compare_lora_scales_axis(cli, kit, tmp_path):
    model, loras = kit["models"]["sd15"], kit["loras"]
    result = cli("compare", "a fox <lora:sd15-style:1>", "--model", model, "--lora-dir", loras,
                 "--lora-scales", "0,1", "--size", "64x64", "--steps", "2", "--seeds", "3", "-o", tmp_path, "--json")
    assert result.code == 0, result.err
    summary = json.loads(result.out)
    cells = {c["lora_scale"]: c for c in summary["cells"]}
    out = Path(summary["out_dir"])
    records = {s: json.loads((out / cells[s]["file"]).with_suffix(".json").read_text()) for s in (0, 1)}
    assert records[0]["output"]["pixels_sha256"] == pixels(cli, "a fox", "--model", model)
    assert records[1]["output"]["pixels_sha256"] == pixels(cli, "a fox", "--model", model, "--lora",
                                                           loras / "sd15-style.safetensors")
    no_lora = cli("compare", "a fox", "--model", model, "--lora-scales", "0,1", "-o", tmp_path)
    assert no_lora.code == 2 and "--lora-scales needs a LoRA" in no_lora.err


def test_embeddings_by_flag_and_by_name_in_the_prompt(cli, kit, tmp_path):
    models, root = kit["models"], kit["root"]
    base = pixels(cli, "a photo of tinycat", "--model", models["sd15"])
    named = pixels(cli, "a photo of TinyCat", "--model", models["sd15"], "--lora-dir", kit["loras"])
    flagged = pixels(cli, "a photo of <cat>", "--model", models["sd15"], "--embedding",
                     f"{root / 'embeddings' / 'tinycat.safetensors'}:<cat>")
    assert named != base and flagged == named
    assert pixels(cli, "a photo of tinycat", "--model", models["sd15"]) == base  # unloaded
    xl_base = pixels(cli, "a photo of xlcat", "--model", models["sdxl"])
    result = cli("txt2img", "a photo of xlcat", "--model", models["sdxl"], "--lora-dir", kit["loras"], *SMALL,
                 "-o", tmp_path)
    png = next(tmp_path.glob("*.png"))
    assert result.code == 0 and json.loads(png.with_suffix(".json").read_text())["output"]["pixels_sha256"] != xl_base
    sha = hashlib.sha256((root / "embeddings" / "xlcat.safetensors").read_bytes()).hexdigest()
    assert f'TI hashes: "xlcat: {sha[:12]}"' in Image.open(png).text["parameters"]
    assert cli("reproduce", png, "--verify", "-o", tmp_path / "v").code == 0
    wrong = cli("txt2img", "a", "--model", models["sdxl"], "--embedding", root / "embeddings" / "tinycat.safetensors")
    assert wrong.code == 2 and "clip_g and clip_l" in wrong.err


def test_a_kohya_sd3_lora_is_refused_with_the_reason(cli, kit, no_weights, tmp_path):
    import torch
    from safetensors.torch import save_file

    path = tmp_path / "sd3-kohya.safetensors"
    save_file({"lora_unet_joint_blocks_0_x_block_attn_qkv.lora_down.weight": torch.zeros(4, 8),
               "lora_unet_joint_blocks_0_x_block_attn_qkv.alpha": torch.tensor(4.0)}, str(path))
    result = cli("txt2img", "a fox", "--model", kit["models"]["sd3"], "--lora", path)
    assert result.code == 2 and "diffusers does not convert" in result.err
