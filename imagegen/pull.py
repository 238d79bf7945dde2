"""What a preset's load reads from the hub (diffusers' own choice of files: safetensors only, its variant, the
components its pipeline takes; and its ControlNets and adapters), whether the cache holds all of it (ready offline),
and fetching exactly that, after checking the disk has room for it."""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from tqdm.std import tqdm

from .adapters.ip_adapter import WEIGHT
from .errors import RunError, UsageError
from .hub import is_local, load_error, local_path, read_json, split_revision
from .hubcache import CacheScan, hub_cache, human_size, preset_or_repo, scan_cache

# What diffusers' single-file loader fetches of a base repo: configs and tokenizer files, a few MB.
CONFIG_PATTERNS = ("**/*.json", "*.json", "*.txt", "**/*.txt", "**/*.model")
# ModelMixin.from_pretrained(use_safetensors=True) with no variant (how a ControlNet loads) reads these names: its
# SAFETENSORS_WEIGHTS_NAME, or the shards its index lists. It fetches them one by one, so diffusers has no pattern
# helper to ask; the names are diffusers' own.
MODEL_FILES = ("config.json", "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model-*-of-*.safetensors",
               "diffusion_pytorch_model.safetensors.index.json")
# The same for a transformers model in a subfolder (an IP-Adapter's image encoder), with its image processor's config.
ENCODER_FILES = ("config.json", "model.safetensors", "model-*-of-*.safetensors", "model.safetensors.index.json",
                 "preprocessor_config.json")


@dataclass(frozen=True)
class Fetch:
    """One repo's part of a load: the files it reads there (patterns), or None to let the repo's listing decide (a
    pipeline: diffusers' choice for its variant; another model: its weights and configs)."""

    repo: str
    revision: str | None
    role: str  # "model", "configs", "controlnet canny", "ip-adapter", "image encoder"
    allow: tuple[str, ...] | None = None
    variant: str | None = None
    skip: tuple[str, ...] = ()  # pipeline components the family's load passes as None (never read)


@dataclass(frozen=True)
class Pulled:
    """One repo of a pull: the commit, the files the load reads, their size and how much of it was downloaded."""

    repo: str
    role: str
    revision: str | None
    commit: str
    files: tuple[str, ...]
    size: int
    downloaded: int
    path: str = ""  # the cached snapshot, once fetched


@dataclass(frozen=True)
class PullResult:
    """What `pull` fetched, repo by repo, into which cache."""

    target: str
    cache_dir: Path
    repos: tuple[Pulled, ...]

    @property
    def downloaded(self) -> int:
        return sum(p.downloaded for p in self.repos)

    @property
    def size(self) -> int:
        return sum(p.size for p in self.repos)


def plan(target: str, *, with_control: bool = False, with_adapters: bool = False,
         configs_only: bool = False) -> tuple[Fetch, ...]:
    """The repos and files PRESET[@REV] or REPO[@REV] loads (with its ControlNets and IP-Adapter if asked), without
    touching the network."""
    repo, revision, preset = preset_or_repo(target)
    if is_local(repo):
        raise UsageError(f"{target}: its model is {repo}, a local folder; there is nothing to pull")
    same = preset is not None and preset.model == repo
    # The family's load passes some components as from_pretrained arguments (SD 1.5's safety_checker=None).
    skip = tuple(sorted(preset.family.load_kwargs)) if same else ()
    base = Fetch(repo, revision or (preset.revision if same else None), "model",
                 variant=preset.variant if same else None, skip=skip)
    fetches = [replace(base, role="configs", allow=CONFIG_PATTERNS) if configs_only else base]
    if (with_control or with_adapters) and preset is None:
        flag = "--with-control" if with_control else "--with-adapters"
        raise UsageError(f"{flag}: {target} is no preset's model, so it has no ControlNets or adapters; name a preset")
    if with_control:
        for kind, net in preset.tables.get("controlnet", {}).items():
            name, rev = split_revision(net)
            fetches.append(Fetch(name, rev, f"controlnet {kind}", allow=MODEL_FILES))
    if with_adapters and (ip := preset.tables.get("ip_adapter")):
        name, rev = split_revision(ip["model"])
        folder = f"{ip['subfolder'].strip('/')}/" if ip.get("subfolder") else ""
        fetches.append(Fetch(name, rev, "ip-adapter", allow=(folder + ip.get("weight", WEIGHT),)))
        name, rev = split_revision(ip["image_encoder"])
        folder = f"{ip['image_encoder_subfolder'].strip('/')}/" if ip.get("image_encoder_subfolder") else ""
        fetches.append(Fetch(name, rev, "image encoder", allow=tuple(folder + f for f in ENCODER_FILES)))
    return tuple(f for f in fetches if not is_local(f.repo))


def pipeline_patterns(index: dict, filenames: set[str], variant: str | None,
                      skip: tuple[str, ...] = ()) -> tuple[list[str], list[str]]:
    """The (allow, ignore) patterns of the files `from_pretrained(variant=, use_safetensors=True)` reads from a
    pipeline repo, chosen by diffusers' own helpers."""
    # DiffusionPipeline.download has no hook for a progress bar, a dry run or an endpoint, so its pattern assembly
    # (diffusers 0.42 pipeline_utils.py) is repeated here around the helpers that choose the variant and safetensors
    # files; custom component code (remote code) is left out, as imagegen never runs it.
    from diffusers.pipelines.pipeline_loading_utils import (
        _get_ignore_patterns,
        filter_model_files,
        variant_compatible_siblings,
    )
    from diffusers.schedulers.scheduling_utils import SCHEDULER_CONFIG_NAME
    from diffusers.utils import CONFIG_NAME, TRANSFORMERS_COMPONENT_AUX_FILES

    filenames = set(filenames) - set(index.get("_ignore_files", []))
    folders = [k for k, v in index.items() if isinstance(v, list) and k != "_class_name"]
    model_folders = {os.path.split(f)[0] for f in filter_model_files(filenames) if os.path.split(f)[0] in folders}
    passed = [k for k in skip if k in folders]
    ignore = _get_ignore_patterns(passed, model_folders, filenames, True, False, None, False, False, variant)
    with _quiet("diffusers.pipelines.pipeline_loading_utils"):  # "a mixture of fp16 and non-fp16 files": expected
        model_files, _ = variant_compatible_siblings(filenames, variant=variant, ignore_patterns=ignore)
    allow = [*model_files, *(f"{k}/*" for k in folders if k not in model_folders),
             *(f"{k}/config.json" for k in model_folders), SCHEDULER_CONFIG_NAME, CONFIG_NAME, "model_index.json"]
    allow = [p for p in allow if not (len(p.split("/")) == 2 and p.split("/")[0] in passed)]
    allow += TRANSFORMERS_COMPONENT_AUX_FILES
    return allow, ignore + [f"{i}.index.*json" for i in ignore]


@contextlib.contextmanager
def _quiet(name: str):
    """A library logger's warnings held back (they would break the one-line promise), its level restored after."""
    import logging

    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


_WEIGHTS = re.compile(r"(diffusion_pytorch_model|model)(?:\.(?P<v>[^.-]+))?(?:-\d{5}-of-\d{5})?\.safetensors"
                      r"|(diffusion_pytorch_model|model)\.safetensors\.index(?:\.(?P<iv>[^.]+))?\.json")


def loaded_files(index: dict, filenames: set[str], variant: str | None, skip: tuple[str, ...] = ()) -> set[str]:
    """The files from_pretrained(variant=, use_safetensors=True) reads of a pipeline repo: each component folder's
    weights in the variant where that folder has it (else plain) with its config, every file of the other folders."""
    # pipeline_patterns' choice, restated without diffusers: importing it takes torch (5 s), and `models list` must
    # answer at once. tests/test_models.py holds the two to the same files.
    out = {"model_index.json"} | (set(filenames) & {"scheduler_config.json", "config.json"})
    filenames = set(filenames) - set(index.get("_ignore_files", []))
    for name, value in index.items():
        if not (isinstance(value, list) and value and value[0]) or name in skip:
            continue
        files = {f for f in filenames if f.startswith(name + "/")}
        if not files:  # (a listing made from a partial snapshot)
            raise ValueError(f"{name}: none of its files")
        found = {f: _WEIGHTS.fullmatch(f[len(name) + 1:]) for f in files}
        weights = {f: m["v"] or m["iv"] for f, m in found.items() if m}
        if not weights:  # a tokenizer, scheduler or feature extractor: all of it
            out |= {f for f in files if not f.endswith((".bin", ".msgpack", ".onnx", ".pb"))}
            continue
        wanted = variant if variant in weights.values() else None
        out |= {f for f, v in weights.items() if v == wanted} | ({f"{name}/config.json"} & files)
    return out


def patterns(fetch: Fetch, filenames: set[str], read_index: Callable[[], dict | None],
             exact: bool = True) -> tuple[list[str], list[str]]:
    """(allow, ignore) for one repo of a load, given the repo's file list and a way to read its model_index.json;
    exact=False answers a pipeline's without diffusers (loaded_files)."""
    if fetch.allow is not None:
        return list(fetch.allow), []
    if "model_index.json" in filenames:
        index = read_index()
        if not isinstance(index, dict):
            raise RunError(f"{fetch.repo}: its model_index.json is not a readable JSON object")
        if not exact:
            return _exactly(sorted(loaded_files(index, filenames, fetch.variant, fetch.skip))), []
        return pipeline_patterns(index, filenames, fetch.variant, fetch.skip)
    if "config.json" in filenames:
        return list(MODEL_FILES), []
    return ["*.safetensors", *CONFIG_PATTERNS], []  # a repo of loose files (adapters): every safetensors file


def _expected(fetch: Fetch, filenames: set[str], read_index, exact: bool = True) -> list[str]:
    """The files of the repo this part of the load reads; refuses a repo without the safetensors weights it needs."""
    from huggingface_hub.utils import filter_repo_objects

    try:
        allow, ignore = patterns(fetch, filenames, read_index, exact)
    except (OSError, ValueError) as exc:  # diffusers: no safetensors weights, or none of the variant
        if "variant" in str(exc):
            raise RunError(f"{fetch.repo}: has no {fetch.variant} weights (variant={fetch.variant})") from exc
        raise load_error(fetch.repo, fetch.revision, exc) from exc
    chosen = sorted(filter_repo_objects(sorted(filenames), allow_patterns=allow, ignore_patterns=ignore))
    if fetch.role != "configs" and not any(f.endswith(".safetensors") for f in chosen):
        raise RunError(f"{fetch.repo}: has no safetensors weights for its {fetch.role} (looked for "
                       f"{', '.join(allow[:3])}); imagegen loads safetensors only")
    return chosen


# ---- ready offline


@dataclass(frozen=True)
class PresetStatus:
    """Whether a preset loads offline: its model, each ControlNet and its IP-Adapter (None: it has none)."""

    name: str
    model: str
    ready: bool
    controlnet: dict  # control type -> ready
    ip_adapter: bool | None
    repos: tuple[str, ...]  # every repo it loads from


@dataclass(frozen=True)
class CacheReport:
    """The cache's repos and which presets are ready offline."""

    scan: CacheScan
    presets: tuple[PresetStatus, ...]


def cache_report(cache_dir: str | Path | None = None) -> CacheReport:
    """What is cached, and for each preset whether every file its load (and each net and adapter's) reads is there."""
    from .presets import scan_presets

    scan = scan_cache(cache_dir)
    statuses = []
    for preset in scan_presets()[0]:
        try:
            fetches = plan(preset.name, with_control=True, with_adapters=True)
        except UsageError:  # a local model (the built-in demo): ready when its folder is there
            statuses.append(PresetStatus(preset.name, preset.model, local_path(preset.model).is_dir(), {}, None, ()))
            continue
        ready = {f.role: is_cached(f, scan) for f in fetches}
        nets = {f.role.split(" ", 1)[1]: ready[f.role] for f in fetches if f.role.startswith("controlnet ")}
        adapter = [ready[r] for r in ("ip-adapter", "image encoder") if r in ready]
        statuses.append(PresetStatus(preset.name, preset.model, ready["model"], nets,
                                     all(adapter) if adapter else None, tuple(dict.fromkeys(f.repo for f in fetches))))
    return CacheReport(scan, tuple(statuses))


def is_cached(fetch: Fetch, scan: CacheScan) -> bool:
    """Whether every file this part of a load reads is in the cache (so it loads with the network off)."""
    from huggingface_hub import get_cached_repo_tree
    from huggingface_hub.errors import CachedRepoTreeNotFoundError

    repo = scan.get(fetch.repo)
    rev = repo.revision(fetch.revision) if repo else None
    if rev is None:
        return False
    present = rev.paths()
    try:
        listing = {f.path for f in get_cached_repo_tree(fetch.repo, revision=rev.commit, cache_dir=scan.cache_dir)}
    except CachedRepoTreeNotFoundError:  # fetched file by file (no listing kept): judge by what is there
        listing = present
    try:
        chosen = _expected(fetch, listing, lambda: read_json(rev.snapshot / "model_index.json"), exact=False)
    except (UsageError, RunError):
        return False
    return bool(chosen) and set(chosen) <= present


# ---- pull


def pull(target: str, *, with_control: bool = False, with_adapters: bool = False, configs_only: bool = False,
         cache_dir: str | Path | None = None, endpoint: str | None = None,
         bars: Callable[[Pulled], type[tqdm]] | None = None) -> PullResult:
    """Fetch what `target` loads (see plan) into the HF cache, after a dry run sized it against the free disk space.
    `bars(pulled)` gives the tqdm class each repo's download reports to; `endpoint` defaults to $HF_ENDPOINT."""
    from huggingface_hub import constants
    from huggingface_hub.utils import logging as hub_logging

    fetches = plan(target, with_control=with_control, with_adapters=with_adapters, configs_only=configs_only)
    if constants.is_offline_mode():
        raise RunError(f"cannot pull {target}: HF_HUB_OFFLINE is set (unset it to reach the hub)")
    hub_logging.set_verbosity_error()  # its warnings would break the one-line error promise
    cache, endpoint = hub_cache(cache_dir), endpoint or os.environ.get("HF_ENDPOINT") or None
    with warnings.catch_warnings():  # the hub client's own free-space warning: _check_space says it in one line
        warnings.filterwarnings("ignore", message="Not enough free disk space")
        planned = [_sized(f, cache, endpoint) for f in fetches]
    _check_space(target, planned, cache)
    done = [_download(f, p, cache, endpoint, bars) for f, p in zip(fetches, planned)]
    return PullResult(target, cache, tuple(done))


def _sized(fetch: Fetch, cache: Path, endpoint: str | None) -> Pulled:
    """One repo's files and what of them must be downloaded, from the hub's listing and a dry run."""
    from huggingface_hub import HfApi, hf_hub_download, snapshot_download

    with _hub_errors(fetch):
        info = HfApi(endpoint=endpoint).model_info(fetch.repo, revision=fetch.revision)
        filenames = {s.rfilename for s in info.siblings or ()}

        def read_index():
            return read_json(hf_hub_download(fetch.repo, "model_index.json", revision=info.sha, cache_dir=cache,
                                             endpoint=endpoint))

        chosen = _expected(fetch, filenames, read_index)
        dry = snapshot_download(fetch.repo, revision=fetch.revision, cache_dir=cache, endpoint=endpoint,
                                allow_patterns=_exactly(chosen), dry_run=True, tqdm_class=SilentTqdm)
    return Pulled(fetch.repo, fetch.role, fetch.revision, info.sha, tuple(chosen), sum(d.file_size for d in dry),
                  sum(d.file_size for d in dry if d.will_download))


def _check_space(target: str, planned: list[Pulled], cache: Path) -> None:
    need = sum(p.downloaded for p in planned)
    where = next(p for p in (cache, *cache.parents) if p.exists())  # the cache folder may not exist yet
    free = shutil.disk_usage(where).free
    if need > free:
        raise RunError(f"not enough disk space to pull {target}: {human_size(need)} to download, {human_size(free)} "
                       f"free in {cache} (free some with `imagegen models rm`, or set HF_HOME to a larger disk)")


def _download(fetch: Fetch, sized: Pulled, cache: Path, endpoint: str | None, bars) -> Pulled:
    from huggingface_hub import snapshot_download

    with _hub_errors(fetch):
        path = snapshot_download(fetch.repo, revision=fetch.revision, cache_dir=cache, endpoint=endpoint,
                                 allow_patterns=_exactly(sized.files),
                                 tqdm_class=bars(sized) if bars else SilentTqdm)
    return replace(sized, path=str(path))


def _exactly(files) -> list[str]:
    """Patterns that select these files and no other ('[' is a pattern character in a name)."""
    import glob

    return [glob.escape(f) for f in files]


@contextlib.contextmanager
def _hub_errors(fetch: Fetch):
    """What the hub client raises, as one line (see _hub_error); anything unexpected keeps its traceback."""
    try:
        yield
    except (UsageError, RunError):
        raise
    except Exception as exc:
        error = _hub_error(fetch, exc)
        if error is exc:
            raise
        raise error from exc


def _hub_error(fetch: Fetch, exc: BaseException) -> Exception:
    from huggingface_hub import errors as hub

    at = fetch.repo + (f"@{fetch.revision}" if fetch.revision else "")
    if isinstance(exc, hub.GatedRepoError):
        return load_error(fetch.repo, fetch.revision, exc)  # the licence and login hint
    if isinstance(exc, hub.RevisionNotFoundError):
        return UsageError(f"{at}: no such revision on the hub")
    if isinstance(exc, hub.RemoteEntryNotFoundError):
        return UsageError(f"{at}: the hub has no such file for its {fetch.role} ({_first(exc)})")
    if isinstance(exc, hub.RepositoryNotFoundError):
        return UsageError(f"{fetch.repo}: no such model on the Hugging Face hub (or it is private: log in with "
                          f"`hf auth login`)")
    # huggingface_hub's HTTP library (httpx2 in 2.4) raises its own TransportError when the network is down
    if isinstance(exc, (ConnectionError, TimeoutError, hub.OfflineModeIsEnabled, hub.LocalEntryNotFoundError)) or any(
            c.__name__ == "TransportError" for c in type(exc).__mro__):
        return RunError(f"cannot reach the Hugging Face hub to pull {at}: {_first(exc)}")
    if isinstance(exc, hub.HfHubHTTPError):
        return RunError(f"the Hugging Face hub refused {at}: {_first(exc)}")
    if isinstance(exc, OSError):
        return RunError(f"could not write {at} to the cache: {exc}")
    return exc  # anything else is a bug: keep its traceback


def _first(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[0] if lines else type(exc).__name__


class SilentTqdm(tqdm):
    """A tqdm that counts but shows nothing: snapshot_download's default bars would write to stderr. (Not
    `disable=True`: a disabled tqdm stops counting, and a subclass reads the counts.)"""

    def __init__(self, *args: Any, **kwargs: Any):
        kwargs.pop("name", None)
        super().__init__(*args, **{**kwargs, "file": io.StringIO(), "disable": False, "mininterval": 3600})
