"""What LoRAs and textual-inversion embeddings share: where their files are found (a path, a hub repo, or a name in
the user's folders, as A1111 finds `<lora:NAME>`), the safetensors-only rule, and the file's header, read without
loading a tensor."""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import Any

from ..checkpoints import read_header as checkpoint_header
from ..errors import RunError, UsageError, closest
from ..fields import Field
from ..hub import cached_file, split_revision
from ..paths import config_dir

ENV_DIR = "IMAGEGEN_LORA_DIR"
PICKLES = (".ckpt", ".pt", ".pth", ".bin")
DEFAULT_LORA_FILE = "pytorch_lora_weights.safetensors"  # what diffusers' save_lora_weights names it
_SCALE = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)$")
_listings: dict[str, dict[str, list[Path]]] = {}  # folder -> lowercased stem -> files (read once per process)


class NetworkField(Field):
    """A repeatable PATH_OR_REPO[:SUFFIX] field (`split` separates the suffix): on a prompt-file line a relative
    file is relative to the prompt file, and the suffix stays."""

    split: Any = None

    def rebase(self, value, rebased):
        out = []
        for item in value:
            source, suffix = type(self).split(item)
            moved = rebased(source, False)
            out.append(moved if suffix is None else f"{moved}:{suffix:g}" if isinstance(suffix, float) else
                       f"{moved}:{suffix}")
        return tuple(out)


def source_of(model: dict) -> str:
    """A recorded LoRA or embedding as its flag takes it: the file, or REPO[@REV]/FILE."""
    if model.get("weight"):
        pinned = f"{model['id']}@{model['revision']}" if model.get("revision") else model["id"]
        return f"{pinned}/{model['weight']}"
    return model["id"]


def split_scale(text: str) -> tuple[str, float | None]:
    """'style.safetensors:0.8' -> ('style.safetensors', 0.8); no ':NUMBER' at the end -> (text, None)."""
    head, sep, tail = text.rpartition(":")
    if sep and head and _SCALE.match(tail.strip()):
        return head.strip(), float(tail)
    return text.strip(), None


def refuse_pickle(path: str, flag: str) -> None:
    """Only .safetensors: a pickle file (.ckpt, .pt, .bin) runs code when loaded."""
    if not path.lower().endswith(".safetensors"):
        kind = "a pickle file, which can run arbitrary code when loaded" if path.lower().endswith(PICKLES) else \
            "not a .safetensors file"
        raise UsageError(f"{flag} {path}: {kind}; imagegen loads .safetensors only (convert it with the safetensors "
                         f"library, or download the .safetensors version)")


def read_header(path: Path, flag: str) -> dict[str, list[int]]:
    """Tensor name -> shape, from the file's JSON header alone (no tensor is read)."""
    return {name: list(shape) for name, (_, shape) in checkpoint_header(path, flag).tensors.items()}


def locate(source: str, flag: str) -> tuple[Path, dict]:
    """A file path (or a folder holding one .safetensors), or a hub REPO[@REV][/FILE.safetensors], as (local file,
    its model entry for the record)."""
    expanded = Path(os.path.expanduser(source))
    if expanded.is_dir():
        safe = sorted(expanded.glob("*.safetensors"))
        if len(safe) != 1:
            held = ", ".join(p.name for p in safe) or "no .safetensors file"
            raise UsageError(f"{flag} {source}: a folder holding {held}; name the file")
        expanded = safe[0]
    if expanded.is_file() or source.startswith((".", "/", "~")) or expanded.suffix.lower() in (*PICKLES,):
        if not expanded.is_file():
            raise UsageError(f"{flag} {source}: no such file")
        refuse_pickle(source, flag)
        path = expanded.resolve()
        return path, {"id": str(path), "revision": None, "weight": None}
    parts = source.split("/")
    if len(parts) < 2 or not all(parts):
        raise UsageError(f"{flag} {source}: no such file, and not a hub repo id (ORG/NAME[/FILE.safetensors])")
    repo, revision = split_revision("/".join(parts[:2]))
    weight = "/".join(parts[2:]) or DEFAULT_LORA_FILE
    refuse_pickle(weight, flag)
    path = cached_file(repo, weight, revision, network=True)
    if path is None:
        raise RunError(f"{flag} {source}: {weight} of {repo} is not in the Hugging Face cache and could not be "
                       f"downloaded (offline?); download it, or pass the file's path")
    return path, {"id": repo, "revision": revision, "weight": weight}


def lora_dirs(given: str | None) -> list[Path]:
    """Where <lora:NAME> tags are looked up, in order: --lora-dir, $IMAGEGEN_LORA_DIR, the config folder's loras/."""
    found = [Path(os.path.expanduser(d)) for d in (given, os.environ.get(ENV_DIR)) if d]
    return found + [config_dir() / "loras"]


def embedding_dirs(given: str | None) -> list[Path]:
    """Where embedding names are looked up: the 'embeddings' folder beside each LoRA folder (A1111 keeps
    models/Lora and embeddings side by side), then the config folder's embeddings/."""
    dirs = [d.parent / "embeddings" for d in lora_dirs(given)[:-1]]
    return dirs + [config_dir() / "embeddings"]


def listing(folder: Path) -> dict[str, list[Path]]:
    """Lowercased file stem -> the files with it, searched recursively (A1111 finds networks in subfolders)."""
    key = str(folder.resolve()) if folder.is_dir() else str(folder)
    if key not in _listings:
        found: dict[str, list[Path]] = {}
        if folder.is_dir():
            for root, dirs, files in os.walk(folder):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(files):
                    if name.lower().endswith((".safetensors", *PICKLES)):
                        found.setdefault(Path(name).stem.lower(), []).append(Path(root, name))
        _listings[key] = found
    return _listings[key]


def find_named(name: str, dirs: list[Path], what: str, where: str) -> Path:
    """The .safetensors file called NAME (case-insensitive, without extension) in the first folder that has one."""
    for folder in dirs:
        files = listing(folder).get(name.lower(), [])
        safe = [f for f in files if f.suffix.lower() == ".safetensors"]
        if len(safe) > 1:
            raise UsageError(f"{where}: {len(safe)} {what}s named {name!r} in {folder}: "
                             f"{', '.join(str(f.relative_to(folder)) for f in safe)}; rename one")
        if safe:
            return safe[0].resolve()
        if files:
            refuse_pickle(str(files[0]), where)
    searched = [d for d in dirs if d.is_dir()]
    if not searched:
        raise UsageError(f"{where}: no {what} folder to find {name!r} in; pass --lora-dir DIR or set {ENV_DIR} "
                         f"(looked in {', '.join(str(d) for d in dirs)})")
    known = sorted({Path(f).stem for d in searched for files in listing(d).values() for f in files})
    raise UsageError(f"{where}: no {what} named {name!r} in {', '.join(str(d) for d in searched)}"
                     f"{closest(name, known)}")


def first_line(exc: Exception) -> str:
    """An exception's first line, shortened: what a one-line load error quotes."""
    import textwrap

    text = str(exc).strip().splitlines()
    return textwrap.shorten(text[0] if text else type(exc).__name__, 300, placeholder=" ...")


@contextlib.contextmanager
def quiet_loading():
    """What loading a LoRA or an embedding prints, silenced: transformers' load-report tables (peft integration),
    diffusers' note on text encoders a LoRA has no weights for, peft's re-adapter warning, and the per-encoder
    progress bars. transformers.modeling_utils keeps its level (a raised one makes it print sharding notes), and
    diffusers.loaders.peft too: its warning is how a LoRA that matched nothing shows (checked after loading)."""
    import logging
    import warnings

    from transformers.utils import logging as hf_logging

    names = ("transformers.integrations.peft", "diffusers.loaders.lora_base", "diffusers.loaders.peft",
             "diffusers.loaders.textual_inversion")
    levels = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.ERROR)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    resizing = logging.getLogger("transformers.modeling_utils")
    resizing.addFilter(_not_resize_note)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for n, level in levels.items():
            logging.getLogger(n).setLevel(level)
        resizing.removeFilter(_not_resize_note)
        if bars:
            hf_logging.enable_progress_bar()


def _not_resize_note(record) -> bool:
    """transformers' note on how an embedding's new token rows are initialised (diffusers overwrites them)."""
    return "mean_resizing" not in record.getMessage()
