"""Where imagegen finds things on disk: built-in presets, the user's config directory, the default output folder."""

from __future__ import annotations

import os
import sys
from pathlib import Path

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
