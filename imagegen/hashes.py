"""Content hashes of local weights (A1111's precedent: the whole file's sha256, computed once and cached): a file's
sha256, and a folder's over its files, cached on disk by (absolute path, size, mtime_ns). The cache also remembers
where each hashed folder is, so a record that names it by name and hash (portable metadata) replays on this machine;
the cache stays in the user's directory and never enters a record."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from pathlib import Path

from .paths import config_dir

CACHE_NAME = "sha256.json"
_WHERE = "where:"  # cache keys of hashed weights' locations: where:<sha256> -> absolute path
_lock = threading.Lock()
_memory: dict[str, dict] = {}  # cache file -> its entries, read once per process


def _cache_file() -> Path:
    return config_dir() / "cache" / CACHE_NAME


def _entries(cache: Path) -> dict:
    key = str(cache)
    if key not in _memory:
        try:
            data = json.loads(cache.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = {}
        _memory[key] = data if isinstance(data, dict) else {}
    return _memory[key]


def _save(cache: Path, entries: dict) -> None:
    """Write the cache atomically; a cache that cannot be written only costs a rehash next time."""
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache.parent, prefix=".sha256-", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(entries, f)
        os.replace(tmp, cache)
    except OSError:
        pass


def digest(path: str | Path) -> str:
    """The sha256 of a file's bytes, read in 1 MB chunks (no cache: for files imagegen writes itself)."""
    state = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            state.update(chunk)
    return state.hexdigest()


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file's bytes, computed once per (absolute path, size, mtime_ns) and kept in the user cache."""
    return _cached("", path, digest)


def _cached(kind: str, path: str | Path, compute) -> str:
    """compute(path), cached by (kind, absolute path, size, mtime_ns)."""
    path = Path(path).resolve()
    stat = path.stat()
    key = f"{kind}{path}|{stat.st_size}|{stat.st_mtime_ns}"
    cache = _cache_file()
    with _lock:
        entries = _entries(cache)
        if isinstance(entries.get(key), str):
            return entries[key]
    sha = compute(path)
    with _lock:
        entries[key] = sha
        _save(cache, entries)
    return sha


def weights_sha256(path: str | Path) -> str:
    """A weight file's or folder's sha256 (see _folder_sha256), remembered with where it is (find_weights)."""
    path = Path(path).resolve()
    sha = _folder_sha256(path) if path.is_dir() else file_sha256(path)
    cache = _cache_file()
    with _lock:
        entries = _entries(cache)
        if entries.get(_WHERE + sha) != str(path):
            entries[_WHERE + sha] = str(path)
            _save(cache, entries)
    return sha


def find_weights(sha256: str | None) -> Path | None:
    """The folder or file on this machine last hashed to `sha256`, if it is still there and unchanged."""
    if not sha256:
        return None
    with _lock:
        where = _entries(_cache_file()).get(_WHERE + sha256)
    if not isinstance(where, str) or not Path(where).exists():
        return None
    return Path(where) if weights_sha256(where) == sha256 else None


def _folder_sha256(path: Path) -> str:
    """The sha256 of a folder's sorted (relative path, file sha256) lines, hidden files and folders (.cache, .git)
    left out."""
    lines = []
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith("."):
                full = Path(root, name)
                lines.append(f"{full.relative_to(path).as_posix()}\0{file_sha256(full)}\n")
    return hashlib.sha256("".join(sorted(lines)).encode()).hexdigest()


def tensors_sha256(path: str | Path) -> str:
    """The sha256 of a .safetensors file's tensor data, its JSON header left out: what A1111 and kohya's
    additional-networks call the LoRA hash and civitai lists as AutoV3 (the first 12 hex digits). Cached like
    file_sha256."""
    return _cached("tensors|", path, _tensors_digest)


def _tensors_digest(path: Path) -> str:
    state = hashlib.sha256()
    with open(path, "rb") as f:
        header = int.from_bytes(f.read(8), "little")
        f.seek(8 + header)
        for chunk in iter(lambda: f.read(1 << 20), b""):
            state.update(chunk)
    return state.hexdigest()
