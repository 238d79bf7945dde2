"""Textual-inversion embeddings: `--embedding PATH[:TOKEN]`, and, as in A1111, an embedding file's name written in the
prompt or negative prompt (found in the `embeddings` folder beside the LoRA folder). Loaded with diffusers'
load_textual_inversion into every CLIP encoder the family has (SDXL files hold one tensor per encoder), and unloaded
for requests without them."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import RunError, UsageError
from ..fields import names
from ..hashes import file_sha256
from .base import Adapter, ResolveContext
from .networks import (NetworkField, embedding_dirs, first_line, listing, locate, quiet_loading, read_header,
                       refuse_pickle, source_of)

A1111_KEYS = ("emb_params", "string_to_param")  # A1111's single-encoder layouts


class _EmbeddingField(NetworkField):
    split = staticmethod(lambda text: split_token(text))


FIELDS = (
    _EmbeddingField("embedding", names, (str, list), "A textual-inversion embedding (.safetensors, A1111 or diffusers "
                    "layout) and the word that calls it in the prompt (default: the file's own token, else its "
                    "name). Repeat for several. Names of files in the embeddings folder beside --lora-dir work "
                    "without it.", path="weights", metavar="PATH[:TOKEN]", repeat=True),
)


def split_token(text: str) -> tuple[str, str | None]:
    """'cat.safetensors:<cat>' -> ('cat.safetensors', '<cat>')."""
    head, sep, tail = text.rpartition(":")
    if sep and head.lower().endswith(".safetensors") and tail.strip() and "/" not in tail:
        return head, tail.strip()
    return text, None


@dataclass(frozen=True)
class EmbeddingItem:
    token: str
    path: str
    model: dict = field(compare=False, hash=False)
    origin: str = "flag"  # or "prompt"
    sha256: str = ""


@dataclass(frozen=True)
class EmbeddingSpec:
    items: tuple[EmbeddingItem, ...]
    record: dict = field(default_factory=dict, compare=False, hash=False)


def _word(token: str) -> re.Pattern:
    return re.compile(rf"(?<![\w-]){re.escape(token)}(?![\w-])", re.IGNORECASE)


def _item(source: str, token: str | None, origin: str, family, flag: str) -> EmbeddingItem:
    path, model = locate(source, flag)
    keys = read_header(path, flag)
    wanted = set(family.embedding_keys) - {""}
    if wanted and not wanted <= set(keys):
        raise UsageError(f"{flag} {source}: {family.label} embeddings hold {' and '.join(sorted(wanted))} tensors "
                         f"(one per text encoder); this file has {', '.join(sorted(keys)) or 'none'}")
    if not wanted and {"clip_l", "clip_g"} & set(keys):
        raise UsageError(f"{flag} {source}: an SDXL embedding (clip_l and clip_g tensors), not a {family.label} one")
    if token is None:
        own = [k for k in keys if k not in A1111_KEYS and k not in ("clip_l", "clip_g")]
        token = own[0] if len(own) == 1 and len(keys) == 1 else path.stem
    return EmbeddingItem(token=token, path=str(path), model=model, origin=origin, sha256=file_sha256(path))


class Embedding(Adapter):
    name = "embedding"
    fields = FIELDS
    in_place = True
    needs_main = False  # a name in the prompt turns it on too
    panel = "LoRA and embeddings"
    record_shape = {"embeddings": [{"token": str, "model": {"id": str}, "sha256": str}]}

    def resolve(self, given: dict, ctx: ResolveContext) -> EmbeddingSpec | None:
        family = ctx.family
        explicit = [split_token(s) for s in given.get("embedding") or ()]
        if explicit and not family.embedding_keys:
            raise UsageError(f"--embedding: {family.name} pipelines take no textual-inversion embeddings in diffusers")
        items = [_item(source, token, "flag", family, "--embedding") for source, token in explicit]
        if family.embedding_keys and given.get("prompt_syntax", "a1111") == "a1111":
            items += self._named(given, family, {i.token.lower() for i in items})
        if not items:
            return None
        spec = EmbeddingSpec(items=tuple(items))
        spec.record["embeddings"] = [{"token": i.token, "model": dict(i.model), "from": i.origin, "sha256": i.sha256}
                                     for i in items]
        return spec

    def _named(self, given: dict, family, taken: set[str]) -> list[EmbeddingItem]:
        """Embeddings whose file name appears as a word in the prompt or negative prompt (A1111's rule)."""
        text = f"{given.get('prompt') or ''}\n{given.get('negative') or ''}"
        found = []
        for folder in embedding_dirs(given.get("lora_dir")):
            for stem, files in listing(folder).items():
                if stem in taken or not _word(stem).search(text):
                    continue
                refuse_pickle(str(files[0]), f"embedding {stem!r} in the prompt:")
                found.append(_item(str(files[0]), files[0].stem, "prompt", family, f"embedding {stem!r}:"))
                taken.add(stem)
        return found

    def key(self, spec: EmbeddingSpec) -> tuple:
        return tuple((item.sha256, item.token) for item in spec.items)

    def apply(self, pipe, spec: EmbeddingSpec, loaded) -> None:
        from safetensors.torch import load_file

        for item in spec.items:
            state = load_file(item.path)
            try:
                with quiet_loading():
                    for key, (tokenizer, encoder) in loaded.family.embedding_keys.items():
                        pipe.load_textual_inversion(state if key == "" else state[key], token=item.token,
                                                    tokenizer=getattr(pipe, tokenizer),
                                                    text_encoder=getattr(pipe, encoder))
            except Exception as exc:
                self.remove(pipe, loaded)
                raise RunError(f"--embedding {Path(item.path).name}: cannot be loaded into this model "
                               f"({first_line(exc)})") from exc

    def remove(self, pipe, loaded) -> None:
        for tokenizer, encoder in loaded.family.embedding_keys.values():
            pipe.unload_textual_inversion(tokenizer=getattr(pipe, tokenizer), text_encoder=getattr(pipe, encoder))

    def prompt_text(self, spec: EmbeddingSpec, text: str) -> str:
        for item in spec.items:
            text = _word(item.token).sub(lambda _m, t=item.token: t, text)
        return text

    def hash_value(self, spec: EmbeddingSpec) -> Any:
        return [[item.sha256, item.token] for item in spec.items]

    def a1111(self, part: dict) -> dict[str, str]:
        # A1111 1.10: `TI hashes: "name: <first 12 hex of the file's sha256>, ..."`
        return {"TI hashes": ", ".join(f"{i['token']}: {i['sha256'][:12]}" for i in part["embeddings"])}

    def replay(self, part: dict) -> dict:
        if not part:
            return {}
        return {"embedding": [f"{source_of(i['model'])}:{i['token']}" for i in part["embeddings"]]}

    def map_paths(self, part: dict, image, weights) -> dict:
        return {**part, "embeddings": [{**i, "model": weights({**i["model"], "sha256": i["sha256"]}, "--embedding")}
                                       for i in part["embeddings"]]}

