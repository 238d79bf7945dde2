"""How a record names local files. `portable` (the default) names a local model, net or adapter folder by its last
path component plus its sha256, and an input image by its path relative to the image's folder (or its name), so no
absolute path (a home folder, a user name) leaves the machine; `full` keeps absolute paths. A replay resolves
relative paths against the record's own folder."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from .adapters import ADAPTERS
from .hashes import weights_sha256
from .hub import BUILTIN, is_local, local_path
from .quantize import map_files

STDIN = "<stdin>"


def portable_path(path: str, folder: Path) -> str:
    """`path` relative to `folder` when they share a folder below the home folder's parents (never through /home or
    the root, which would spell out where they live), else its name alone."""
    target = Path(path)
    if not target.is_absolute():
        return target.as_posix()
    base = Path(folder).resolve()
    try:
        common = Path(os.path.commonpath([target, base]))
    except ValueError:  # another drive
        return target.name
    if common == Path(common.anchor) or common in Path.home().resolve().parents:
        return target.name
    return Path(os.path.relpath(target, base)).as_posix()


def weights_entry(model: dict, mode: str) -> dict:
    """A recorded model dict ({'id': ...}): a local folder or file gains `local` and its sha256; in portable mode its
    id becomes its name. Hub repo ids and built-in models stay as they are."""
    ident = model.get("id")
    if not isinstance(ident, str) or ident.startswith(BUILTIN) or not is_local(ident):
        return model
    path = local_path(ident)
    if not path.exists():
        return model
    entry = {**model, "local": True, "sha256": weights_sha256(path)}
    if path.is_file():
        entry["size"] = path.stat().st_size
    if mode != "full":
        entry["id"] = path.name
    return entry


def map_record(record: dict, image: Callable[[str], str], weights: Callable[[dict, str], dict]) -> dict:
    """The record with every input image path passed through `image` and every model dict through
    `weights(model, flag)` (the flag that names it on the command line)."""
    out = dict(record)
    if isinstance(record.get("model"), dict):
        model = weights(record["model"], "--model")
        if isinstance(model.get("config"), dict):  # a single file's architecture: a folder or repo
            model = {**model, "config": weights(model["config"], "--config")}
        out["model"] = model
    for adapter in ADAPTERS:
        if record.get(adapter.name):
            out[adapter.name] = adapter.map_paths(record[adapter.name], image, weights)
    runtime = record.get("runtime")
    if isinstance(runtime, dict) and isinstance(runtime.get("quantize"), str):  # a GGUF transformer file's path
        out["runtime"] = {**runtime, "quantize": map_files(runtime["quantize"], image)}
    return out


def for_writing(record: dict, mode: str, folder: Path) -> dict:
    """The record as written beside an image in `folder`, in metadata mode `mode` (full or portable)."""
    image = (lambda p: p) if mode == "full" else (lambda p: portable_path(p, folder))
    out = map_record(record, image, lambda model, _flag: weights_entry(model, mode))
    batch = record.get("batch")
    if mode != "full" and isinstance(batch, dict) and batch.get("source") not in (None, STDIN):
        out["batch"] = {**batch, "source": source_path(batch["source"], mode, folder)}
    return out


def source_path(source: str, mode: str, folder: Path) -> str:
    """A prompt file's path as a record or manifest names it."""
    if mode == "full" or source == STDIN:
        return source
    return portable_path(os.path.abspath(os.path.expanduser(source)), folder)


def private_text(text: str, mode: str) -> str:
    """A message (a failed job's error) as a manifest keeps it: outside full mode, the home folder reads as ~."""
    home = str(Path.home())
    return text if mode == "full" or len(home) < 2 else text.replace(home, "~")


def for_replay(record: dict, folder: Path) -> dict:
    """The record with its relative input paths made absolute against its own folder."""
    def image(path: str) -> str:
        return path if os.path.isabs(path) else str((folder / path).resolve())

    return map_record(record, image, lambda model, _flag: model)


def weights_of(record: dict) -> list[tuple[str, dict]]:
    """(flag, model dict) for every model, net, adapter and encoder the record names, main model first."""
    found: list[tuple[str, dict]] = []

    def collect(model: dict, flag: str) -> dict:
        found.append((flag, model))
        return model

    map_record(record, lambda p: p, collect)
    return found
