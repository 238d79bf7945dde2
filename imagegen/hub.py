"""Where weights come from, for every loader: local folders, built-in models, the Hugging Face cache and hub; resolved
revisions; and one-line explanations of why something cannot be loaded."""

from __future__ import annotations

import json
import os
import re
from functools import lru_cache
from pathlib import Path

from .errors import RunError, UsageError
from .paths import MB, read_regular

BUILTIN = "builtin:"
# Weight files --model may name (imagegen.checkpoints loads the first two and explains the others).
FILE_SUFFIXES = (".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin", ".gguf")
_SHA = re.compile(r"[0-9a-f]{40}")


def builtin_models() -> dict[str, Path]:
    """Models shipped inside the package, by the name that follows ``builtin:``."""
    return {"demo": Path(__file__).resolve().parent / "demo" / "model"}


def is_local(model: str) -> bool:
    """A folder, file (or built-in model) rather than a hub repo id."""
    return (model.startswith((".", "/", "~", BUILTIN)) or os.path.exists(os.path.expanduser(model))
            or model.lower().endswith(FILE_SUFFIXES))


def is_file(model: str) -> bool:
    """A single weights file (a checkpoint) rather than a folder, built-in model or repo id."""
    return is_local(model) and not model.startswith(BUILTIN) and (
        os.path.isfile(os.path.expanduser(model)) or model.lower().endswith(FILE_SUFFIXES))


def local_path(model: str) -> Path:
    """The folder of a local or built-in model."""
    if model.startswith(BUILTIN):
        name = model[len(BUILTIN):]
        models = builtin_models()
        if name not in models:
            raise UsageError(f"--model {model}: no such built-in model; choose from "
                             f"{', '.join(BUILTIN + n for n in sorted(models))}")
        return models[name]
    return Path(model).expanduser()


def read_json(path: str | Path) -> dict | None:
    """The JSON in a file, or None if it is missing or unreadable."""
    try:
        data = json.loads(read_regular(path, label=str(path), limit=16 * MB).decode("utf-8"))
    except (OSError, ValueError, UsageError):  # missing, unreadable, not JSON, or not a plain file of config size
        return None
    return data if isinstance(data, dict) else None


def cached_file(repo: str, filename: str, revision: str | None, *, network: bool = False) -> Path | None:
    """A hub repo's file from the HF cache (and, with network=True, the hub unless offline); None if unavailable."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.utils import logging as hub_logging

    hub_logging.set_verbosity_error()  # its retry warnings would break the one-line error promise
    for local_only in (True, False):
        if not local_only and (not network or constants.HF_HUB_OFFLINE):
            break
        try:
            return Path(hf_hub_download(repo, filename, revision=revision, local_files_only=local_only))
        except Exception:  # not cached, or no network: loading fetches it or explains why it cannot
            continue
    return None


def split_revision(model: str) -> tuple[str, str | None]:
    """'org/net@rev' -> ('org/net', 'rev'); a local folder is taken whole (its name may hold '@')."""
    if "@" in model and not os.path.isdir(os.path.expanduser(model)):
        name, _, revision = model.rpartition("@")
        if name and revision:
            return name, revision
    return model, None


def canonical_weights(model: str, flag: str) -> str:
    """A local folder as an absolute path; a hub repo id as given."""
    expanded = os.path.expanduser(model)
    if model.startswith((".", "/", "~")) or os.path.isdir(expanded):
        if not os.path.isdir(expanded):
            raise UsageError(f"{flag} {model}: no such folder")
        return str(Path(expanded).resolve())
    if model.count("/") != 1:
        raise UsageError(f"{flag} {model}: no such folder, and not a hub repo id (org/name)")
    return model


@lru_cache(maxsize=256)
def resolved_revision(model: str, revision: str | None) -> str | None:
    """The commit sha of a hub model's snapshot in the cache (looked up once per process); None for a local folder."""
    if is_local(model):
        return None
    if revision and _SHA.fullmatch(revision):
        return revision
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model, revision=revision, local_files_only=True)).name
    except Exception:
        return revision


def _causes(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def load_error(model: str, revision: str | None, exc: Exception, *, flag: str = "--model") -> Exception:
    """Turn a from_pretrained failure into a one-line ImagegenError saying what to do; `flag` names the option."""
    from huggingface_hub import errors as hub

    chain = list(_causes(exc))
    text = " ".join(str(e) for e in chain)
    at = f"{model}" + (f"@{revision}" if revision else "")
    if any(isinstance(e, hub.GatedRepoError) for e in chain) or "gated" in text.lower():
        return RunError(
            f"{at} is a gated repo: accept its licence at https://huggingface.co/{model} "
            f"and log in with `hf auth login` (or set HF_TOKEN), then run again"
        )
    if any(isinstance(e, hub.RevisionNotFoundError) for e in chain):
        return UsageError(f"--revision {revision}: {model} has no such revision")
    pickle_only = not is_local(model) or any(local_path(model).rglob("*.bin"))
    if pickle_only and "safetensors" in text and any(s in text for s in ("Could not find", "use_safetensors", "no file named")):
        return RunError(
            f"{at} has no safetensors weights (only pickle .bin files, which can run arbitrary code when loaded); "
            f"imagegen loads safetensors only: convert it (diffusers' convert scripts or `safetensors` "
            f"convert) or use a safetensors copy"
        )
    if any(isinstance(e, hub.RepositoryNotFoundError) for e in chain):
        return UsageError(f"{flag} {model}: no such model on the Hugging Face hub (or it is private: log in)")
    offline = (
        any(isinstance(e, (hub.LocalEntryNotFoundError, hub.OfflineModeIsEnabled, ConnectionError)) for e in chain)
        or "not fully cached" in text
        or "cached" in text and "offline" in text
    )
    if offline and not is_local(model):
        return RunError(not_cached_message(model, revision))
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if is_local(model):
        return RunError(f"{flag} {model}: cannot load this folder: {first}")
    return RunError(f"{at}: cannot load: {first}")


def not_cached_message(model: str, revision: str | None) -> str:
    """What to do about a hub model that is neither cached nor downloadable."""
    from huggingface_hub import constants

    at = f"{model}" + (f"@{revision}" if revision else "")
    return (
        f"{at} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and the hub cannot be reached"
        f"{' (HF_HUB_OFFLINE is set)' if os.environ.get('HF_HUB_OFFLINE') else ''}: download it on a "
        f"connected machine with `hf download {model}` and copy the cache, or pass --model DIR "
        f"(or try the built-in demo model, which needs no download: --preset demo)"
    )
