"""Where imagegen finds things on disk: built-in presets, the user's config directory, the default output folder."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

from .errors import UsageError

MB = 1 << 20

PACKAGE_DIR = Path(__file__).resolve().parent


def config_dir() -> Path:
    """The user's imagegen directory: $IMAGEGEN_HOME, else the platform's config location."""
    if home := os.environ.get("IMAGEGEN_HOME"):
        return Path(home).expanduser()
    if sys.platform == "win32":
        base = Path(os.environ.get("APPDATA") or Path.home() / "AppData" / "Roaming")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "imagegen"


def user_presets_dir() -> Path:
    """User presets: `<config dir>/presets/*.toml`; they override built-ins of the same name."""
    return config_dir() / "presets"


def builtin_presets_dir() -> Path:
    """The presets shipped with imagegen: inside the wheel, or the repo's top-level presets/ in a source checkout."""
    inside = PACKAGE_DIR / "presets"
    return inside if inside.is_dir() else PACKAGE_DIR.parent / "presets"


def read_regular(path: str | os.PathLike, *, label: str, limit: int) -> bytes:
    """The bytes of a regular file of at most `limit` bytes. A FIFO or device (which could block or never end) and an
    oversized file are refused in one line starting with `label`; a missing or unreadable one raises OSError."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # opening a FIFO must not wait for a writer
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UsageError(f"{label}: not a regular file")
        if info.st_size > limit:
            data = b""
        else:
            data = f.read(info.st_size + 1)  # sized by the file: read(limit) would allocate the whole limit
    if info.st_size > limit or len(data) > limit:
        raise UsageError(f"{label}: larger than {limit // MB} MB; this is not a file imagegen reads")
    return data
