"""Single-file checkpoints: the original layouts that civitai, A1111 and ComfyUI keep (one .safetensors file), told
apart by the tensor names in the file's header, without reading a weight. Each family declares its kinds
(Family.checkpoints) and which tensors belong to which pipeline component (Family.checkpoint_parts)."""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..families import FAMILIES

PICKLES = (".ckpt", ".pt", ".pth", ".bin")
HEADER_LIMIT = 100 * 2**20  # the JSON header of the largest checkpoints is a few MB
# bytes per element of the safetensors dtypes
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I64": 8, "I32": 4, "I16": 2,
               "I8": 1, "U8": 1, "BOOL": 1, "F8_E8M0": 1, "F4": 1, "U16": 2, "U32": 4, "U64": 8}


@dataclass(frozen=True)
class Header:
    """A .safetensors file's header: tensor name -> (dtype, shape), and its __metadata__."""

    tensors: dict[str, tuple[str, tuple[int, ...]]]
    metadata: dict


@dataclass(frozen=True)
class Part:
    """What one pipeline component weighs in a file."""

    tensors: int
    parameters: int
    bytes: int
    dtypes: tuple[str, ...]


@dataclass(frozen=True)
class Checkpoint:
    """A single-file checkpoint: its family and kind (from the header), and the components it holds."""

    path: Path
    size: int
    family: Any  # imagegen.families.Family
    kind: Any  # imagegen.families.base.Checkpoint
    components: dict[str, Part]
    metadata: dict = field(default_factory=dict)
    other: Part | None = None  # tensors of no component (EMA copies, training leftovers): never loaded

    @property
    def name(self) -> str:
        """A1111's `Model:` for it: the file name without its extension."""
        return self.path.stem


def weights_format(path: str, flag: str) -> None:
    """Refuse, in one line, a file imagegen does not load: pickle (runs code when loaded), GGUF, anything else."""
    lower = path.lower()
    if lower.endswith(".safetensors"):
        return
    if lower.endswith(".sft"):  # diffusers picks its reader by extension, and would take .sft for a pickle
        raise UsageError(f"{flag} {path}: a safetensors file under BFL's .sft extension, which diffusers does not "
                         f"read as one; rename it to .safetensors")
    if lower.endswith(PICKLES):
        raise UsageError(f"{flag} {path}: a pickle file, which can run arbitrary code when loaded; imagegen loads "
                         f".safetensors only (convert it with the safetensors library, or download the .safetensors "
                         f"version)")
    if lower.endswith(".gguf"):
        raise UsageError(f"{flag} {path}: a GGUF file, which loads as a quantized transformer with "
                         f"`--quantize gguf:FILE` beside the --preset or --model it belongs to, not as --model")
    raise UsageError(f"{flag} {path}: not a .safetensors file (nor a diffusers folder); imagegen loads .safetensors "
                     f"checkpoints, diffusers folders and hub repo ids")


def read_header(path: str | Path, flag: str) -> Header:
    """The tensor names, dtypes and shapes from a .safetensors file's JSON header alone (no tensor is read)."""
    try:
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            if not 2 <= size <= HEADER_LIMIT:
                raise ValueError("header size out of range")
            header = json.loads(f.read(size))
    except (OSError, ValueError, RecursionError) as exc:
        raise UsageError(f"{flag} {path}: not a readable .safetensors file ({exc})") from None
    if not isinstance(header, dict):
        raise UsageError(f"{flag} {path}: not a readable .safetensors file (its header is not an object)")
    tensors = {k: (str(v.get("dtype")), tuple(v.get("shape") or ())) for k, v in header.items()
               if k != "__metadata__" and isinstance(v, dict)}
    metadata = header.get("__metadata__")
    return Header(tensors, metadata if isinstance(metadata, dict) else {})


def _matches(kind, tensors: dict) -> bool:
    names = list(tensors)
    for pattern in kind.keys:
        if not any(re.search(pattern, n) for n in names):
            return False
    if any(re.search(pattern, n) for pattern in kind.absent for n in names):
        return False
    for pattern, dim, size in kind.shapes:
        shapes = [shape for n, (_, shape) in tensors.items() if re.search(pattern, n)]
        if not shapes or any(len(s) <= dim or s[dim] != size for s in shapes):
            return False
    return True


def detect(tensors: dict) -> list[tuple[Any, Any]]:
    """(family, kind) for each family whose checkpoints the tensor names match (its most specific kind)."""
    found = []
    for family in FAMILIES.values():
        kind = next((k for k in family.checkpoints if _matches(k, tensors)), None)
        if kind is not None:
            found.append((family, kind))
    return found


def _unknown(tensors: dict, found: list) -> str:
    """Why a file's family cannot be told, and the way out."""
    names = list(tensors)
    if names and all(re.match(r"^(lora_|lycoris_)|.*\.(lora_(up|down|A|B)|alpha|hada_w1_a)", n) for n in names):
        return "a LoRA, not a model; load it with --lora (or a <lora:NAME:SCALE> tag)"
    if names and all(re.match(r"^(encoder|decoder|quant_conv|post_quant_conv)\.", n) for n in names):
        return "a VAE alone, not a model; give it with --vae"
    kinds = ", ".join(sorted({k.name for f in FAMILIES.values() for k in f.checkpoints}))
    what = "match several families" if found else "match none of the checkpoint layouts imagegen knows"
    return (f"cannot tell which model it is (its tensor names {what}: {kinds}); name it with --preset NAME, or give "
            f"its architecture with --config DIR_OR_REPO")


def parts(family, tensors: dict) -> tuple[dict[str, Part], Part | None]:
    """The pipeline components the file holds (by the family's tensor-name prefixes), and the leftover tensors."""
    groups: dict[str, list] = {}
    for name, (dtype, shape) in tensors.items():
        owner = next((c for c, p in family.checkpoint_parts.items() if re.search(p, name)), "")
        groups.setdefault(owner, []).append((dtype, shape))

    def part(items) -> Part:
        count = sum(math.prod(shape) for _, shape in items)
        size = sum(math.prod(shape) * DTYPE_BYTES.get(dtype, 0) for dtype, shape in items)
        return Part(len(items), count, size, tuple(sorted({d for d, _ in items})))

    other = groups.pop("", None)
    ordered = {c: part(groups[c]) for c in family.checkpoint_parts if c in groups}
    return ordered, part(other) if other else None


def inspect_checkpoint(path: str | Path, flag: str = "--model", family=None) -> Checkpoint:
    """Family, kind and components of a .safetensors checkpoint, from its header; `family` (known from --config or
    --preset) stands in when the names alone cannot tell. Refuses in one line what it cannot identify."""
    path = Path(os.path.expanduser(str(path)))
    if not path.is_file():
        raise UsageError(f"{flag} {path}: no such file")
    weights_format(str(path), flag)
    stat = path.stat()
    return _inspect(str(path.resolve()), stat.st_size, stat.st_mtime_ns, flag, family.name if family else None)


@lru_cache(maxsize=32)
def _inspect(path: str, size: int, mtime: int, flag: str, family_name: str | None) -> Checkpoint:
    header = read_header(path, flag)
    found = detect(header.tensors)
    given = FAMILIES[family_name] if family_name else None
    if given is not None:
        if found and all(f is not given for f, _ in found):
            family, kind = found[0]
            raise UsageError(f"{flag} {path}: its tensors make it {kind.name} (family {family.name}), not "
                             f"{given.name}; leave out --config/--preset, or give {family.name} ones")
        kind = next((k for f, k in found if f is given), given.checkpoints[-1] if given.checkpoints else None)
        found = [(given, kind)]
    if len(found) != 1:
        raise UsageError(f"{flag} {path}: {_unknown(header.tensors, found)}")
    family, kind = found[0]
    components, other = parts(family, header.tensors)
    return Checkpoint(Path(path), size, family, kind, components, header.metadata, other)
