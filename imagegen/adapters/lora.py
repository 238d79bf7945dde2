"""LoRA: `--lora PATH_OR_REPO[:SCALE]` and A1111's `<lora:NAME:SCALE>` prompt tags, checked from the file's header
before anything loads, loaded into the pipeline with diffusers' own loader (which converts kohya/A1111 and the Flux
variants), one named adapter each with its scale (set_adapters), and unloaded for requests without them. Weights are
never fused, so unloading leaves the base weights bit-identical."""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import RunError, UsageError
from ..families import FAMILIES
from ..fields import Field, name, names, number
from ..hashes import file_sha256, tensors_sha256
from ..prompts import extract_tags, lora_tags
from .base import Adapter, ResolveContext
from .networks import (NetworkField, find_named, first_line, locate, lora_dirs, quiet_loading, read_header,
                       source_of, split_scale)

TAG_KINDS = ("lora", "lyco")  # A1111 reads <lyco:...> as a LoRA too


class _LoraField(NetworkField):
    split = staticmethod(split_scale)


FIELDS = (
    _LoraField("lora", names, (str, list), "A LoRA (.safetensors): a file, a hub ORG/NAME (its "
               "pytorch_lora_weights.safetensors) or ORG/NAME/FILE.safetensors, with :SCALE (default 1). Repeat for "
               "several. <lora:NAME:SCALE> in the prompt loads NAME from --lora-dir.", path="weights",
               metavar="PATH|REPO[:SCALE]", repeat=True),
    Field("lora_dir", name, (str,), "Folder <lora:NAME> tags are found in (then $IMAGEGEN_LORA_DIR, then the config "
          "folder's loras/); embeddings named in the prompt are found in the 'embeddings' folder beside it.",
          line=False, metavar="DIR"),
    Field("lora_scale", number(-10.0, 10.0), (int, float), "Every LoRA's scale, over the tags' and --lora's own "
          "(compare's --lora-scales sets it per cell).", metavar="FLOAT"),
)


@dataclass(frozen=True)
class LoraItem:
    """One LoRA of a request."""

    name: str  # as A1111's `Lora hashes` names it: the tag's name, else the file's stem
    path: str  # the local file (a hub file is in the HF cache)
    model: dict = field(compare=False, hash=False)  # {"id": path or repo, "revision", "weight"}: how it is recorded
    scale: float = 1.0
    origin: str = "flag"  # or "prompt"
    sha256: str = ""
    autov3: str = ""  # sha256 of the tensor data (A1111's LoRA hash)


@dataclass(frozen=True)
class LoraSpec:
    items: tuple[LoraItem, ...]
    record: dict = field(default_factory=dict, compare=False, hash=False)


def _item(source: str, scale: float, origin: str, flag: str, family, widths: tuple,
          label: str | None = None) -> LoraItem:
    path, model = locate(source, flag)
    keys = read_header(path, flag)
    _check_fit(keys, family, f"{flag} {source}")
    _check_widths(keys, widths, f"{flag} {source}")
    return LoraItem(name=label or path.stem, path=str(path), model=model, scale=scale, origin=origin,
                    sha256=file_sha256(path), autov3=tensors_sha256(path))


def _check_fit(keys: dict, family, where: str) -> None:
    """The header must show a LoRA of the request's family (tensor names, in a layout diffusers converts)."""
    if family.lora_fits(keys):
        return
    if family.lora_unread and any(re.match(family.lora_unread[0], k) for k in keys):
        raise UsageError(f"{where}: {family.lora_unread[1]}")
    if family.lora_keys is None:
        raise UsageError(f"{where}: {family.name} models take no LoRA in diffusers")
    others = [f.label for f in FAMILIES.values() if f is not family and f.lora_fits(keys)]
    if others:
        raise UsageError(f"{where}: a LoRA for {' or '.join(others)} models, not for this {family.label} model")
    sample = next(iter(keys), "(no tensors)")
    raise UsageError(f"{where}: not a LoRA diffusers can load into {family.label} models (no tensor names it "
                     f"reads; the first is {sample!r})")


def _check_widths(keys: dict, widths: tuple, where: str) -> None:
    """Layers the model's configs fix the input width of must take that width in the LoRA too."""
    for pattern, width in widths:
        for key, shape in keys.items():
            if re.match(pattern, key) and len(shape) == 2 and shape[1] != width:
                raise UsageError(f"{where}: made for another base model ({key} takes {shape[1]}-wide inputs; this "
                                 f"model's take {width})")


def _from_tags(prompt: str, explicit: list[tuple[str, float | None]], given: dict) -> list[tuple]:
    """(source, scale, name) for each <lora:> tag; a tag naming a --lora file's stem is that file."""
    stems = {Path(source).stem.lower(): i for i, (source, _) in enumerate(explicit)}
    found, seen = [], set()
    try:
        tags = lora_tags(prompt)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    for tag_name, scale in tags:
        where = f"<lora:{tag_name}>"
        if tag_name.lower() in seen:
            raise UsageError(f"{where}: named twice in the prompt; keep one tag")
        seen.add(tag_name.lower())
        scale = 1.0 if scale is None else scale
        if tag_name.lower() in stems:
            index = stems[tag_name.lower()]
            explicit[index] = (explicit[index][0], scale)  # the tag's scale: it is what the prompt says
            continue
        found.append((str(find_named(tag_name, lora_dirs(given.get("lora_dir")), "LoRA", where)), scale, tag_name))
    return found


class Lora(Adapter):
    name = "lora"
    fields = FIELDS
    in_place = True
    record_shape = {"loras": [{"name": str, "model": {"id": str}, "scale": (int, float), "sha256": str}]}
    needs_main = False  # a <lora:> tag turns it on as well as --lora
    panel = "LoRA and embeddings"

    def resolve(self, given: dict, ctx: ResolveContext) -> LoraSpec | None:
        """Every LoRA found, its header checked against the family and its hashes taken: no weights load."""
        explicit = [split_scale(s) for s in given.get("lora") or ()]
        tagged = []
        if given.get("prompt_syntax", "a1111") == "a1111":
            _check_tags(given)
            tagged = _from_tags(given["prompt"], explicit, given)
        if not explicit and not tagged:
            if given.get("lora_scale") is not None:
                raise UsageError("--lora-scale needs a LoRA (--lora PATH or a <lora:NAME> tag in the prompt)")
            return None
        override = given.get("lora_scale")
        widths = ctx.model.lora_widths if ctx.model is not None else ()
        items = [_item(source, override if override is not None else (1.0 if scale is None else scale), "flag",
                       "--lora", ctx.family, widths) for source, scale in explicit]
        items += [_item(source, override if override is not None else scale, "prompt", f"<lora:{label}>",
                        ctx.family, widths, label) for source, scale, label in tagged]
        seen: dict[str, str] = {}
        for item in items:
            if item.sha256 in seen:
                raise UsageError(f"--lora {item.name}: the same file as {seen[item.sha256]}; name it once")
            seen[item.sha256] = item.name
        spec = LoraSpec(items=tuple(items))
        spec.record.update(_record(spec))
        return spec

    def key(self, spec: LoraSpec) -> tuple:
        return tuple(item.sha256 for item in spec.items)

    def apply(self, pipe, spec: LoraSpec, loaded) -> None:
        # Not fused (fuse_lora): unfusing subtracts the delta again, which leaves the base weights a rounding error
        # away from where they were; unloading peft's layers leaves them untouched. Not hotswapped either: diffusers
        # refuses hotswap for text-encoder LoRAs after swapping the denoiser, and it only saves a recompile.
        for index, item in enumerate(spec.items):
            try:
                with quiet_loading():
                    pipe.load_lora_weights(str(Path(item.path).parent), weight_name=Path(item.path).name,
                                           adapter_name=_adapter(index))
                problem = None if any(_adapter(index) in names for names in pipe.get_list_adapters().values()) \
                    else "no tensor in it matched a layer of this model"
            except Exception as exc:
                problem = first_line(exc)
            if problem:
                with contextlib.suppress(Exception):
                    pipe.unload_lora_weights()
                raise RunError(f"--lora {item.name}: its weights do not fit this model ({problem})")
        self.update(pipe, spec)

    def update(self, pipe, spec: LoraSpec) -> None:
        pipe.set_adapters([_adapter(i) for i in range(len(spec.items))], [item.scale for item in spec.items])

    def remove(self, pipe, loaded) -> None:
        pipe.unload_lora_weights()

    def hash_value(self, spec: LoraSpec) -> Any:
        return [[item.sha256, item.scale] for item in spec.items]

    def a1111(self, part: dict) -> dict[str, str]:
        # A1111 1.10 writes `Lora hashes: "name: <first 12 hex of the tensor-data sha256>, ..."`, which civitai reads
        hashes = ", ".join(f"{i['name']}: {i['autov3'][:12]}" for i in part["loras"] if i.get("autov3"))
        return {"Lora hashes": hashes} if hashes else {}

    def replay(self, part: dict) -> dict:
        if not part:
            return {}
        return {"lora": [f"{source_of(item['model'])}:{item['scale']!r}" for item in part["loras"]]}

    def map_paths(self, part: dict, image, weights) -> dict:
        return {**part, "loras": [{**item, "model": weights({**item["model"], "sha256": item["sha256"]}, "--lora")}
                                  for item in part["loras"]]}


def _adapter(index: int) -> str:
    # peft's load report matches adapter names as substrings of parameter names: this one is in none
    return f"imagegen_lora_{index}"


def _check_tags(given: dict) -> None:
    """Extra-network tags imagegen does not load are refused, not silently dropped; tags belong in the prompt."""
    for tag in extract_tags(given["prompt"])[1]:
        if tag.kind not in TAG_KINDS:
            raise UsageError(f"{tag.text}: imagegen reads <lora:NAME:SCALE> tags only (A1111's {tag.kind} networks "
                             f"are not supported); remove it from the prompt")
    if extract_tags(given.get("negative") or "")[1]:
        raise UsageError(f"--negative: {extract_tags(given['negative'])[1][0].text}: extra-network tags belong in "
                         f"the prompt")


def _record(spec: LoraSpec) -> dict:
    return {"loras": [{"name": i.name, "model": dict(i.model), "scale": i.scale, "from": i.origin, "sha256": i.sha256,
                       "autov3": i.autov3} for i in spec.items]}
