"""`imagegen models`, end to end against a local fake hub (tests/hubserver.py) with the real huggingface_hub client
and a real cache layout in a temp folder: pull fetches exactly what a preset loads, list says what is ready offline,
verify finds a flipped byte, rm frees space, info reads headers; every failure is one line."""

from __future__ import annotations

import io
import json
import shutil
import socket

import numpy as np
import pytest
from safetensors.numpy import save

from hubserver import FakeHub

TINY = """
family = "sdxl"
model = "test/tiny-pipe"
variant = "fp16"
[defaults]
steps = 2
cfg = 5.0
size = "64x64"
scheduler = "Euler"
[controlnet]
canny = "test/tiny-canny"
[ip_adapter]
model = "test/tiny-ip"
subfolder = "sdxl_models"
weight = "ip-adapter_sdxl.safetensors"
image_encoder = "test/tiny-ip"
image_encoder_subfolder = "sdxl_models/image_encoder"
"""


def weights(rows: int, dtype=np.float16) -> bytes:
    """A small safetensors file; `rows` makes each one's content (and so its blob) distinct."""
    return save({"w": np.ones((rows, 4), dtype=dtype), "b": np.zeros(rows, dtype=dtype)})


def tiny_pipe() -> dict[str, bytes]:
    index = {"_class_name": "StableDiffusionXLPipeline", "_diffusers_version": "0.42.1",
             "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
             "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
             "scheduler": ["diffusers", "EulerDiscreteScheduler"]}
    return {
        "model_index.json": json.dumps(index).encode(),
        "unet/config.json": b'{"_class_name": "UNet2DConditionModel"}',
        "unet/diffusion_pytorch_model.safetensors": weights(16, np.float32),
        "unet/diffusion_pytorch_model.fp16.safetensors": weights(16),
        "unet/diffusion_pytorch_model.bin": b"a pickle that must never be fetched",
        "vae/config.json": b'{"_class_name": "AutoencoderKL"}',
        "vae/diffusion_pytorch_model.safetensors": weights(8, np.float32),  # no fp16 here: diffusers takes this
        "text_encoder/config.json": b'{"architectures": ["CLIPTextModel"]}',
        "text_encoder/model.safetensors": weights(4, np.float32),
        "text_encoder/model.fp16.safetensors": weights(4),
        "tokenizer/vocab.json": b'{"a": 0}', "tokenizer/merges.txt": b"#version: 0.2",
        "tokenizer/tokenizer_config.json": b'{"model_max_length": 77}',
        "scheduler/scheduler_config.json": b'{"_class_name": "EulerDiscreteScheduler"}',
        "README.md": b"# tiny", "samples/cat.png": b"\x89PNG not fetched",
    }


PIPE_LOADS = {"model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.fp16.safetensors",
              "vae/config.json", "vae/diffusion_pytorch_model.safetensors", "text_encoder/config.json",
              "text_encoder/model.fp16.safetensors", "tokenizer/vocab.json", "tokenizer/merges.txt",
              "tokenizer/tokenizer_config.json", "scheduler/scheduler_config.json"}
REPOS = {
    "test/tiny-pipe": tiny_pipe(),
    "test/tiny-canny": {"config.json": b'{"_class_name": "ControlNetModel"}',
                        "diffusion_pytorch_model.safetensors": weights(6, np.float32),
                        "diffusion_pytorch_model.fp16.safetensors": weights(6), "diffusion_pytorch_model.bin": b"x"},
    "test/tiny-ip": {"sdxl_models/ip-adapter_sdxl.safetensors": weights(3), "sdxl_models/ip-adapter_sdxl.bin": b"p",
                     "sdxl_models/ip-adapter-plus_sdxl.safetensors": weights(5),
                     "sdxl_models/image_encoder/config.json": b'{"architectures": ["CLIPVisionModelWithProjection"]}',
                     "sdxl_models/image_encoder/model.safetensors": weights(7),
                     "models/image_encoder/model.safetensors": weights(9)},
    "test/gated-pipe": tiny_pipe(),
    "test/gated-loose": {"a.safetensors": weights(2)},
    "test/moving": {"config.json": b'{"_class_name": "ControlNetModel"}',
                    "diffusion_pytorch_model.safetensors": weights(10)},
}


@pytest.fixture(scope="module")
def hub():
    with FakeHub(REPOS, gated={"test/gated-pipe": 401, "test/gated-loose": 403}) as server:
        yield server


@pytest.fixture(autouse=True)
def cache(hub, tmp_path, monkeypatch, isolated_home):
    """An empty HF cache of this test's own, the fake hub as the endpoint, the network allowed, preset `tiny`."""
    from huggingface_hub import constants

    folder = tmp_path / "hf" / "hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(folder))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # conftest turns the hub off for every other test
    monkeypatch.setenv("HF_HUB_CACHE", str(folder))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    (isolated_home / "presets").mkdir(parents=True)
    (isolated_home / "presets" / "tiny.toml").write_text(TINY)
    hub.requests.clear()
    return folder


def one_line_error(result, code: int, *words: str) -> str:
    assert result.code == code, result.err
    assert result.err.count("\n") == 1 and result.err.startswith("imagegen: error: "), result.err
    assert all(w in result.err for w in words), result.err
    return result.err


def listing(cli) -> dict:
    result = cli("models", "list", "--json")
    assert result.code == 0, result.err
    return json.loads(result.out)


def preset(data: dict, name: str = "tiny") -> dict:
    return next(p for p in data["presets"] if p["name"] == name)


# ---- pull


def test_pull_fetches_the_variants_safetensors_and_the_configs_only(cli, hub):
    result = cli("models", "pull", "tiny", "-q")
    assert result.code == 0, result.err
    assert hub.downloaded("test/tiny-pipe") == PIPE_LOADS  # no .bin, no fp32 twin, no README or samples
    assert "test/tiny-pipe" in result.out and "pulled tiny" in result.out
    assert not hub.downloaded("test/tiny-canny") and not hub.downloaded("test/tiny-ip")


def test_pull_with_control_and_adapters_adds_the_nets_and_the_adapter_files(cli, hub):
    from imagegen.hubcache import weights_info

    result = cli("models", "pull", "tiny", "--with-control", "--with-adapters", "--json")
    assert result.code == 0, result.err
    assert hub.downloaded("test/tiny-canny") == {"config.json", "diffusion_pytorch_model.safetensors"}
    assert hub.downloaded("test/tiny-ip") == {"sdxl_models/ip-adapter_sdxl.safetensors",
                                              "sdxl_models/image_encoder/config.json",
                                              "sdxl_models/image_encoder/model.safetensors"}
    data = json.loads(result.out)
    assert [r["part"] for r in data["repos"]] == ["model", "controlnet canny", "ip-adapter", "image encoder"]
    adapter = weights_info("test/tiny-ip")  # loose files each alone, a model folder as one
    assert [c.name for c in adapter.components] == ["sdxl_models/image_encoder",
                                                    "sdxl_models/ip-adapter_sdxl.safetensors"]
    index = len(REPOS["test/tiny-pipe"]["model_index.json"])  # read while planning, before the sized download
    assert data["downloaded"] == data["size"] - index > 0


def test_configs_only_fetches_configs_and_tokenizer_files(cli, hub):
    from imagegen.pull import CONFIG_PATTERNS, plan

    assert plan("test/tiny-pipe", configs_only=True)[0].allow == CONFIG_PATTERNS
    result = cli("models", "pull", "test/tiny-pipe", "--configs-only", "-q")
    assert result.code == 0, result.err
    got = hub.downloaded("test/tiny-pipe")
    assert got == {p for p in REPOS["test/tiny-pipe"] if p.endswith((".json", ".txt"))}
    assert preset(listing(cli))["ready"] is False  # configs alone do not load the pipeline


def test_a_second_pull_downloads_nothing(cli, hub):
    from imagegen.pull import pull

    first = pull("tiny")
    hub.requests.clear()
    again = pull("tiny")
    assert first.downloaded > 0 and again.downloaded == 0 and again.size == first.size
    assert not hub.downloaded("test/tiny-pipe")


def test_pull_refuses_when_the_disk_is_short(cli, hub, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9 - 100, 100))
    result = cli("models", "pull", "tiny")
    one_line_error(result, 1, "not enough disk space to pull tiny", "100 B free", "imagegen models rm")
    assert not {p for p in hub.downloaded("test/tiny-pipe") if p.endswith(".safetensors")}


@pytest.mark.parametrize("repo", ["test/gated-pipe", "test/gated-loose"])
def test_a_gated_repo_says_accept_the_licence_and_log_in(cli, repo):
    result = cli("models", "pull", repo)
    one_line_error(result, 1, f"{repo} is a gated repo", f"https://huggingface.co/{repo}", "hf auth login")


def test_missing_repo_revision_and_network_are_one_line_each(cli, monkeypatch):
    from huggingface_hub import constants

    one_line_error(cli("models", "pull", "test/nope"), 2, "test/nope: no such model on the Hugging Face hub")
    one_line_error(cli("models", "pull", "tiny@v9"), 2, "test/tiny-pipe@v9: no such revision")
    one_line_error(cli("models", "pull", "tinyy"), 2, "no such preset", "did you mean 'tiny'?")
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    one_line_error(cli("models", "pull", "tiny"), 1, "cannot reach the Hugging Face hub to pull test/tiny-pipe")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    one_line_error(cli("models", "pull", "tiny"), 1, "HF_HUB_OFFLINE is set")


# ---- list


def test_list_json_shows_sizes_revisions_and_what_is_ready_offline(cli, hub):
    before = listing(cli)
    assert before["repos"] == [] and before["size"] == 0
    assert preset(before) == {"name": "tiny", "model": "test/tiny-pipe", "ready": False,
                              "controlnet": {"canny": False}, "ip_adapter": False}
    assert preset(before, "demo")["ready"] is True  # the built-in model needs no download
    assert cli("models", "pull", "tiny", "--with-control", "-q").code == 0
    after = listing(cli)
    assert preset(after) == {**preset(before), "ready": True, "controlnet": {"canny": True}}
    repos = {r["repo"]: r for r in after["repos"]}
    assert set(repos) == {"test/tiny-pipe", "test/tiny-canny"}
    pipe = repos["test/tiny-pipe"]
    assert pipe["revisions"][0]["commit"] == hub.repos["test/tiny-pipe"].main
    assert pipe["revisions"][0]["refs"] == ["main"] and pipe["revisions"][0]["files"] == len(PIPE_LOADS)
    assert pipe["size"] == sum(len(REPOS["test/tiny-pipe"][p]) for p in PIPE_LOADS) and pipe["presets"] == ["tiny"]
    assert after["size"] == sum(r["size"] for r in after["repos"])
    table = cli("models", "list")
    assert table.code == 0 and "test/tiny-pipe" in table.out and "ready" in table.out


def test_a_missing_component_file_makes_a_preset_not_ready(cli, cache):
    from imagegen.hubcache import scan_cache
    from imagegen.pull import cache_report, pull

    def ready() -> bool:
        return next(p for p in cache_report().presets if p.name == "tiny").ready

    pull("tiny")
    snapshot = scan_cache().get("test/tiny-pipe").revision().snapshot
    (snapshot / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    assert ready() is False
    # A cache filled file by file keeps no listing of the repo: what is there decides, each component needed.
    for listing in (cache / "models--test--tiny-pipe" / "trees").iterdir():
        listing.unlink()
    (snapshot / "vae" / "config.json").unlink()
    assert ready() is False
    shutil.rmtree(snapshot / "vae")
    assert ready() is False
    vae = dict(json.loads((snapshot / "model_index.json").read_text()), vae=[None, None])
    (snapshot / "model_index.json").unlink()
    (snapshot / "model_index.json").write_text(json.dumps(vae))
    assert ready() is True


SHARDED = {"model_index.json", "scheduler/scheduler_config.json", "tokenizer/vocab.json", "safety_checker/config.json",
           "safety_checker/model.safetensors", "text_encoder/config.json", "text_encoder/model.safetensors.index.json",
           "text_encoder/model-00001-of-00002.safetensors", "text_encoder/model-00002-of-00002.safetensors",
           "text_encoder/model.safetensors.index.fp16.json", "text_encoder/model.fp16-00001-of-00002.safetensors",
           "text_encoder/model.fp16-00002-of-00002.safetensors", "unet/config.json",
           "unet/diffusion_pytorch_model.bin", "unet/diffusion_pytorch_model.safetensors", "vae/config.json",
           "vae/diffusion_pytorch_model.fp16.safetensors", "vae/diffusion_pytorch_model.safetensors", "README.md"}


@pytest.mark.parametrize("files, variant, skip", [
    (set(REPOS["test/tiny-pipe"]), "fp16", ()), (set(REPOS["test/tiny-pipe"]), None, ()),
    (SHARDED, "fp16", ("safety_checker",)), (SHARDED, None, ()),
])
def test_the_offline_check_reads_the_files_diffusers_chooses(files, variant, skip):
    from huggingface_hub.utils import filter_repo_objects

    from imagegen.pull import loaded_files, pipeline_patterns

    index = {name: ["diffusers", "X"] for name in {f.split("/")[0] for f in files if "/" in f}}
    allow, ignore = pipeline_patterns(index, files, variant, skip)
    assert loaded_files(index, files, variant, skip) == set(filter_repo_objects(files, allow_patterns=allow,
                                                                                ignore_patterns=ignore))


# ---- verify


def test_verify_passes_then_names_a_flipped_byte(cli):
    from imagegen.hubcache import scan_cache, verify_cache

    assert cli("models", "pull", "tiny", "-q").code == 0
    clean = cli("models", "verify", "-q")
    assert clean.code == 0 and "all match their hashes" in clean.out, clean.err
    files = {f.path: f for f in scan_cache().get("test/tiny-pipe").revision().files}
    for name in ("unet/diffusion_pytorch_model.fp16.safetensors", "unet/config.json"):  # an LFS file and a git blob
        data = bytearray(files[name].blob.read_bytes())
        data[-1] ^= 0xFF
        files[name].blob.write_bytes(bytes(data))
    result = cli("models", "verify", "tiny", "-q")
    assert result.code == 1 and result.out == ""
    lines = result.err.splitlines()
    assert len(lines) == 3 and lines[-1].startswith("imagegen: error: 2 of 11 cached files are broken")
    unet = next(ln for ln in lines if "diffusion_pytorch_model.fp16.safetensors" in ln)
    sha = files["unet/diffusion_pytorch_model.fp16.safetensors"].blob.name
    assert unet.startswith("test/tiny-pipe@") and f"sha256 expected {sha[:12]}, got " in unet
    assert any("unet/config.json: git-sha1 expected" in ln for ln in lines)
    assert {b.path for b in verify_cache(["test/tiny-pipe"]).broken} == set(files) & {
        "unet/diffusion_pytorch_model.fp16.safetensors", "unet/config.json"}


def test_a_hand_built_cache_lists_and_verifies(cli, cache):
    """A cache laid out by hand (blobs named by sha256, git blob sha1 or plain sha1), not by the client."""
    import hashlib
    import os

    repo, commit = cache / "models--acme--hand" / "snapshots", "c0ffee" * 6 + "c0ff"
    files = {"model_index.json": b'{"_class_name": "StableDiffusionXLPipeline"}', "unet/config.json": b"{}",
             "unet/diffusion_pytorch_model.safetensors": weights(8)}
    names = {"model_index.json": hashlib.sha1(b"blob %d\0%s" % (len(files["model_index.json"]),
                                                                files["model_index.json"])).hexdigest(),
             "unet/config.json": hashlib.sha1(b"{}").hexdigest(),
             "unet/diffusion_pytorch_model.safetensors": hashlib.sha256(files["unet/diffusion_pytorch_model.safetensors"]).hexdigest()}
    (repo.parent / "blobs").mkdir(parents=True)
    (repo.parent / "refs").mkdir()
    (repo.parent / "refs" / "main").write_text(commit)
    for path, data in files.items():
        (repo.parent / "blobs" / names[path]).write_bytes(data)
        link = repo / commit / path
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(repo.parent / "blobs" / names[path], link.parent), link)
    entry = next(r for r in listing(cli)["repos"] if r["repo"] == "acme/hand")
    assert entry["size"] == sum(map(len, files.values())) and entry["revisions"][0]["commit"] == commit
    assert cli("models", "verify", "acme/hand", "-q").code == 0
    blob = repo.parent / "blobs" / names["unet/diffusion_pytorch_model.safetensors"]
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.write_bytes(bytes(data))
    result = cli("models", "verify", "-q", "--json")
    assert result.code == 1
    broken = json.loads(result.out)["broken"]
    assert [b["path"] for b in broken] == ["unet/diffusion_pytorch_model.safetensors"]


# ---- rm


def test_rm_yes_frees_the_space_and_the_repo_leaves_the_list(cli):
    from imagegen.hubcache import plan_removal

    assert cli("models", "pull", "tiny", "-q").code == 0
    size = next(r["size"] for r in listing(cli)["repos"] if r["repo"] == "test/tiny-pipe")
    assert plan_removal("tiny").freed == size
    result = cli("models", "rm", "tiny", "--yes")
    assert result.code == 0 and result.out.startswith("removed test/tiny-pipe: freed "), result.err
    after = listing(cli)
    assert after["repos"] == [] and preset(after)["ready"] is False


def test_rm_asks_first_and_no_keeps_it(cli, monkeypatch):
    assert cli("models", "pull", "tiny", "-q").code == 0
    monkeypatch.setattr("sys.stdin", io.StringIO("n\n"))
    result = cli("models", "rm", "test/tiny-pipe")
    assert result.code == 0 and "Remove test/tiny-pipe from the cache, freeing" in result.err
    assert "kept test/tiny-pipe (nothing removed)" in result.err
    assert [r["repo"] for r in listing(cli)["repos"]] == ["test/tiny-pipe"]


def test_rm_one_revision_keeps_the_others(cli, hub):
    from imagegen.hubcache import scan_cache

    repo = hub.repos["test/moving"]
    assert cli("models", "pull", "test/moving", "-q").code == 0
    old = repo.main
    repo.push({**REPOS["test/moving"], "diffusion_pytorch_model.safetensors": weights(11)})
    assert cli("models", "pull", "test/moving", "-q").code == 0
    assert len(scan_cache().get("test/moving").revisions) == 2
    result = cli("models", "rm", f"test/moving@{old[:8]}", "-y")
    assert result.code == 0 and f"removed test/moving@{old[:10]}" in result.out
    assert [r.commit for r in scan_cache().get("test/moving").revisions] == [repo.main]


def test_rm_an_unknown_name_lists_the_cached_repos(cli):
    assert cli("models", "pull", "tiny", "-q").code == 0
    one_line_error(cli("models", "rm", "tiny-pip", "--yes"), 2, "did you mean 'test/tiny-pipe'?",
                   "cached: test/tiny-pipe")
    one_line_error(cli("models", "rm", "test/other", "--yes"), 2, "test/other is not in the Hugging Face cache")
    one_line_error(cli("models", "rm", "tiny@0000000", "--yes"), 2, "no such cached revision")


# ---- info


def test_info_reads_a_cached_repos_headers(cli):
    one_line_error(cli("models", "info", "tiny"), 2, "test/tiny-pipe (preset tiny) is not in the Hugging Face cache")
    assert cli("models", "pull", "tiny", "--with-control", "-q").code == 0
    data = json.loads(cli("models", "info", "tiny", "--json").out)
    assert (data["family"], data["kind"], data["preset"], data["source"]) == (
        "sdxl", "StableDiffusionXLPipeline", "tiny", "cache")
    parts = {c["name"]: c for c in data["components"]}
    assert list(parts) == ["unet", "vae", "text_encoder"]
    assert parts["unet"]["files"] == ["unet/diffusion_pytorch_model.fp16.safetensors"]
    assert (parts["unet"]["parameters"], parts["unet"]["dtypes"], parts["vae"]["dtypes"]) == (16 * 4 + 16, ["F16"],
                                                                                             ["F32"])
    assert data["parameters"] == sum(c["parameters"] for c in data["components"])
    net = json.loads(cli("models", "info", "test/tiny-canny", "--json").out)
    assert net["kind"] == "ControlNetModel" and net["components"][0]["dtypes"] == ["F32"]
    text = cli("models", "info", "tiny")
    assert text.code == 0 and "SDXL (sdxl)" in text.out and "text_encoder" in text.out


def test_info_on_a_single_file_checkpoint(cli, tmp_path):
    pytest.importorskip("imagegen.checkpoints")
    path = tmp_path / "mine.safetensors"
    path.write_bytes(save({"model.diffusion_model.label_emb.0.0.weight": np.zeros((8, 2816), np.float16),
                           "first_stage_model.decoder.conv_in.weight": np.zeros((4, 4), np.float32),
                           "conditioner.embedders.0.transformer.text_model.x": np.zeros(3, np.float16)}))
    result = cli("models", "info", str(path), "--json")
    assert result.code == 0, result.err
    data = json.loads(result.out)
    assert (data["family"], data["source"]) == ("sdxl", "file")
    assert data["repo"] == "stabilityai/stable-diffusion-xl-base-1.0" and data["preset"] == "sdxl"
    assert {c["name"]: c["parameters"] for c in data["components"]} == {"unet": 8 * 2816, "vae": 16,
                                                                         "text_encoder": 3}


def test_help_shows_each_commands_examples(cli):
    assert "imagegen models list --json" in cli("models", "list", "--help").out
    assert "presets list" not in cli("models", "list", "--help").out
    assert "imagegen models pull sdxl --with-control" in cli("models", "pull", "--help").out
    assert "imagegen models rm sd3 --yes" in cli("models", "rm", "--help").out
