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
# Each placeholder rendered at both ends of its range: a template renders with both before any weights load, so a
# spec that only fails for some values ({index:c} is NUL at 0, {seed:c} overflows) is refused up front, not after
# an image was made. The text placeholders are slugs of at most 48 characters.
_LOW = {
    "index": 0, "seed": 0, "prompt": "x", "preset": "x", "scheduler": "x", "steps": 1, "cfg": "0",
    "width": 16, "height": 16, "model": "x", "date": "20000101",
}
_HIGH = {
    "index": 10**12, "seed": 2**63 - 1, "prompt": "x" * 48, "preset": "x" * 48, "scheduler": "x" * 48, "steps": 1000,
    "cfg": "0.0001", "width": 16384, "height": 16384, "model": "x" * 48, "date": "99991231",
}
# A file name may take 255 bytes on common file systems; keep room for "-9999", ".control-99" and ".json".
NAME_BYTES = 255 - 32
_WIDE = re.compile(r"\d{4,}|[3-9]\d\d|2[6-9]\d|25[6-9]")  # a width or precision over 255 in a format spec


def slug(text: str, limit: int = 48) -> str:
    """A lowercase, file-name-safe slug."""
    text = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return text[:limit].rstrip("-") or "x"


def check_template(template: str) -> None:
    """Refuse unknown placeholders, bad format specs and names that would leave the output folder, or that some seed
    or index could not turn into a file name."""
    try:
        parts = [(f, spec) for _, f, spec, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        raise UsageError(f"--name {template!r}: {exc}") from None
    for name, spec in parts:
        if name not in PLACEHOLDERS:
            raise UsageError(
                f"--name {template!r}: unknown placeholder {{{name}}}; valid: "
                + ", ".join("{" + p + "}" for p in PLACEHOLDERS)
            )
        if "{" in (spec or ""):
            raise UsageError(f"--name {template!r}: a placeholder inside a format spec is not supported")
        if _WIDE.search(spec or ""):
            raise UsageError(f"--name {template!r}: format spec {{{name}:{spec}}} is wider than a file name "
                             f"({NAME_BYTES} bytes)")
    for sample in (_LOW, _HIGH):
        render_name(template, sample)


def _check_relative(rendered: str, template: str) -> None:
    parts = re.split(r"[\\/]", rendered)
    if (
        rendered.startswith(("/", "\\", "~"))
        or re.match(r"^[A-Za-z]:", rendered)
        or any(p in ("..", ".", "") for p in parts)
    ):
        raise UsageError(f"--name {template!r}: the name must stay inside --out (no absolute path, '..' or empty part)")
    if bad := next((c for c in rendered if ord(c) < 32 or ord(c) == 127), None):
        raise UsageError(f"--name {template!r}: makes a file name holding control character {bad!r}")
    if long := next((p for p in parts if len(p.encode()) > NAME_BYTES), None):
        raise UsageError(f"--name {template!r}: makes a file name of {len(long.encode())} bytes; at most "
                         f"{NAME_BYTES} are allowed")


def check_out_dir(out_dir: Path, label: str = "--out") -> None:
    """Refuse an output folder that is a file or cannot be written (read-only, no permission), before any model
    loads; nothing is created here."""
    existing = out_dir
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        what = "is a file, not a folder" if existing == out_dir else f"{existing} is a file, not a folder"
        raise UsageError(f"{label} {out_dir}: {what}")
    try:
        read_only = bool(os.statvfs(existing).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):  # no statvfs (Windows): the access check below still runs
        read_only = False
    if read_only or not os.access(existing, os.W_OK | os.X_OK):
        why = "a read-only file system" if read_only else "no permission to write"
        raise UsageError(f"{label} {out_dir}: cannot write there ({why} at {existing})")


def check_inside(out_dir: Path, name: str) -> Path:
    """The folder `name` lands in, refused when a symbolic link on the way leads out of out_dir (names are already
    free of '..' and absolute parts; links are the remaining way out)."""
    root = out_dir.resolve()
    folder = (out_dir / name).parent
    real = folder.resolve()  # follows every link that exists so far; the parts still to create are kept as named
    if real != root and root not in real.parents:
        raise UsageError(f"--name {name!r}: {folder} leads out of {out_dir} through a symbolic link; "
                         f"imagegen writes only inside --out")
    return folder


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
    if not os.path.lexists(path):  # a dangling link counts as taken: writing through it would land outside
        return path
    for number in range(2, limit):
        candidate = numbered(number)
        if not os.path.lexists(candidate):
            return candidate
    raise RunError(f"{path}: no free name after {limit} tries")


def render_name(template: str, values: dict) -> str:
    """The file name a template makes from these values, or a one-line UsageError."""
    try:
        name = template.format(**values)
    except (ValueError, TypeError, KeyError, IndexError, OverflowError) as exc:
        raise UsageError(f"--name {template!r}: {exc}") from None
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


def file_mode() -> int:
    """What open() gives a new file under the process umask: 0644 under umask 022."""
    try:  # Linux states it; reading it this way leaves the umask alone for the writer thread
        with open("/proc/self/status", encoding="ascii") as status:
            mask = next(int(line.split()[1], 8) for line in status if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        mask = os.umask(0)  # elsewhere the only way to read it is to set it; put it straight back
        os.umask(mask)
    return 0o666 & ~mask


def _temp_with(folder: Path, data: bytes, suffix: str) -> Path:
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".imagegen-", suffix=suffix + ".tmp")
    if hasattr(os, "fchmod"):
        os.fchmod(fd, file_mode())  # mkstemp makes 0600 files; outputs follow the umask like any other CLI's
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
        if os.path.lexists(final):
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
    write_new_bytes(path, (json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode())


def write_new_bytes(path: Path, data: bytes) -> None:
    """Write a file atomically, refusing to replace anything at that name (a file, or a link that would lead out)."""
    tmp = _temp_with(path.parent, data, path.suffix)
    try:
        if not _place(tmp, path):
            raise RunError(f"{path}: appeared while writing; not overwritten")
    finally:
        if tmp.exists():
            tmp.unlink()


def _png_bytes(image, info=None) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def _write_extra(path: Path, data: bytes) -> None:
    """A derived image (no metadata): written atomically; one left from an earlier image of this name is replaced."""
    tmp = _temp_with(path.parent, data, ".png")
    os.replace(tmp, path)


@dataclass(frozen=True)
class Encoded:
    """An image encoded for writing: the PNG file's bytes (metadata chunks included), its sidecar's record, and its
    extras' PNGs. Encoding is the costly part of a write, so it can happen where the image was made (a Ray worker)
    and only the placing where the files go."""

    png: bytes
    sha256: str  # of the PNG file
    record: dict | None  # the sidecar's record (None: pixels only)
    extras: tuple[tuple[str, bytes], ...] = ()  # (label, PNG) for <stem>.<label>.png
    encode_s: float = 0.0


def encode_image(image, *, parameters: str | None, record: dict | None,
                 extras: list[tuple[str, object]] | None = None) -> Encoded:
    """The PNG of `image` with its A1111 `parameters` and JSON `record` chunks, and its extras' PNGs."""
    from PIL.PngImagePlugin import PngInfo

    start = time.perf_counter()
    info = None
    if record is not None:
        info = PngInfo()
        if parameters is not None:
            info.add_text("parameters", parameters)
        info.add_text("imagegen", json.dumps(record, ensure_ascii=True, allow_nan=False))
    data = _png_bytes(image, info)
    return Encoded(png=data, sha256=hashlib.sha256(data).hexdigest(), record=record,
                   extras=tuple((label, _png_bytes(extra)) for label, extra in extras or ()),
                   encode_s=time.perf_counter() - start)


def place_image(encoded: Encoded, out_dir: Path, name: str) -> Written:
    """Write `<name>.png` (+ `<name>.json`) atomically; an existing name gets a -1, -2, ... suffix, never replaced."""
    start = time.perf_counter()
    target = out_dir / name
    folder = check_inside(out_dir, name)
    record = encoded.record
    try:
        folder.mkdir(parents=True, exist_ok=True)
        check_inside(out_dir, name)  # a link swapped in while the folders were made
        tmp = _temp_with(folder, encoded.png, ".png")
        try:
            for attempt in range(10_000):
                stem = target.name if attempt == 0 else f"{target.name}-{attempt}"
                png, sidecar = folder / f"{stem}.png", folder / f"{stem}.json"
                if record is not None and os.path.lexists(sidecar):
                    continue
                if _place(tmp, png):
                    break
            else:
                raise RunError(f"{target}: no free file name after 10000 tries")
        finally:
            if tmp.exists():
                tmp.unlink()
        written_extras = []
        for label, extra in encoded.extras:
            written_extras.append(folder / f"{png.stem}.{label}.png")
            _write_extra(written_extras[-1], extra)
        if record is not None:
            data = sidecar_data(record, png.name, encoded.sha256,
                                save_s=encoded.encode_s + time.perf_counter() - start)
            if written_extras:
                data["output"]["control_maps"] = [p.name for p in written_extras]
            write_new(sidecar, data)
        _fsync_dir(folder)
    except OSError as exc:
        raise RunError(f"cannot write to {folder}: {exc.strerror or exc}") from exc
    return Written(png=png, sidecar=sidecar if record is not None else None, sha256=encoded.sha256,
                   save_s=encoded.encode_s + time.perf_counter() - start, extras=tuple(written_extras))


def write_image(image, out_dir: Path, name: str, *, parameters: str | None, record: dict | None,
                extras: list[tuple[str, object]] | None = None) -> Written:
    """Write `<name>.png` (+ `<name>.json`) atomically; an existing name gets a -1, -2, ... suffix, never replaced."""
    check_inside(out_dir, name)  # before the encoding: a name that leads out is refused as before
    return place_image(encode_image(image, parameters=parameters, record=record, extras=extras), out_dir, name)
