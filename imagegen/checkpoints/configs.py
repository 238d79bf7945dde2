"""The architecture a single-file checkpoint loads into: a diffusers folder of configs and tokenizers, passed to
diffusers' `from_single_file` as `config=`. It comes from --config, else the Hugging Face cache's copy of the base
repo, else the configs shipped in this package (imagegen/configs/) with the tokenizers from the HF cache or a kept
package that ships the same files. The network is used only where huggingface_hub may reach it."""

from __future__ import annotations

import json
import os
import shutil
from functools import lru_cache
from pathlib import Path
from typing import Callable

from ..errors import RunError, UsageError
from ..hub import cached_file, read_json
from ..paths import PACKAGE_DIR, config_dir

SHIPPED = PACKAGE_DIR / "configs"
# What diffusers' own single-file loader fetches from a base repo: configs and tokenizer files, no weights.
CONFIG_PATTERNS = ["*.json", "**/*.json", "*.txt", "**/*.txt", "**/*.model"]
# Each set is enough for a tokenizer to load (transformers 5 builds fast tokenizers from any of them).
TOKENIZER_FILES = (("tokenizer.json",), ("vocab.json", "merges.txt"), ("spiece.model",))
# The CLIP BPE (OpenAI's, MIT) as open_clip and OpenAI's clip ship it; openai/clip-vit-large-patch14's vocab.json
# and merges.txt were made from this file, so both tokenize alike (tests/test_checkpoints.py).
CLIP_BPE = (("open_clip", "bpe_simple_vocab_16e6.txt.gz"), ("clip", "bpe_simple_vocab_16e6.txt.gz"))


def slug(repo: str) -> str:
    return repo.replace("/", "--")


def shipped_folder(repo: str) -> Path | None:
    """The configs shipped for a base repo, if any."""
    folder = SHIPPED / slug(repo)
    return folder if (folder / "model_index.json").is_file() else None


def is_folder(source: str) -> bool:
    return os.path.isdir(os.path.expanduser(source))


def reader(source: str) -> Callable[[str], dict | None]:
    """A function reading one JSON config of `source` (a folder, or a repo: its cached copy, else the shipped one)."""
    if is_folder(source):
        root = Path(os.path.expanduser(source))
        return lambda rel: read_json(root / rel)
    shipped = shipped_folder(source)

    def read(rel: str) -> dict | None:
        path = cached_file(source, rel, None)
        if path is None and shipped is not None:
            path = shipped / rel
        return read_json(path) if path else None

    return read


def tokenizers_of(index: dict) -> list[str]:
    """The tokenizer components of a model_index.json."""
    return [name for name, spec in index.items() if isinstance(spec, list) and len(spec) == 2
            and isinstance(spec[1], str) and "Tokenizer" in spec[1]]


def weight_components(index: dict, family) -> list[str]:
    """The components of a model_index.json that hold weights (not tokenizers, schedulers or image processors),
    less those the family leaves out (SD 1.5's safety checker); told by class name, so nothing heavy is imported."""
    light = ("Tokenizer", "Scheduler", "Processor", "FeatureExtractor")
    return [name for name, spec in index.items() if isinstance(spec, list) and len(spec) == 2 and spec[0] and spec[1]
            and not any(word in spec[1] for word in light) and name not in family.load_kwargs]


def complete(folder: Path) -> bool:
    """Whether a folder has a model_index.json and every tokenizer it names."""
    index = read_json(folder / "model_index.json")
    return index is not None and all(_has_tokenizer(folder / name) for name in tokenizers_of(index))


def _has_tokenizer(folder: Path) -> bool:
    return any(all((folder / f).is_file() for f in files) for files in TOKENIZER_FILES)


@lru_cache(maxsize=32)  # a batch resolves every line: the cache is looked up once per run
def config_folder(source: str, *, flag: str, preset: str) -> str:
    """A local folder holding every config and tokenizer `source` (--config, or a base repo) describes."""
    if is_folder(source):
        folder = Path(os.path.expanduser(source)).resolve()
        if not (folder / "model_index.json").is_file():
            raise UsageError(f"{flag} {source}: not a diffusers folder (no model_index.json); give a diffusers "
                             f"folder or hub repo of the checkpoint's architecture")
        return str(folder)
    cached = _cached_snapshot(source)
    if cached is not None:
        return str(cached)
    return str(_assemble(source, flag=flag, preset=preset))


def _cached_snapshot(repo: str, *, network: bool = False) -> Path | None:
    """The HF cache's snapshot of `repo` if it holds the configs and tokenizers (fetched first when `network`)."""
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(repo, allow_patterns=CONFIG_PATTERNS, local_files_only=not network))
    except Exception:  # not cached (or, with network, unreachable, gated or missing): the caller explains
        return None
    return folder if complete(folder) else None


def _assemble(repo: str, *, flag: str, preset: str) -> Path:
    """The shipped configs of `repo` with its tokenizers, in imagegen's cache (made once)."""
    from huggingface_hub import constants

    shipped = shipped_folder(repo)
    if shipped is None:
        if not constants.HF_HUB_OFFLINE and (fetched := _cached_snapshot(repo, network=True)) is not None:
            return fetched
        raise RunError(f"{flag}: the configs of {repo} are neither shipped with imagegen nor in the Hugging Face "
                       f"cache; run `imagegen models pull {repo} --configs-only` on a connected machine, or pass "
                       f"--config DIR")
    dest = config_dir() / "cache" / "configs" / slug(repo)
    if complete(dest):
        return dest
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(shipped, tmp)
    index = read_json(tmp / "model_index.json") or {}
    missing = [name for name in tokenizers_of(index) if not _fill_tokenizer(repo, tmp / name)]
    if missing:
        shutil.rmtree(tmp, ignore_errors=True)
        if not constants.HF_HUB_OFFLINE and (fetched := _cached_snapshot(repo, network=True)) is not None:
            return fetched
        raise RunError(f"{flag}: its tokenizers ({', '.join(missing)} of {repo}) are not in the Hugging Face cache "
                       f"and the hub cannot be reached; run `imagegen models pull {preset} --configs-only` (a few MB) "
                       f"once on a connected machine, or pass --config DIR")
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    return dest


def _fill_tokenizer(repo: str, folder: Path) -> bool:
    """Put a tokenizer's vocabulary files in `folder`: from the HF cache, else (CLIP) from a kept package."""
    from huggingface_hub import try_to_load_from_cache

    for files in TOKENIZER_FILES:
        found = [try_to_load_from_cache(repo, f"{folder.name}/{f}") for f in files]
        if all(isinstance(p, str) for p in found):
            for name, path in zip(files, found):
                shutil.copyfile(path, folder / name)
            return True
    config = read_json(folder / "tokenizer_config.json") or {}
    return config.get("tokenizer_class") == "CLIPTokenizer" and clip_vocabulary(folder)


def clip_vocabulary(folder: Path) -> bool:
    """Write CLIP's vocab.json and merges.txt from the BPE file a kept package ships (OpenAI's SimpleTokenizer
    recipe: 256 byte tokens, the same with </w>, one token per merge, then the two specials); False if none does."""
    import gzip
    import importlib.util

    found = [Path(folder) / name for package, name in CLIP_BPE
             for spec in [importlib.util.find_spec(package)] if spec is not None  # found without importing it
             for folder in spec.submodule_search_locations or ()]
    origin = next((path for path in found if path.is_file()), None)
    if origin is None:
        return False
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    lines = gzip.decompress(origin.read_bytes()).decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1:49152 - 256 - 2 + 1]]
    vocab = list(bytes_to_unicode().values())
    vocab += [v + "</w>" for v in vocab] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False),
                                       encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n",
                                       encoding="utf-8")
    return True
