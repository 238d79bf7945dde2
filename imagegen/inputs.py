"""Input images (control maps, IP-Adapter references): checked and hashed before any model loads, read once."""

from __future__ import annotations

import hashlib
import os
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


def load_rgb(image: InputImage):
    """The image as RGB pixels; refuses a file that changed since it was checked."""
    from PIL import Image

    data = Path(image.path).read_bytes() if os.path.exists(image.path) else None
    if data is None or hashlib.sha256(data).hexdigest() != image.sha256:
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
