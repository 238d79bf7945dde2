"""Strict checks of a record read back (a PNG chunk or a sidecar someone may have edited): every key a replay reads
has the right type, nested parts included, so a bad value is one line naming the file and the key, never a crash."""

from __future__ import annotations

from typing import Any

from .adapters import ADAPTERS
from .errors import UsageError
from .fields import MAX_SEED

SCHEMA = "imagegen/1"
_TEXT = (str, type(None))
_NUMBER = (int, float)
_WORDS = {str: "a string", int: "an integer", float: "a number", bool: "true or false", dict: "an object",
          list: "a list", type(None): "null"}

# What a replay reads. A type (or tuple of types) is checked with isinstance (a bool is never a number); a dict holds
# the keys of an object (a key whose types include None may be missing); a one-item list is a list of that shape.
RECORD_SHAPE = {
    "mode": _TEXT, "prompt": str, "negative": str, "prompt_syntax": _TEXT, "seed": int, "steps": int, "cfg": _NUMBER, "guidance": (int, float, type(None)),
    "width": int, "height": int,
    "scheduler": {"name": str},
    "model": {"id": str, "revision": _TEXT, "variant": _TEXT, "family": _TEXT, "preset": _TEXT,
              "sha256": _TEXT, "local": (bool, type(None))},
    "runtime": {"dtype": str, "device": str},
}


def _expected(kind) -> str:
    if isinstance(kind, dict):
        return "an object"
    if isinstance(kind, list):
        return "a list"
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(_WORDS[k] for k in kinds if not (k is int and float in kinds))


def _fits(value, kind) -> bool:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool):
        return bool in kinds
    return isinstance(value, kinds)


def check_shape(value: Any, shape: Any, key: str, where: str) -> None:
    """Raise a one-line UsageError naming `where` and the dotted key where `value` does not fit `shape`."""
    if isinstance(shape, dict):
        if not isinstance(value, dict):
            raise UsageError(_wrong(where, key or "(top level)", value, "an object"))
        for name, inner in shape.items():
            sub = f"{key}.{name}" if key else name
            if name not in value:
                if isinstance(inner, tuple) and type(None) in inner:
                    continue
                raise UsageError(f"{where}: metadata lacks {sub} ({_expected(inner)})")
            check_shape(value[name], inner, sub, where)
    elif isinstance(shape, list):
        if not isinstance(value, list) or not value:
            raise UsageError(_wrong(where, key, value, "a non-empty list"))
        for i, item in enumerate(value):
            check_shape(item, shape[0], f"{key}[{i}]", where)
    elif not _fits(value, shape):
        raise UsageError(_wrong(where, key, value, _expected(shape)))


def _wrong(where: str, key: str, value: Any, expected: str) -> str:
    kind = type(value).__name__
    return f"{where}: metadata {key!r} has the wrong type ({kind}): expected {expected}, got {_shown(value)}"


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_record(record: Any, where: str) -> None:
    """Strictly check a record read back: schema version, and every field a replay reads (adapters' parts too)."""
    if not isinstance(record, dict):
        raise UsageError(f"{where}: metadata is not a JSON object")
    if record.get("schema") != SCHEMA:
        raise UsageError(f"{where}: schema {_shown(record.get('schema'))} is not supported; this imagegen reads "
                         f"{SCHEMA!r}")
    check_shape(record, RECORD_SHAPE, "", where)
    if not 0 <= record["seed"] <= MAX_SEED:
        raise UsageError(f"{where}: metadata 'seed' must be from 0 to {MAX_SEED}, got {record['seed']}")
    for adapter in ADAPTERS:
        part = record.get(adapter.name)
        if part is not None and part != [] and adapter.record_shape is not None:
            check_shape(part, adapter.record_shape, adapter.name, where)


def sidecar_image_name(record: dict, where: str) -> str | None:
    """The sidecar's `output.file`: a file name in the sidecar's own folder (no separator, '..' or NUL), or None."""
    output = record.get("output")
    if output is None:
        return None
    if not isinstance(output, dict):
        raise UsageError(f"{where}: metadata 'output' must be an object, got {_shown(output)}")
    name = output.get("file")
    if name is None:
        return None
    if (not isinstance(name, str) or name in ("", ".", "..") or any(c in name for c in "/\\\0")
            or (len(name) > 1 and name[1] == ":")):
        raise UsageError(f"{where}: metadata 'output.file' must be a file name in the sidecar's folder (no path), "
                         f"got {_shown(name)}")
    return name
