"""Model families: one module each (sdxl.py, sd3.py, ...), each exporting FAMILY, an object of the Family protocol
(families/base.py). A module dropped in this folder is a family; listings show them oldest first."""

from __future__ import annotations

import importlib
import pkgutil

from ..errors import UsageError, closest
from .base import TEXT2IMAGE, Family


def _discover() -> dict[str, Family]:
    found = []
    for module in pkgutil.iter_modules(__path__):
        if module.name != "base" and not module.name.startswith("_"):  # "_name": a helper of some families
            found.append(importlib.import_module(f"{__name__}.{module.name}").FAMILY)
    return {f.name: f for f in sorted(found, key=lambda f: (f.released, f.name))}


FAMILIES: dict[str, Family] = _discover()


def get_family(name: str, *, where: str = "family") -> Family:
    """The family called `name`, or a UsageError listing the known ones."""
    try:
        return FAMILIES[name.lower()]
    except KeyError:
        raise UsageError(
            f"{where}: unknown model family {name!r}{closest(name, FAMILIES)}; known: {', '.join(FAMILIES)}"
        ) from None


def family_of_pipeline(class_name) -> Family | None:
    """The family whose model folders declare this pipeline class in model_index.json."""
    if not isinstance(class_name, str):  # a hostile or broken model_index.json
        return None
    return next((f for f in FAMILIES.values() if class_name in f.declared_by()), None)


def cfg_help_text() -> str:
    """One paragraph for `--help`: what --cfg does on each family."""
    groups: dict[str, list[str]] = {}
    for family in FAMILIES.values():
        groups.setdefault(family.cfg_help, []).append(family.name)
    return ". ".join(f"{_and(names)}: {text}" for text, names in groups.items())


def _and(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


__all__ = ["FAMILIES", "TEXT2IMAGE", "Family", "cfg_help_text", "family_of_pipeline", "get_family"]
