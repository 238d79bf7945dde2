"""Single-file checkpoints: the family told from the header alone (real-size header-only files of every base the
package ships configs for), one-line refusals, and the file loading through diffusers' from_single_file to the same
pixels as its diffusers folder, with A1111's Model hash, a portable record and a verified replay."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from imagegen.checkpoints import inspect_checkpoint
from imagegen.checkpoints.configs import SHIPPED, clip_vocabulary, slug

SMALL = ("--size", "64x64", "--steps", "2", "--seed", "5")

# (base repo, parts in the file, original layout options) -> (family, kind) the header must give
HEADERS = [
    ("stable-diffusion-v1-5/stable-diffusion-v1-5", None, {}, "sd15", "SD 1.x"),
    ("stable-diffusion-v1-5/stable-diffusion-v1-5", ("unet",), {}, "sd15", "SD 1.x"),
    ("stabilityai/stable-diffusion-2-1", None, {"text_layout": "openclip"}, "sd15", "SD 2.x"),
    ("stabilityai/stable-diffusion-2-1", ("unet",), {}, "sd15", "SD 2.x"),
    ("stabilityai/stable-diffusion-xl-base-1.0", None, {}, "sdxl", "SDXL base"),
    ("stabilityai/stable-diffusion-xl-base-1.0", ("unet",), {}, "sdxl", "SDXL base"),
    ("stabilityai/stable-diffusion-xl-refiner-1.0", None, {}, "sdxl", "SDXL refiner"),
    ("stable-diffusion-v1-5/stable-diffusion-inpainting", None, {}, "sd15", "SD 1.x inpainting"),
    ("stable-diffusion-v1-5/stable-diffusion-inpainting", ("unet",), {}, "sd15", "SD 1.x inpainting"),
    ("diffusers/stable-diffusion-xl-1.0-inpainting-0.1", None, {}, "sdxl", "SDXL inpainting"),
    ("stabilityai/stable-diffusion-xl-refiner-1.0", ("unet",), {}, "sdxl", "SDXL refiner"),
    ("stabilityai/stable-diffusion-3-medium-diffusers", ("transformer", "vae"), {}, "sd3", "SD3 medium"),
    ("stabilityai/stable-diffusion-3-medium-diffusers", None, {}, "sd3", "SD3 medium"),
    ("stabilityai/stable-diffusion-3.5-medium", ("transformer", "vae"), {}, "sd3", "SD3.5 medium"),
    ("stabilityai/stable-diffusion-3.5-large", ("transformer",), {}, "sd3", "SD3.5 large"),
    ("black-forest-labs/FLUX.1-dev", ("transformer",), {"prefix": ""}, "flux", "FLUX.1 dev"),
    ("black-forest-labs/FLUX.1-dev", ("transformer",), {"prefix": "model.diffusion_model."}, "flux", "FLUX.1 dev"),
    ("black-forest-labs/FLUX.1-schnell", ("transformer",), {"prefix": ""}, "flux", "FLUX.1 schnell"),
    ("black-forest-labs/FLUX.1-Fill-dev", ("transformer",), {"prefix": ""}, "flux", "FLUX.1 Fill"),
]


@pytest.mark.parametrize("repo,parts,layout,family,kind", HEADERS, ids=[f"{h[4]}-{h[1]}" for h in HEADERS])
def test_the_family_is_told_from_a_real_size_header(tmp_path, repo, parts, layout, family, kind):
    from imagegen.testing import meta_original_shapes, write_header_only

    shapes = meta_original_shapes(SHIPPED / slug(repo), parts=parts, dtype="F16", **layout)
    path = write_header_only(tmp_path / "model.safetensors", shapes)
    assert path.stat().st_blocks * 512 < 1 << 20 < path.stat().st_size  # sparse: only the header is written
    found = inspect_checkpoint(path)
    assert (found.family.name, found.kind.name, found.kind.repo) == (family, kind, repo)
    assert set(found.components) == set(parts or found.components)
    assert found.size == path.stat().st_size and found.name == "model"


def header_file(path: Path, names: list[str], shape=(4, 4)) -> Path:
    from imagegen.testing import write_header_only

    return write_header_only(path, {n: ("F16", shape) for n in names})


def one_line_error(result, code: int = 2) -> str:
    assert result.code == code, (result.out, result.err)
    assert result.err.count("\n") == 1 and "Traceback" not in result.err, result.err
    return result.err


def test_refusals_are_one_line(cli, tmp_path):
    (tmp_path / "old.ckpt").write_bytes(b"PK\x03\x04")
    assert "pickle" in one_line_error(cli("txt2img", "a fox", "--model", tmp_path / "old.ckpt"))
    (tmp_path / "flux-q4.gguf").write_bytes(b"GGUF")
    assert "--quantize gguf:FILE" in one_line_error(cli("txt2img", "a fox", "--model", tmp_path / "flux-q4.gguf"))
    assert "no such file" in one_line_error(cli("txt2img", "a fox", "--model", tmp_path / "gone.safetensors"))
    header_file(tmp_path / "mystery.safetensors", ["blocks.0.weight", "head.bias"])
    err = one_line_error(cli("txt2img", "a fox", "--model", tmp_path / "mystery.safetensors"))
    assert "cannot tell which model" in err and "--preset" in err and "--config" in err
    (tmp_path / "broken.safetensors").write_bytes(b"\xff" * 16)
    assert "not a readable .safetensors" in one_line_error(cli("txt2img", "a fox", "--model",
                                                               tmp_path / "broken.safetensors"))


def test_a_checkpoint_of_another_family_than_the_preset_is_refused(cli, tmp_path):
    file = header_file(tmp_path / "xl.safetensors", ["conditioner.embedders.1.model.ln_final.weight",
                                                     "model.diffusion_model.label_emb.0.0.weight"])
    err = one_line_error(cli("txt2img", "a fox", "--model", file, "--preset", "flux-dev"))
    assert "SDXL" in err and "flux" in err


def test_missing_tokenizers_offline_name_the_pull_command(cli, tmp_path):
    from imagegen.testing import meta_original_shapes, write_header_only

    repo = "black-forest-labs/FLUX.1-dev"  # T5's tokenizer: no pip package ships it
    file = write_header_only(tmp_path / "flux1-dev-fp8.safetensors",
                             meta_original_shapes(SHIPPED / slug(repo), parts=("transformer",), dtype="F8_E4M3"))
    err = one_line_error(cli("txt2img", "a fox", "--model", file), code=1)
    assert "imagegen models pull flux-dev --configs-only" in err and "--config" in err and "tokenizer_2" in err


def test_an_sdxl_refiner_is_told_apart_and_refused_in_one_line(cli, tmp_path):
    from imagegen.testing import meta_original_shapes, write_header_only

    repo = "stabilityai/stable-diffusion-xl-refiner-1.0"
    file = write_header_only(tmp_path / "refiner.safetensors", meta_original_shapes(SHIPPED / slug(repo), dtype="F16"))
    err = one_line_error(cli("txt2img", "a fox", "--model", file))
    assert "SDXL refiner" in err and "aesthetic score" in err


def test_config_is_refused_for_a_folder_model(cli, tiny_models):
    err = one_line_error(cli("txt2img", "a fox", "--model", tiny_models["sdxl"], "--config", tiny_models["sdxl"]))
    assert "single-file" in err


# Digests of openai/clip-vit-large-patch14's vocab.json (sorted keys) and merges.txt (without its version line), as
# the hub's stable-diffusion-v1-5 tokenizer/ holds them (read from Forge's vendored copy, 2026-12): the files that
# imagegen rebuilds from a kept package must equal them.
OPENAI_VOCAB = "f3494b2b345fa180ca51ec80ab47d1bbb0218d60089264d5ee9bb0619af4a4b7"
OPENAI_MERGES = "f61f2adf497e6f5357c347aeb4646fabe82f341e946de5bdec5d2858e41bef4a"


def test_the_clip_vocabulary_of_a_kept_package_is_openais(tmp_path):
    """open_clip's (and OpenAI clip's) BPE file, turned into vocab.json and merges.txt as transformers reads them."""
    import importlib.util

    if not any(importlib.util.find_spec(p) for p in ("open_clip", "clip")):
        pytest.skip("neither open-clip-torch nor OpenAI's clip is installed (both pull torchvision)")
    assert clip_vocabulary(tmp_path)
    vocab = json.loads((tmp_path / "vocab.json").read_text(encoding="utf-8"))
    merges = (tmp_path / "merges.txt").read_text(encoding="utf-8").splitlines()[1:]
    assert hashlib.sha256(json.dumps(vocab, sort_keys=True, ensure_ascii=False).encode()).hexdigest() == OPENAI_VOCAB
    assert hashlib.sha256("\n".join(merges).encode()).hexdigest() == OPENAI_MERGES
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(tmp_path)
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]


# ---- loading real (tiny) files


@pytest.fixture(scope="module")
def files(tiny_models, tmp_path_factory):
    """Tiny folders of every family and their single-file checkpoints, in the original layouts."""
    from imagegen.testing import build_tiny, write_checkpoint

    root = tmp_path_factory.mktemp("checkpoints")
    folders = {**tiny_models, "sd15": build_tiny("sd15", root / "sd15")}
    folders["sd3"] = _identity_clip_projection(folders["sd3"], root / "sd3")
    out = {family: write_checkpoint(folder, root / f"{family}-model.safetensors") for family, folder in folders.items()}
    out["flux-transformer"] = write_checkpoint(folders["flux"], root / "flux1-transformer.safetensors",
                                               parts=("transformer",), prefix="")
    return {"folders": folders, "files": out, "root": root}


def _identity_clip_projection(folder: Path, root: Path) -> Path:
    """SD3's original files carry CLIP-L without its projection, which diffusers sets to the identity (as SD3
    uses it): a folder whose projection is the identity is the one such a file reproduces."""
    import torch
    from diffusers import StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline.from_pretrained(folder)
    with torch.no_grad():
        pipe.text_encoder.text_projection.weight.copy_(torch.eye(pipe.text_encoder.text_projection.weight.shape[0]))
    pipe.save_pretrained(root / "sd3-identity")
    return root / "sd3-identity"


def generate(cli, *args) -> dict:
    result = cli("txt2img", "a red fox", *args, *SMALL, "--json")
    assert result.code == 0, result.err
    return json.loads(result.out)["images"][0]


@pytest.mark.slow
@pytest.mark.parametrize("family", ["sd15", "sdxl", "sd3", "flux"])
def test_a_file_gives_the_folders_pixels_and_replays(cli, files, family, tmp_path):
    folder, file = files["folders"][family], files["files"][family]
    want = generate(cli, "--model", folder)["pixels_sha256"]
    image = generate(cli, "--model", file, "--config", folder, "-o", tmp_path / "out")
    assert image["pixels_sha256"] == want
    text = Image.open(image["path"]).text["parameters"]
    digest = hashlib.sha256(file.read_bytes()).hexdigest()
    assert f"Model hash: {digest[:10]}," in text and f"Model: {file.stem}," in text
    record = json.loads(Path(image["path"]).with_suffix(".json").read_text())
    assert record["model"]["id"] == file.name  # portable: the name, its size and its sha256, no path
    assert (record["model"]["sha256"], record["model"]["size"]) == (digest, file.stat().st_size)
    verified = cli("reproduce", image["path"], "--verify")
    assert verified.code == 0, verified.err


@pytest.mark.slow
def test_a_moved_file_is_found_again_by_model(cli, files, tmp_path):
    folder = files["folders"]["sd15"]
    file = shutil.copy(files["files"]["sd15"], tmp_path / "my-finetune.safetensors")
    image = generate(cli, "--model", file, "--config", folder, "-o", tmp_path / "out")
    moved = Path(shutil.move(file, tmp_path / "elsewhere.safetensors"))
    (tmp_path / "cache-gone").mkdir()
    again = cli("reproduce", image["path"], "--verify", "--model", moved)
    assert again.code == 0, again.err
    from safetensors.torch import load_file, save_file

    other = tmp_path / "other.safetensors"  # the same tensors, another file: its hash is not the recorded one
    save_file(load_file(moved), other, metadata={"note": "retagged"})
    err = one_line_error(cli("reproduce", image["path"], "--verify", "--model", other))
    assert "sha256" in err


@pytest.mark.slow
def test_a_transformer_only_flux_file_takes_the_others_from_the_preset(cli, files, tmp_path, isolated_home):
    folder = files["folders"]["flux"]
    presets = isolated_home / "presets"
    presets.mkdir(parents=True)
    shutil.copy(Path(__file__).resolve().parent.parent / "presets" / "flux-schnell.toml", presets / "tiny-flux.toml")
    text = (presets / "tiny-flux.toml").read_text().replace('"black-forest-labs/FLUX.1-schnell"', json.dumps(str(folder)))
    (presets / "tiny-flux.toml").write_text(text)
    want = generate(cli, "--model", folder)["pixels_sha256"]
    image = generate(cli, "--model", files["files"]["flux-transformer"], "--preset", "tiny-flux")
    assert image["pixels_sha256"] == want
    record = json.loads(Path(image["path"]).with_suffix(".json").read_text())
    assert record["model"]["base"]["id"] == str(folder) or record["model"]["config"]["id"]


@pytest.mark.slow
def test_base_configs_in_the_hf_cache_need_no_config_flag(cli, files, tmp_path, monkeypatch):
    """A cache that once held the base repo's configs and tokenizers is all a checkpoint file needs offline."""
    from huggingface_hub import constants

    folder = files["folders"]["sdxl"]
    cache = tmp_path / "hub"
    snapshot = cache / "models--stabilityai--stable-diffusion-xl-base-1.0" / "snapshots" / ("a" * 40)
    for path in folder.rglob("*"):
        if path.is_file() and path.suffix in (".json", ".txt", ".model"):
            target = snapshot / path.relative_to(folder)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, target)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    want = generate(cli, "--model", folder)["pixels_sha256"]
    image = generate(cli, "--model", files["files"]["sdxl"])
    assert image["pixels_sha256"] == want


@pytest.mark.slow
def test_a_wrong_architecture_fails_in_one_line_naming_config(cli, files, tmp_path):
    folder = shutil.copytree(files["folders"]["sd15"], tmp_path / "wider")
    config = json.loads((folder / "unet" / "config.json").read_text())
    config["block_out_channels"] = [c * 2 for c in config["block_out_channels"]]
    (folder / "unet" / "config.json").write_text(json.dumps(config))
    err = one_line_error(cli("txt2img", "a fox", "--model", files["files"]["sd15"], "--config", folder, *SMALL))
    assert "--config" in err


@pytest.mark.slow
def test_vae_from_a_file_in_either_layout_or_a_folder(cli, files, tmp_path):
    import torch
    from diffusers import AutoencoderKL
    from safetensors.torch import load_file, save_file

    from imagegen.testing import write_checkpoint

    folder = files["folders"]["sdxl"]
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae")
    with torch.no_grad():
        for param in vae.decoder.parameters():
            param.mul_(0.9)
    vae.save_pretrained(tmp_path / "my-vae")
    diffusers_file = tmp_path / "my-vae" / "diffusion_pytorch_model.safetensors"
    pipe_folder = tmp_path / "with-vae"
    shutil.copytree(folder, pipe_folder)
    shutil.copytree(tmp_path / "my-vae", pipe_folder / "vae", dirs_exist_ok=True)
    ldm = load_file(write_checkpoint(pipe_folder, tmp_path / "full.safetensors", parts=("vae",)))
    save_file({k.removeprefix("first_stage_model."): v for k, v in ldm.items()}, tmp_path / "vae-ft.safetensors")

    base = generate(cli, "--model", folder)["pixels_sha256"]
    want = generate(cli, "--model", pipe_folder)["pixels_sha256"]
    assert want != base
    for source in (tmp_path / "vae-ft.safetensors", diffusers_file, tmp_path / "my-vae"):
        image = generate(cli, "--model", folder, "--vae", source, "-o", tmp_path / "out" / source.name)
        assert image["pixels_sha256"] == want, source
    text = Image.open(image["path"]).text["parameters"]
    assert "VAE: my-vae," in text
    file_image = generate(cli, "--model", folder, "--vae", tmp_path / "vae-ft.safetensors", "-o", tmp_path / "f")
    digest = hashlib.sha256((tmp_path / "vae-ft.safetensors").read_bytes()).hexdigest()
    assert f"VAE hash: {digest[:10]}" in Image.open(file_image["path"]).text["parameters"]
    assert cli("reproduce", file_image["path"], "--verify").code == 0
    assert generate(cli, "--model", folder)["pixels_sha256"] == base  # swapped back


def test_vae_refusals_are_one_line(cli, tmp_path, tiny_models):
    (tmp_path / "vae.pt").write_bytes(b"PK")
    assert "pickle" in one_line_error(cli("txt2img", "a fox", "--model", tiny_models["sdxl"], "--vae", tmp_path / "vae.pt"))
    header_file(tmp_path / "lora.safetensors", ["lora_unet_down.lora_down.weight"])
    err = one_line_error(cli("txt2img", "a fox", "--model", tiny_models["sdxl"], "--vae", tmp_path / "lora.safetensors"))
    assert "not a VAE" in err


@pytest.mark.slow
def test_pull_configs_only_then_a_file_runs_offline(cli, files, tmp_path, monkeypatch):
    """The offline promise end to end: `models pull sdxl --configs-only` from a (local) hub, then the checkpoint file
    alone, offline, gives the folder's pixels."""
    from huggingface_hub import constants

    from hubserver import FakeHub

    folder = files["folders"]["sdxl"]
    repo = "stabilityai/stable-diffusion-xl-base-1.0"
    served = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with FakeHub({repo: served}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        pulled = cli("models", "pull", "sdxl", "--configs-only", "-q")
        assert pulled.code == 0, pulled.err
        fetched = hub.downloaded(repo)
    assert fetched and not any(p.endswith(".safetensors") for p in fetched)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    want = generate(cli, "--model", folder)["pixels_sha256"]
    assert generate(cli, "--model", files["files"]["sdxl"])["pixels_sha256"] == want
    # a UNet-only file needs the base's other weights, which a configs-only pull left out: one line, before loading
    from imagegen.testing import write_checkpoint

    unet = write_checkpoint(folder, tmp_path / "unet-only.safetensors", parts=("unet",))
    err = one_line_error(cli("txt2img", "a fox", "--model", unet, *SMALL), code=1)
    assert "holds no text_encoder, text_encoder_2, vae" in err and "imagegen models pull sdxl" in err


@pytest.mark.slow
def test_an_fp8_transformer_only_file_loads_in_the_runs_dtype(cli, files, tmp_path):
    """ComfyUI users' flux1-dev-fp8 files: float8 tensors, cast to the run's dtype as they load."""
    import torch

    from imagegen.testing import write_checkpoint

    folder = files["folders"]["flux"]
    file = write_checkpoint(folder, tmp_path / "flux1-fp8.safetensors", parts=("transformer",), prefix="",
                            dtype=torch.float8_e4m3fn)
    found = inspect_checkpoint(file)
    assert found.components["transformer"].dtypes == ("F8_E4M3",) and list(found.components) == ["transformer"]
    image = generate(cli, "--model", file, "--config", folder)
    assert image["pixels_sha256"] != generate(cli, "--model", folder)["pixels_sha256"]  # rounded weights


@pytest.mark.slow
@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_an_inpainting_file_inpaints_like_its_folder_and_only_inpaints(cli, files, family, tmp_path):
    """A 9-channel inpainting UNet (sd-v1-5-inpainting, SDXL inpainting 0.1): told apart, run with the inpaint
    preset, refused for txt2img in one line."""
    import numpy as np
    import torch
    from diffusers import DiffusionPipeline, UNet2DConditionModel

    from imagegen.testing import write_checkpoint

    pipe = DiffusionPipeline.from_pretrained(files["folders"][family])
    torch.manual_seed(0)
    pipe.register_modules(unet=UNet2DConditionModel.from_config({**pipe.unet.config, "in_channels": 9}))
    pipe.save_pretrained(tmp_path / "inpainting")
    file = write_checkpoint(tmp_path / "inpainting", tmp_path / "inpainting.safetensors")
    assert inspect_checkpoint(file).kind.preset == f"{family}-inpaint"
    Image.fromarray(np.full((64, 64, 3), 120, "uint8")).save(tmp_path / "photo.png")
    mask = np.zeros((64, 64), "uint8")
    mask[16:48, 16:48] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    args = ("--image", tmp_path / "photo.png", "--mask", tmp_path / "mask.png", "--cfg", "5", "--strength", "1",
            "--scheduler", "Euler", *SMALL, "--json")

    def inpaint(*model):
        result = cli("inpaint", "a red door", *model, *args)
        assert result.code == 0, result.err
        return json.loads(result.out)["images"][0]

    want = inpaint("--model", tmp_path / "inpainting", "--preset", f"{family}-inpaint")
    image = inpaint("--model", file, "--config", tmp_path / "inpainting")
    assert image["pixels_sha256"] == want["pixels_sha256"]
    assert json.loads(Path(image["path"]).with_suffix(".json").read_text())["model"]["preset"] == f"{family}-inpaint"
    err = one_line_error(cli("txt2img", "a fox", "--model", file, "--config", tmp_path / "inpainting"))
    assert f"{family}-inpaint" in err and "txt2img" in err
