"""Input images (control maps, IP-Adapter references): checked and hashed before any model loads, read once."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from .errors import UsageError
from .paths import MB, read_regular

MAX_IMAGE_MB = 512  # a map or reference image; PIL's decompression-bomb limit caps the pixels themselves


@dataclass(frozen=True)
class InputImage:
    """An image file the user gave, fixed by its content hash so a recipe can prove it used the same one."""

    path: str  # absolute
    sha256: str  # of the file's bytes
    width: int
    height: int

    def record(self) -> dict:
        return {"path": self.path, "sha256": self.sha256, "size": [self.width, self.height]}


def check_image(path: str, *, label: str) -> InputImage:
    """The image at `path` (relative to the working folder), opened and hashed; a one-line error starts with `label`
    (the flag and value, e.g. '--control canny:edges.png')."""
    resolved = Path(path).expanduser()
    if not resolved.is_absolute():
        resolved = Path.cwd() / resolved
    try:
        stat = resolved.stat()
    except FileNotFoundError:
        raise UsageError(f"{label}: no such file") from None
    except OSError as exc:
        raise UsageError(f"{label}: cannot read it ({exc.strerror or exc})") from None
    if resolved.is_dir():
        raise UsageError(f"{label}: is a folder, not an image")
    return _checked(str(resolved.resolve()), stat.st_size, stat.st_mtime_ns, label)


@lru_cache(maxsize=4096)
def _checked(path: str, size: int, mtime_ns: int, label: str) -> InputImage:
    """Cached by path, size and modification time: a batch naming one map on 5,000 lines reads it once."""
    from PIL import Image

    try:
        data = read_regular(path, label=label, limit=MAX_IMAGE_MB * MB)
    except OSError as exc:
        raise UsageError(f"{label}: cannot read it ({exc.strerror or exc})") from None
    try:
        import io

        with Image.open(io.BytesIO(data)) as im:
            im.load()  # decode fully: a truncated file fails here, not halfway through a batch
            width, height = im.size
    except Exception as exc:  # noqa: BLE001 - PIL's decoders raise many types (SyntaxError, struct.error, ...)
        raise UsageError(f"{label}: {image_problem(exc)}") from None
    return InputImage(path=path, sha256=hashlib.sha256(data).hexdigest(), width=width, height=height)


def read_image(path: str | Path, *, label: str):
    """A PIL image of a regular file, fully decoded; a one-line UsageError starting with `label` otherwise."""
    import io

    from PIL import Image

    try:
        data = read_regular(path, label=label, limit=MAX_IMAGE_MB * MB)
    except OSError as exc:
        raise UsageError(f"{label}: cannot read it ({exc.strerror or exc})") from None
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except Exception as exc:  # noqa: BLE001 - PIL's decoders raise many types (SyntaxError, struct.error, ...)
        raise UsageError(f"{label}: {image_problem(exc)}") from None
    return image


def image_problem(exc: Exception) -> str:
    """Why PIL could not read an image, without its internals (a BytesIO's repr, a decoder's class)."""
    from PIL import UnidentifiedImageError

    if isinstance(exc, UnidentifiedImageError):
        return "not an image file PIL can read (PNG, JPEG, WebP, BMP, TIFF, ...)"
    text = re.sub(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>", "", " ".join(str(exc).split())) or type(exc).__name__
    return f"not a readable image ({text})"


# Input images' bytes by sha256, for a batch worker on another machine: the driver sends the ones each micro-batch
# needs with it (inputs need no shared filesystem, like outputs), replacing the last micro-batch's.
_CARRIED: dict[str, bytes] = {}


def carry(files: dict[str, bytes]) -> None:
    """Read these images (by sha256) from memory where their files are not here as they were checked."""
    _CARRIED.clear()
    _CARRIED.update(files)


def bytes_of(image: InputImage) -> bytes | None:
    """The file's bytes, if it is still the one that was checked (else None)."""
    try:
        data = Path(image.path).read_bytes()
    except OSError:
        return None
    return data if hashlib.sha256(data).hexdigest() == image.sha256 else None


def images_in(value, seen: set[int] | None = None) -> list[InputImage]:
    """Every InputImage inside a value: a request's adapter specs (dataclasses, tuples, lists, dicts)."""
    import dataclasses

    seen = set() if seen is None else seen
    if isinstance(value, InputImage):
        return [value]
    if id(value) in seen or isinstance(value, (str, bytes, int, float, type(None))):
        return []
    seen.add(id(value))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        children = [getattr(value, f.name) for f in dataclasses.fields(value)]
    elif isinstance(value, dict):
        children = list(value.values())
    elif isinstance(value, (list, tuple, set, frozenset)):
        children = list(value)
    else:
        return []
    return [image for child in children for image in images_in(child, seen)]


def load_rgb(image: InputImage):
    """The image as RGB pixels; refuses a file that changed since it was checked."""
    from PIL import Image

    data = bytes_of(image) or _CARRIED.get(image.sha256)
    if data is None:
        raise UsageError(f"{image.path}: changed or removed since it was checked (sha256 {image.sha256[:12]}...)")
    import io

    with Image.open(io.BytesIO(data)) as im:
        return im.convert("RGB")


def fit(image, width: int, height: int):
    """Scale to cover width x height, then centre-crop (A1111's 'Crop and Resize'): no stretching."""
    from PIL import Image

    if image.size == (width, height):
        return image
    scale = max(width / image.width, height / image.height)
    w, h = max(width, round(image.width * scale)), max(height, round(image.height * scale))
    resized = image.resize((w, h), Image.Resampling.LANCZOS)
    left, top = (w - width) // 2, (h - height) // 2
    return resized.crop((left, top, left + width, top + height))
