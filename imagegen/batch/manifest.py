"""The batch manifest: one JSON line per finished or failed image, appended only after its files are in place.

Each process of a run appends to its own shard (`manifest.jsonl`, `manifest.1.jsonl`, ...); a resume reads them all.
A line is written with one `write` on an O_APPEND descriptor and fsynced, so a kill leaves at worst a torn last line,
which reading ignores and the next append starts after.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from ..errors import RunError, UsageError
from ..hashes import digest as file_sha256  # output files: hashed fresh each time, never cached

MANIFEST = "manifest.jsonl"
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def _link_message(path: Path) -> str:
    return (f"{path}: is a symbolic link; imagegen writes only inside --out and does not follow it (remove the link, "
            f"or use another --out)")


def _inside(value, out_dir: Path) -> bool:
    """A path a manifest line names: relative, without '..', and inside out_dir once links are followed."""
    if not isinstance(value, str) or not value or os.path.isabs(value) or ".." in value.replace("\\", "/").split("/"):
        return False
    root = out_dir.resolve()
    real = (out_dir / value).resolve()
    return root in real.parents


def request_hash(req, seed: int) -> str:
    """A short stable hash of one image's recipe (the request with this image's seed): the field table's hashed
    fields and each adapter's content, absent when unused (so plain requests hash as before adapters existed)."""
    values = req.hash_values(seed)
    blob = json.dumps(values, sort_keys=True, ensure_ascii=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def shard_name(rank: int) -> str:
    return MANIFEST if rank == 0 else f"manifest.{rank}.jsonl"


@dataclass(frozen=True)
class Entry:
    """One manifest line about one image: done (with its files) or failed (with the error)."""

    status: str  # "done" or "failed"
    key: str  # "<job>/<image>"
    hash: str
    data: dict


def read_manifest(out_dir: Path) -> tuple[list[dict], dict[str, list[Entry]]]:
    """Run headers, and every entry per image across every shard, in file order within a shard."""
    runs: list[dict] = []
    entries: dict[str, list[Entry]] = {}
    if not out_dir.is_dir():
        return runs, entries
    for shard in sorted(out_dir.glob("manifest*.jsonl")):
        if shard.is_symlink():
            raise UsageError(_link_message(shard))
        if not shard.is_file():  # a FIFO would block the read forever
            raise UsageError(f"{shard}: not a regular file; a batch manifest must be one (move it away)")
        try:
            lines = shard.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError as exc:
            raise RunError(f"{shard}: cannot read the manifest: {exc.strerror or exc}") from exc
        for raw in lines:
            try:
                data = json.loads(raw)
            except ValueError:
                continue  # a line torn by a kill: its image is checked on disk instead
            if not isinstance(data, dict):
                continue
            if data.get("type") == "run":
                runs.append(data)
            # A line naming a file outside the folder was not written by imagegen: it is ignored, never followed.
            elif data.get("type") in ("done", "failed") and isinstance(data.get("key"), str) and all(
                    _inside(data[k], out_dir) for k in ("png", "sidecar") if data.get(k) is not None):
                entry = Entry(status=data["type"], key=data["key"], hash=str(data.get("hash")), data=data)
                entries.setdefault(entry.key, []).append(entry)
    runs.sort(key=lambda r: r.get("started", ""))
    return runs, entries


class ManifestWriter:
    """Appends lines to this process's shard; safe to call from the writer thread and the main thread."""

    def __init__(self, out_dir: Path, rank: int = 0):
        self.path = out_dir / shard_name(rank)
        self._lock = threading.Lock()
        self._fd = None
        out_dir.mkdir(parents=True, exist_ok=True)
        try:
            # O_NOFOLLOW: a manifest swapped for a link would make the run append to a file outside --out.
            self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | _NOFOLLOW, 0o666)
            self._exclusive()
            size = os.fstat(self._fd).st_size
            if size and os.pread(self._fd, 1, size - 1) != b"\n":  # a torn last line: end it so the next stands alone
                os.write(self._fd, b"\n")
        except OSError as exc:
            if self.path.is_symlink():
                raise UsageError(_link_message(self.path)) from None
            raise RunError(f"{self.path}: cannot write the manifest: {exc.strerror or exc}") from exc

    def _exclusive(self) -> None:
        """One writer per shard: a second batch on the same folder would make the same images twice."""
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks here
            return
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._fd)
            self._fd = None
            raise UsageError(
                f"{self.path.parent}: another imagegen batch is writing to this folder; wait for it, or use another --out"
            ) from None

    def append(self, data: dict) -> None:
        line = (json.dumps(data, ensure_ascii=False, allow_nan=False) + "\n").encode()
        with self._lock:
            try:
                os.write(self._fd, line)
                os.fsync(self._fd)
            except OSError as exc:
                raise RunError(f"{self.path}: cannot append to the manifest: {exc.strerror or exc}") from exc

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
