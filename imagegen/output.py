"""Where images and sidecars are written: file-name templates, no overwrites, atomic writes."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import string
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import RunError, UsageError

PLACEHOLDERS = {
    "index": "running number in the output folder (use {index:04d} for zero padding)",
    "seed": "the image's seed",
    "prompt": "the prompt, shortened to a file-name-safe slug",
    "preset": "the preset name",
    "scheduler": "the scheduler slug, e.g. dpmpp_2m_karras",
    "steps": "the step count",
    "cfg": "the CFG scale",
    "width": "the image width",
    "height": "the image height",
    "model": "the model's last path component",
    "date": "today as YYYYMMDD",
}
_SAMPLE = {
    "index": 1, "seed": 1, "prompt": "p", "preset": "p", "scheduler": "s", "steps": 1, "cfg": 1.0,
    "width": 1, "height": 1, "model": "m", "date": "20000101",
}


def slug(text: str, limit: int = 48) -> str:
    """A lowercase, file-name-safe slug."""
    text = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return text[:limit].rstrip("-") or "x"


def check_template(template: str) -> None:
    """Refuse unknown placeholders, bad format specs and names that would leave the output folder."""
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        raise UsageError(f"--name {template!r}: {exc}") from None
    for name in fields:
        if name not in PLACEHOLDERS:
            raise UsageError(
                f"--name {template!r}: unknown placeholder {{{name}}}; valid: "
                + ", ".join("{" + p + "}" for p in PLACEHOLDERS)
            )
    try:
        rendered = template.format(**_SAMPLE)
    except (ValueError, KeyError, IndexError) as exc:
        raise UsageError(f"--name {template!r}: {exc}") from None
    _check_relative(rendered, template)


def _check_relative(rendered: str, template: str) -> None:
    parts = re.split(r"[\\/]", rendered)
    if (
        rendered.startswith(("/", "\\", "~"))
        or re.match(r"^[A-Za-z]:", rendered)
        or any(p in ("..", ".", "") for p in parts)
    ):
        raise UsageError(f"--name {template!r}: the name must stay inside --out (no absolute path, '..' or empty part)")


def next_index(out_dir: Path) -> int:
    """One past the highest leading number among the folder's PNG names (A1111's running counter)."""
    highest = -1
    if out_dir.is_dir():
        for path in out_dir.glob("*.png"):
            if m := re.match(r"(\d+)", path.name):
                highest = max(highest, int(m.group(1)))
    return highest + 1


def first_free(path: Path, numbered, *, limit: int = 10_000) -> Path:
    """`path` if nothing is there, else the first free `numbered(n)` for n = 2, 3, ...: nothing is ever replaced."""
    if not path.exists():
        return path
    for number in range(2, limit):
        candidate = numbered(number)
        if not candidate.exists():
            return candidate
    raise RunError(f"{path}: no free name after {limit} tries")


def render_name(template: str, values: dict) -> str:
    name = template.format(**values)
    _check_relative(name, template)
    return name


def pixels_sha256(image) -> str:
    """A hash of the decoded pixels (mode, size and bytes), independent of PNG encoding and metadata."""
    digest = hashlib.sha256(f"{image.mode}:{image.width}x{image.height}:".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class Written:
    png: Path
    sidecar: Path | None
    sha256: str  # of the PNG file
    save_s: float
    extras: tuple[Path, ...] = ()  # <stem>.control.png and the like


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _temp_with(folder: Path, data: bytes, suffix: str) -> Path:
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".imagegen-", suffix=suffix + ".tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return Path(tmp)


def _place(tmp: Path, final: Path) -> bool:
    """Move tmp to final atomically unless final exists; False if it does."""
    try:
        os.link(tmp, final)  # atomic, and never replaces an existing file
    except FileExistsError:
        return False
    except OSError:  # a filesystem without hard links: check, then rename
        if final.exists():
            return False
        os.replace(tmp, final)
        return True
    tmp.unlink()
    return True


def sidecar_data(record: dict, png_name: str, sha256: str, *, save_s: float | None) -> dict:
    """The JSON sidecar: the PNG's record plus the file it describes and that file's hash."""
    timings = dict(record.get("timings", {}))
    if save_s is not None:
        timings["save_s"] = round(save_s, 4)
    return {**record, "timings": timings, "output": {"file": png_name, "sha256": sha256, **record.get("output", {})}}


def write_new(path: Path, data: dict) -> None:
    """Write a JSON file atomically, refusing to replace one that exists."""
    text = json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    tmp = _temp_with(path.parent, text.encode(), ".json")
    try:
        if not _place(tmp, path):
            raise RunError(f"{path}: appeared while writing; not overwritten")
    finally:
        if tmp.exists():
            tmp.unlink()


def _write_extra(path: Path, image) -> None:
    """A derived image (no metadata): written atomically; one left from an earlier image of this name is replaced."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    tmp = _temp_with(path.parent, buffer.getvalue(), ".png")
    os.replace(tmp, path)


def write_image(image, out_dir: Path, name: str, *, parameters: str | None, record: dict | None,
                extras: list[tuple[str, object]] | None = None) -> Written:
    """Write `<name>.png` (+ `<name>.json`) atomically; an existing name gets a -1, -2, ... suffix, never replaced."""
    from PIL.PngImagePlugin import PngInfo

    start = time.perf_counter()
    target = out_dir / name
    folder = target.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        info = None
        if record is not None:
            info = PngInfo()
            if parameters is not None:
                info.add_text("parameters", parameters)
            info.add_text("imagegen", json.dumps(record, ensure_ascii=True, allow_nan=False))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", pnginfo=info)
        data = buffer.getvalue()
        sha = hashlib.sha256(data).hexdigest()
        tmp = _temp_with(folder, data, ".png")
        try:
            for attempt in range(10_000):
                stem = target.name if attempt == 0 else f"{target.name}-{attempt}"
                png, sidecar = folder / f"{stem}.png", folder / f"{stem}.json"
                if record is not None and sidecar.exists():
                    continue
                if _place(tmp, png):
                    break
            else:
                raise RunError(f"{target}: no free file name after 10000 tries")
        finally:
            if tmp.exists():
                tmp.unlink()
        written_extras = []
        for label, extra in extras or ():
            written_extras.append(folder / f"{png.stem}.{label}.png")
            _write_extra(written_extras[-1], extra)
        if record is not None:
            data = sidecar_data(record, png.name, sha, save_s=time.perf_counter() - start)
            if written_extras:
                data["output"]["control_maps"] = [p.name for p in written_extras]
            write_new(sidecar, data)
        _fsync_dir(folder)
    except OSError as exc:
        raise RunError(f"cannot write to {folder}: {exc.strerror or exc}") from exc
    return Written(png=png, sidecar=sidecar if record is not None else None, sha256=sha,
                   save_s=time.perf_counter() - start, extras=tuple(written_extras))
