"""--vae: a VAE in place of the model's own (A1111's "SD VAE"), from a .safetensors file in the original or diffusers
layout (diffusers' from_single_file, with the model's own VAE config), a diffusers VAE folder or a hub repo. It is
swapped into the loaded pipeline and swapped back for requests without it; A1111's `VAE` and `VAE hash` record it."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..checkpoints import read_header, weights_format
from ..errors import RunError, UsageError
from ..fields import MODEL, Field, name
from ..hashes import weights_sha256
from ..hub import canonical_weights, is_file, load_error, resolved_revision, split_revision
from .base import Adapter, ResolveContext, pinned

FIELDS = (
    Field("vae", name, (str,), "A VAE in place of the model's (A1111's SD VAE): a .safetensors file (original or "
          "diffusers layout), a diffusers VAE folder, or a hub repo ORG/NAME[@REV] (its vae/ folder if it has one).",
          path="weights", metavar="FILE_OR_REPO", panel=MODEL),
)
# A VAE's tensors: the encoder and decoder, bare (a VAE file) or under a checkpoint's VAE prefix.
_VAE_KEYS = re.compile(r"^(first_stage_model\.|vae\.)?(encoder|decoder)\.")
_ORIGINAL = "vae:original"  # where the model's own VAE waits in LoadedModel.cache while another is swapped in


@dataclass(frozen=True)
class VaeSpec:
    source: str  # a file or folder (absolute) or a repo id
    revision: str | None
    sha256: str | None  # of a local file or folder
    record: dict = field(default_factory=dict, compare=False, hash=False)


class Vae(Adapter):
    name = "vae"
    fields = FIELDS
    in_place = True
    record_shape = {"model": {"id": str}}

    def resolve(self, given: dict, ctx: ResolveContext) -> VaeSpec | None:
        """The VAE found and, for a file, its header checked to be a VAE; no weights load."""
        source = given.get("vae")
        if source is None:
            return None
        revision = None
        if is_file(source):
            path = Path(os.path.expanduser(source))
            if not path.is_file():
                raise UsageError(f"--vae {source}: no such file")
            weights_format(str(path), "--vae")
            if not any(_VAE_KEYS.match(k) for k in read_header(path, "--vae").tensors):
                raise UsageError(f"--vae {source}: not a VAE (no encoder or decoder tensors in its header)")
            source = str(path.resolve())
        else:
            source, revision = split_revision(source)
            source = canonical_weights(source, "--vae")
        sha = weights_sha256(source) if os.path.exists(source) else None
        model = {"id": source, "revision": resolved_revision(source, revision) if sha is None else None}
        if sha:
            model["sha256"] = sha
        return VaeSpec(source, revision, sha, {"model": model, "name": Path(source).name})

    def key(self, spec: VaeSpec) -> tuple:
        return (spec.source, spec.revision, spec.sha256)

    def apply(self, pipe, spec: VaeSpec, loaded) -> None:
        own = loaded.cache.setdefault(_ORIGINAL, pipe.vae)
        try:
            vae = _load(type(own), spec, own, loaded)
        except Exception as exc:
            raise _error(spec, exc) from exc
        pipe.vae = vae.to(device=own.device, dtype=own.dtype).eval()

    def remove(self, pipe, loaded) -> None:
        pipe.vae = loaded.cache.pop(_ORIGINAL)

    def hash_value(self, spec: VaeSpec) -> Any:
        return spec.sha256 or pinned({"id": spec.source, "revision": spec.record["model"].get("revision")})

    def a1111(self, part: dict) -> dict[str, str]:
        out = {"VAE": part.get("name") or Path(part["model"]["id"]).name}
        if part["model"].get("sha256"):
            out["VAE hash"] = part["model"]["sha256"][:10]  # A1111: the first 10 hex of the file's sha256
        return out

    def replay(self, part: dict) -> dict:
        return {"vae": pinned(part["model"])} if part else {}

    def map_paths(self, part: dict, image, weights) -> dict:
        return {**part, "model": weights(part["model"], "--vae")}


def _load(cls, spec: VaeSpec, own, loaded):
    """The VAE: a file converted by diffusers with the model's own VAE config (its scaling factor stays the
    model's, as in A1111); a folder or repo with from_pretrained (its vae/ subfolder when it has no config.json)."""
    if os.path.isfile(spec.source):
        folder = _config_folder(own, loaded)
        return cls.from_single_file(spec.source, config=str(folder), dtype=own.dtype)
    subfolder = None
    if os.path.isdir(spec.source):
        subfolder = None if os.path.isfile(os.path.join(spec.source, "config.json")) else "vae"
        return cls.from_pretrained(spec.source, subfolder=subfolder, dtype=own.dtype, use_safetensors=True)
    try:
        return cls.from_pretrained(spec.source, revision=spec.revision, dtype=own.dtype, use_safetensors=True)
    except OSError:  # a pipeline repo: its VAE is in vae/
        return cls.from_pretrained(spec.source, subfolder="vae", revision=spec.revision, dtype=own.dtype,
                                   use_safetensors=True)


def _config_folder(own, loaded) -> Path:
    """A folder holding the model's own VAE config, which from_single_file reads as `config=`."""
    from ..paths import config_dir

    import hashlib
    import json

    digest = hashlib.sha256(json.dumps(dict(own.config), sort_keys=True, default=str).encode()).hexdigest()[:16]
    folder = config_dir() / "cache" / "vae-configs" / digest
    if not (folder / "config.json").is_file():
        own.save_config(str(folder))
    return folder


def _error(spec: VaeSpec, exc: Exception) -> Exception:
    if not os.path.exists(spec.source):
        return load_error(spec.source, spec.revision, exc, flag="--vae")
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return RunError(f"--vae {Path(spec.source).name}: does not fit this model's VAE ({first})")
