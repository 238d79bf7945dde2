"""The Hugging Face cache as imagegen sees it, through huggingface_hub's own cache API (scan_cache_dir and its delete
strategies: the cache is never walked by hand): what is cached, each blob re-hashed against its name, a repo or one
revision removed, and what a cached model's weights weigh, read from safetensors headers without loading them."""

from __future__ import annotations

import hashlib
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from .errors import RunError, UsageError, closest
from .families import FAMILIES, family_of_pipeline
from .hub import read_json, split_revision
from .presets import load_preset, preset_files, scan_presets

_SHARD = re.compile(r"-\d{5}-of-\d{5}$")


@dataclass(frozen=True)
class CachedFile:
    """One file of a cached revision: its path in the repo and the blob that holds it."""

    path: str
    blob: Path
    size: int


@dataclass(frozen=True)
class CachedRevision:
    """One cached commit of a repo and the refs (main, tags) that point at it."""

    commit: str
    refs: tuple[str, ...]
    size: int
    files: tuple[CachedFile, ...]
    snapshot: Path
    last_modified: float

    def paths(self) -> set[str]:
        """The repo paths this snapshot holds."""
        return {f.path for f in self.files}


@dataclass(frozen=True)
class CachedRepo:
    """A cached model repo: its revisions (newest first), size on disk (blobs counted once) and last use."""

    repo: str
    size: int
    last_used: float
    revisions: tuple[CachedRevision, ...]
    path: Path

    def revision(self, ref: str | None = None) -> CachedRevision | None:
        """The revision a ref names (default: main, as an offline load reads it), or a commit or its prefix."""
        ref = ref or "main"
        named = [r for r in self.revisions if ref in r.refs]
        if named:
            return named[0]
        found = [r for r in self.revisions if len(ref) >= 4 and r.commit.startswith(ref)]
        return found[0] if len(found) == 1 else None


@dataclass(frozen=True)
class CacheScan:
    """What the cache holds: model repos, the problems the scan met (one line each), the total size."""

    cache_dir: Path
    repos: tuple[CachedRepo, ...]
    problems: tuple[str, ...]
    size: int

    def get(self, repo: str) -> CachedRepo | None:
        """The cached repo of this id, or None."""
        return next((r for r in self.repos if r.repo == repo), None)


def hub_cache(cache_dir: str | Path | None = None) -> Path:
    """The HF cache folder: as given, else huggingface_hub's (HF_HUB_CACHE, HF_HOME/hub, ~/.cache/huggingface/hub)."""
    from huggingface_hub import constants

    return Path(cache_dir if cache_dir is not None else constants.HF_HUB_CACHE).expanduser()


def scan_cache(cache_dir: str | Path | None = None) -> CacheScan:
    """Every cached model repo, by huggingface_hub's scan_cache_dir; a missing cache folder is an empty cache."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    folder = hub_cache(cache_dir)
    try:
        info = scan_cache_dir(folder)
    except CacheNotFound:
        return CacheScan(folder, (), (), 0)
    repos = tuple(sorted((_repo(r) for r in info.repos if r.repo_type == "model"), key=lambda r: r.repo.lower()))
    problems = tuple(" ".join(str(w).split()) for w in info.warnings)
    return CacheScan(folder, repos, problems, sum(r.size for r in repos))


def _repo(info) -> CachedRepo:
    revisions = []
    for rev in sorted(info.revisions, key=lambda r: r.last_modified, reverse=True):
        files = tuple(sorted((CachedFile(f.file_path.relative_to(rev.snapshot_path).as_posix(), f.blob_path,
                                         f.size_on_disk) for f in rev.files), key=lambda f: f.path))
        revisions.append(CachedRevision(rev.commit_hash, tuple(sorted(rev.refs)), rev.size_on_disk, files,
                                        rev.snapshot_path, rev.last_modified))
    return CachedRepo(info.repo_id, info.size_on_disk, info.last_accessed, tuple(revisions), info.repo_path)


def human_size(size: float) -> str:
    """Bytes as people read disk sizes: '1.2 GB', '340.5 kB' (decimal units, as the Hub shows them)."""
    for unit in ("B", "kB", "MB", "GB"):
        if abs(size) < 1000:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"


# ---- names: a preset, or a repo, with an optional @revision


def preset_or_repo(name: str) -> tuple[str, str | None, Any]:
    """(repo, revision given, preset or None) for 'PRESET[@REV]', 'REPO[@REV]' or a preset's .toml path."""
    base, revision = split_revision(name)
    if base.endswith(".toml") or "/" not in base:
        files = preset_files()
        if not base.endswith(".toml") and base not in files:
            raise UsageError(f"{name}: no such preset, and not a hub repo id (org/name){closest(base, files)}; "
                             f"presets: {', '.join(sorted(files))}")
        preset = load_preset(base)
        return preset.model, revision, preset
    return base, revision, next((p for p in scan_presets()[0] if p.model == base), None)


def cached_repo(name: str, scan: CacheScan) -> tuple[CachedRepo, str | None, Any]:
    """The cached repo that 'REPO[@REV]' or 'PRESET[@REV]' names, the revision given and the preset (or None); an
    unknown name lists what is cached, closest first."""
    ids = [r.repo for r in scan.repos]
    base = split_revision(name)[0]
    if "/" not in base and not base.endswith(".toml") and base not in preset_files():
        raise UsageError(f"{name}: no such preset or cached repo{closest(base, [*ids, *preset_files()])}; cached: "
                         f"{', '.join(ids) or 'nothing'}")
    repo, revision, preset = preset_or_repo(name)
    found = scan.get(repo)
    if found is None:
        what = f"{repo} (preset {preset.name})" if preset is not None and "/" not in name else repo
        raise UsageError(f"{what} is not in the Hugging Face cache ({scan.cache_dir}){closest(repo, ids)}; cached: "
                         f"{', '.join(ids) or 'nothing'}")
    return found, revision, preset


def revision_of(repo: CachedRepo, ref: str) -> CachedRevision:
    """The cached revision `ref` names, or a one-line error listing the cached ones."""
    found = repo.revision(ref)
    if found is None:
        have = ", ".join(f"{r.commit[:10]}" + (f" ({', '.join(r.refs)})" if r.refs else "") for r in repo.revisions)
        raise UsageError(f"{repo.repo}@{ref}: no such cached revision; cached: {have}")
    return found


# ---- rm


@dataclass(frozen=True)
class Removal:
    """What removing a repo or one revision deletes, and the space it frees."""

    repo: str
    commits: tuple[str, ...]
    whole_repo: bool
    freed: int
    cache_dir: Path


def plan_removal(name: str, cache_dir: str | Path | None = None) -> Removal:
    """What `rm REPO|PRESET[@REV]` would delete (nothing is deleted yet)."""
    from huggingface_hub import scan_cache_dir

    scan = scan_cache(cache_dir)
    repo, ref, _ = cached_repo(name, scan)
    commits = (revision_of(repo, ref).commit,) if ref else tuple(r.commit for r in repo.revisions)
    strategy = scan_cache_dir(scan.cache_dir).delete_revisions(*commits)
    return Removal(repo.repo, commits, len(commits) == len(repo.revisions), strategy.expected_freed_size,
                   scan.cache_dir)


def remove(plan: Removal) -> Removal:
    """Delete what the plan names, by huggingface_hub's delete strategy (a blob another revision uses stays)."""
    from huggingface_hub import scan_cache_dir

    strategy = scan_cache_dir(plan.cache_dir).delete_revisions(*plan.commits)
    freed = strategy.expected_freed_size
    try:
        strategy.execute()
    except OSError as exc:
        raise RunError(f"could not remove {plan.repo} from {plan.cache_dir}: {exc}") from exc
    return Removal(plan.repo, plan.commits, plan.whole_repo, freed, plan.cache_dir)


# ---- verify


@dataclass(frozen=True)
class BrokenFile:
    """A cached file whose content does not hash to its blob's name (or whose blob is gone)."""

    repo: str
    commit: str
    path: str
    algorithm: str  # sha256 (LFS files) or git-sha1 (others)
    expected: str
    actual: str  # "missing" when the blob could not be read

    def line(self) -> str:
        """One line naming the file and both hashes."""
        got = self.actual if self.actual == "missing" else self.actual[:12]
        return f"{self.repo}@{self.commit[:10]} {self.path}: {self.algorithm} expected {self.expected[:12]}, got {got}"


class CacheBroken(RunError):
    """`models verify` found broken files: `details` holds one line each, printed before the summary; exit 1."""

    def __init__(self, message: str, details: list[str]):
        super().__init__(message)
        self.details = details


@dataclass(frozen=True)
class VerifyReport:
    """What `verify` re-hashed and what it found broken."""

    repos: tuple[str, ...]
    files: int
    bytes: int
    broken: tuple[BrokenFile, ...]
    problems: tuple[str, ...]  # repos the cache scan could not read

    def error(self) -> CacheBroken | None:
        """The one-line error (with a line per broken file) when anything is broken, else None."""
        if not self.broken and not self.problems:
            return None
        lines = [b.line() for b in self.broken] + list(self.problems)
        return CacheBroken(f"{len(lines)} of {self.files} cached files are broken; remove the repo or revision with "
                           f"`imagegen models rm REPO@REV --yes` and pull it again", lines)


def verify_cache(names: Iterable[str] = (), cache_dir: str | Path | None = None,
                 progress: Callable[[int, int], None] | None = None) -> VerifyReport:
    """Re-hash every cached file of these repos or presets (default: all) against its blob's name: an LFS blob is
    named by its content's sha256, any other by its git blob sha1. `progress(done, total)` gets bytes hashed."""
    scan = scan_cache(cache_dir)
    repos = [cached_repo(n, scan)[0] for n in names] if names else list(scan.repos)
    files = [(repo, rev, f) for repo in repos for rev in repo.revisions for f in rev.files]
    total = sum(f.size for f in {f.blob: f for _, _, f in files}.values())
    hashed: dict[Path, str] = {}  # a blob shared by revisions is read once
    broken, done = [], 0
    for repo, rev, f in files:
        algorithm = "sha256" if len(f.blob.name) == 64 else "git-sha1"
        if f.blob not in hashed:
            hashed[f.blob] = _hash(f.blob, algorithm)
            done += f.size
            if progress:
                progress(done, total)
        # a 40-hex name is git's blob sha1; a cache copied by other tools may hold the plain sha1 of the content
        if hashed[f.blob] != f.blob.name and (algorithm == "sha256" or _hash(f.blob, "sha1") != f.blob.name):
            broken.append(BrokenFile(repo.repo, rev.commit, f.path, algorithm, f.blob.name, hashed[f.blob]))
    return VerifyReport(tuple(r.repo for r in repos), len(files), total, tuple(broken),
                        () if names else scan.problems)


def _hash(blob: Path, algorithm: str) -> str:
    """The blob's sha256, or its git blob sha1 (sha1 of 'blob SIZE\\0' and the content); 'missing' if unreadable."""
    try:
        with open(blob, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            digest = hashlib.sha256() if algorithm == "sha256" else hashlib.sha1(
                b"" if algorithm == "sha1" else b"blob %d\0" % size)
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    except OSError:
        return "missing"
    return digest.hexdigest()


# ---- info


@dataclass(frozen=True)
class ComponentWeights:
    """What one component's weights weigh, from its safetensors headers."""

    name: str
    files: tuple[str, ...]
    bytes: int
    parameters: int
    tensors: int
    dtypes: tuple[str, ...]  # safetensors dtype names: F16, BF16, F32, ...


@dataclass(frozen=True)
class WeightsInfo:
    """A model's family, kind and components, and what each weighs; nothing but headers is read."""

    name: str  # as asked
    source: str  # "file" (a single-file checkpoint), "cache" (a cached repo) or "folder"
    path: Path  # the file, the cached snapshot or the folder
    family: Any  # imagegen.families.Family, or None when the files do not say
    kind: str | None  # the checkpoint kind, the pipeline class, or the model class
    repo: str | None  # the hub repo (for a checkpoint: its base model's)
    revision: str | None  # the cached commit
    preset: str | None
    size: int
    components: tuple[ComponentWeights, ...]

    @property
    def parameters(self) -> int:
        return sum(c.parameters for c in self.components)


def weights_info(name: str, cache_dir: str | Path | None = None) -> WeightsInfo:
    """What FILE (a .safetensors checkpoint), DIR (a diffusers folder), REPO[@REV] or PRESET[@REV] holds, from the
    cache or disk only (never the network)."""
    path = Path(name).expanduser()
    if path.is_file():
        return _checkpoint_info(name, path)
    if path.is_dir():  # as everywhere in imagegen (hub.is_local), a folder wins over a repo id of the same name
        files = sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.suffix in (".safetensors", ".json"))
        return _folder_info(name, "folder", path, files, None, None, None)
    repo, ref, preset = cached_repo(name, scan_cache(cache_dir))
    wanted = ref or (preset.revision if preset is not None and "/" not in name else None)
    rev = revision_of(repo, wanted) if wanted else repo.revision() or repo.revisions[0]
    return _folder_info(name, "cache", rev.snapshot, sorted(rev.paths()), repo.repo, rev.commit, preset)


def _checkpoint_info(name: str, path: Path) -> WeightsInfo:
    from .checkpoints import inspect_checkpoint

    ck = inspect_checkpoint(path, flag="models info")
    parts = dict(ck.components)
    if getattr(ck, "other", None) is not None:
        parts["(unused)"] = ck.other  # tensors no component loads (EMA copies): counted in the file, never loaded
    components = tuple(ComponentWeights(n, (), p.bytes, p.parameters, p.tensors, tuple(p.dtypes))
                       for n, p in parts.items())
    return WeightsInfo(name, "file", ck.path, ck.family, ck.kind.name, ck.kind.repo, None, ck.kind.preset, ck.size,
                       components)


def _folder_info(name: str, source: str, root: Path, files: list[str], repo: str | None, commit: str | None,
                 preset) -> WeightsInfo:
    """Components of a diffusers folder or cached snapshot: the model_index.json's (or each weights folder)."""
    index = read_json(root / "model_index.json") if "model_index.json" in files else None
    config = read_json(root / "config.json") if "config.json" in files else None
    family, kind = preset.family if preset is not None else None, None
    if index:
        kind = index.get("_class_name") if isinstance(index.get("_class_name"), str) else None
        family = family_of_pipeline(kind) or family
    elif config:
        kind = config.get("_class_name") if isinstance(config.get("_class_name"), str) else None
        family = next((f for f in FAMILIES.values() if f.owns_controlnet(config)), family)
    groups: dict[str, list[str]] = {}  # a model folder's weights together; loose files (adapters) each alone
    for f in files:
        if f.endswith(".safetensors"):
            folder = f.rpartition("/")[0]
            model = index or f"{folder}/config.json".lstrip("/") in files
            groups.setdefault(folder if model else f, []).append(f)
    if index:  # only what the pipeline loads, in its order
        groups = {k: groups[k] for k, v in index.items() if isinstance(v, list) and v and v[0] and k in groups}
    variant = preset.variant if preset is not None else None
    components = tuple(_component(root, folder or "model", one_variant(group, variant))
                       for folder, group in groups.items())
    size = sum(c.bytes for c in components)
    return WeightsInfo(name, source, root, family, kind, repo, commit, preset.name if preset else None, size,
                       components)


def _variant_of(path: str) -> str | None:
    stem = _SHARD.sub("", path.rpartition("/")[2].removesuffix(".safetensors"))
    return stem.rpartition(".")[2] if "." in stem else None


def one_variant(files: list[str], variant: str | None) -> list[str]:
    """The files one load reads from a folder holding several variants: the wanted one, else the plain weights."""
    return ([f for f in files if _variant_of(f) == variant] or [f for f in files if _variant_of(f) is None]
            or files)


def _component(root: Path, name: str, files: list[str]) -> ComponentWeights:
    from .checkpoints import read_header

    tensors, parameters, dtypes, size = 0, 0, set(), 0
    for f in files:
        header = read_header(root / f, "models info")
        size += (root / f).stat().st_size
        tensors += len(header.tensors)
        parameters += sum(math.prod(shape) for _, shape in header.tensors.values())
        dtypes |= {dtype for dtype, _ in header.tensors.values()}
    return ComponentWeights(name, tuple(files), size, parameters, tensors, tuple(sorted(dtypes)))
