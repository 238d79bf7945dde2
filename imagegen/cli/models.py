"""`imagegen models`: what the Hugging Face cache holds and which presets are ready offline, pulling exactly what a
preset loads, re-hashing cached files, removing a repo or revision, and what a model's weights weigh. Each command
calls imagegen.pull or imagegen.hubcache once and renders the result: a table, or one JSON value with --json."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from typing import Annotated, Optional

import typer

from .app import app
from .listing import _print_table
from .options import Debug, Json, Quiet

models_app = typer.Typer(help="The Hugging Face cache: list, pull, verify, rm and info.", no_args_is_help=True)
app.add_typer(models_app, name="models")

# `list` is also the presets' command, whose examples EXAMPLES holds under that name: these are given here, and
# add_examples leaves a command that has its epilog alone.
_LIST_EXAMPLES = ["imagegen models list", "imagegen models list --json"]
Target = Annotated[str, typer.Argument(metavar="PRESET|REPO[@REV]", help="A preset name, or a hub repo id, with an "
                                       "optional @revision (branch, tag or commit).")]


def _epilog(examples: list[str]) -> str:
    return "\n\n".join(["Examples:", *(f"  {e}" for e in examples)]).replace("[", "\\[")


@models_app.command("list", epilog=_epilog(_LIST_EXAMPLES))
def models_list(json_: Json = False, debug: Debug = False) -> None:
    """What the Hugging Face cache holds (repo, revisions, size on disk, last used) and which presets, with which of
    their ControlNets and IP-Adapter, are ready offline (every file their load reads is cached)."""
    from ..pull import cache_report

    report = cache_report()
    for problem in report.scan.problems:
        sys.stderr.write(f"imagegen: warning: {problem}\n")
    if json_:
        sys.stdout.write(json.dumps(_report_json(report)) + "\n")
        return
    from ..hubcache import human_size

    users: dict[str, list[str]] = {}
    for status in report.presets:
        for repo in status.repos:
            users.setdefault(repo, []).append(status.name)
    _print_table(["repo", "revisions", "size", "last used", "presets"], [
        [r.repo, ", ".join(_revision(v) for v in r.revisions), human_size(r.size), _ago(r.last_used),
         ", ".join(users.get(r.repo, []))] for r in report.scan.repos])
    sys.stdout.write(f"{len(report.scan.repos)} repos, {human_size(report.scan.size)} in {report.scan.cache_dir}\n\n")
    _print_table(["preset", "model", "offline", "controlnets", "ip-adapter"], [
        [s.name, s.model, _ready(s.ready), ", ".join(f"{k} {_ready(v)}" for k, v in s.controlnet.items()),
         "" if s.ip_adapter is None else _ready(s.ip_adapter)] for s in report.presets])


def _ready(ready: bool) -> str:
    return "ready" if ready else "missing"


def _revision(rev) -> str:
    return rev.commit[:10] + (f" ({', '.join(rev.refs)})" if rev.refs else "")


def _ago(timestamp: float) -> str:
    seconds = max(0.0, time.time() - timestamp)
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            count = int(seconds // size)
            return f"{count} {unit}{'s' if count != 1 else ''} ago"
    return "just now"


def _iso(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


def _report_json(report) -> dict:
    scan = report.scan
    return {
        "cache_dir": str(scan.cache_dir), "size": scan.size,
        "repos": [{"repo": r.repo, "size": r.size, "last_used": _iso(r.last_used),
                   "presets": [s.name for s in report.presets if r.repo in s.repos],
                   "revisions": [{"commit": v.commit, "refs": list(v.refs), "size": v.size, "files": len(v.files),
                                  "last_modified": _iso(v.last_modified)} for v in r.revisions]}
                  for r in scan.repos],
        "presets": [{"name": s.name, "model": s.model, "ready": s.ready, "controlnet": s.controlnet,
                     "ip_adapter": s.ip_adapter} for s in report.presets],
        "problems": list(scan.problems),
    }


@models_app.command()
def pull(
    target: Target,
    with_control: Annotated[bool, typer.Option("--with-control", help="Also the preset's ControlNets (its "
                                               "\\[controlnet] table).")] = False,
    with_adapters: Annotated[bool, typer.Option("--with-adapters", help="Also the preset's IP-Adapter and its image "
                                                "encoder (its \\[ip_adapter] table).")] = False,
    configs_only: Annotated[bool, typer.Option("--configs-only", help="Only the configs and tokenizer files (a few "
                                               "MB): what a single-file checkpoint of this model needs "
                                               "offline.")] = False,
    quiet: Quiet = False, json_: Json = False, debug: Debug = False,
) -> None:
    """Fetch what a preset loads into the Hugging Face cache: safetensors only, in its variant (fp16) where it has
    one, only the components its pipeline reads. Checks the free disk space first."""
    from ..hubcache import human_size
    from ..pull import pull as fetch

    bars = None if quiet else _RichBars()
    with bars or contextlib.nullcontext():
        result = fetch(target, with_control=with_control, with_adapters=with_adapters, configs_only=configs_only,
                       bars=bars)
    if json_:
        sys.stdout.write(json.dumps({"target": result.target, "cache_dir": str(result.cache_dir),
                                     "size": result.size, "downloaded": result.downloaded,
                                     "repos": [_pulled_json(p) for p in result.repos]}) + "\n")
        return
    _print_table(["repo", "part", "revision", "files", "size", "downloaded"], [
        [p.repo, p.role, p.commit[:10], str(len(p.files)), human_size(p.size), human_size(p.downloaded)]
        for p in result.repos])
    sys.stdout.write(f"pulled {target}: {human_size(result.downloaded)} downloaded, {human_size(result.size)} in all, "
                     f"in {result.cache_dir}\n")


def _pulled_json(p) -> dict:
    return {"repo": p.repo, "part": p.role, "revision": p.revision, "commit": p.commit, "files": list(p.files),
            "size": p.size, "downloaded": p.downloaded, "path": p.path}


class _RichBars:
    """A Rich bar per repo on stderr, fed by the tqdm class snapshot_download reports to (bytes written)."""

    def __init__(self):
        from rich.console import Console
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, \
            TransferSpeedColumn
        from rich.table import Column

        # The bar takes what the other columns leave (they never wrap), as imagegen's other bars do.
        self.progress = Progress(
            TextColumn("{task.description}", table_column=Column(no_wrap=True, overflow="ellipsis", ratio=2)),
            BarColumn(bar_width=None, table_column=Column(ratio=1, min_width=5)),
            DownloadColumn(table_column=Column(no_wrap=True)), TransferSpeedColumn(table_column=Column(no_wrap=True)),
            TimeRemainingColumn(), console=Console(stderr=True), expand=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        if self.progress.live.is_started:
            self.progress.stop()

    def __call__(self, pulled):
        from ..pull import SilentTqdm

        progress = self.progress
        if not progress.live.is_started:  # started with the first download: an error before it stays one line
            progress.start()
        cached = "" if pulled.downloaded else ", cached"
        task = progress.add_task(f"{pulled.repo} ({pulled.role}{cached})", total=pulled.downloaded)

        class Bar(SilentTqdm):
            # snapshot_download counts bytes in two bars (received, written) and files in a third: the bytes bars
            # move together, so the task shows the furthest of them.
            def update(self, n=1):
                super().update(n)
                if self.unit == "B" and pulled.downloaded:
                    progress.update(task, completed=min(pulled.downloaded, max(self.n, _done(progress, task))))

            def close(self):
                super().close()
                if self.unit != "B" and pulled.downloaded:  # the files bar closes when every file is in
                    progress.update(task, completed=pulled.downloaded)

        return Bar


def _done(progress, task) -> float:
    return next((t.completed for t in progress.tasks if t.id == task), 0)


@models_app.command()
def verify(
    names: Annotated[Optional[list[str]], typer.Argument(metavar="[REPO|PRESET]...", help="What to check "
                                                         "(default: the whole cache).")] = None,
    quiet: Quiet = False, json_: Json = False, debug: Debug = False,
) -> None:
    """Re-hash cached files against their recorded hashes (an LFS file's sha256, any other's git blob sha1): each
    broken file is one line, and the exit code is 1 when any is."""
    from ..hubcache import human_size, verify_cache

    with _hashing(quiet) as progress:
        report = verify_cache(names or (), progress=progress)
    if json_:
        sys.stdout.write(json.dumps({"repos": list(report.repos), "files": report.files, "bytes": report.bytes,
                                     "broken": [vars(b) for b in report.broken],
                                     "problems": list(report.problems)}) + "\n")
    elif not report.broken and not report.problems:
        repos = len(report.repos)
        sys.stdout.write(f"verified {report.files} files ({human_size(report.bytes)}) in {repos} "
                         f"repo{'' if repos == 1 else 's'}: all match their hashes\n")
    if error := report.error():
        raise error


@contextlib.contextmanager
def _hashing(quiet: bool):
    """A transient bar of bytes hashed, on a terminal's stderr (a log gets only the result)."""
    if quiet or not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

    with Progress(TextColumn("hashing"), BarColumn(), DownloadColumn(), console=Console(stderr=True),
                  transient=True) as progress:
        task = progress.add_task("hashing", total=None)
        yield lambda done, total: progress.update(task, completed=done, total=total)


@models_app.command()
def rm(
    target: Target,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Remove without asking.")] = False,
    json_: Json = False, debug: Debug = False,
) -> None:
    """Remove a cached repo (every revision) or, with @REV, one revision, after asking; says how much it frees."""
    from ..hubcache import human_size, plan_removal, remove

    plan = plan_removal(target)
    what = plan.repo if plan.whole_repo else f"{plan.repo}@{plan.commits[0][:10]}"
    if not yes:
        try:
            sure = typer.confirm(f"Remove {what} from the cache, freeing {human_size(plan.freed)}?", default=False,
                                 err=True)
        except typer.Abort:  # no answer (stdin closed)
            sys.stderr.write("\n")
            sure = False
        if not sure:
            sys.stderr.write(f"imagegen: kept {what} (nothing removed)\n")
            return
    done = remove(plan)
    if json_:
        sys.stdout.write(json.dumps({"repo": done.repo, "commits": list(done.commits), "whole_repo": done.whole_repo,
                                     "freed": done.freed}) + "\n")
        return
    sys.stdout.write(f"removed {what}: freed {human_size(done.freed)}\n")


@models_app.command()
def info(
    target: Annotated[str, typer.Argument(metavar="FILE|REPO|PRESET", help="A .safetensors file, a diffusers "
                                          "folder, or a cached repo or preset (@REV for a revision).")],
    json_: Json = False, debug: Debug = False,
) -> None:
    """The family, the components and what each weighs (bytes, parameters, dtypes), read from safetensors headers
    without loading any weights; a repo or preset is read from the cache, never the network."""
    from ..hubcache import human_size, weights_info

    w = weights_info(target)
    data = {"name": w.name, "source": w.source, "path": str(w.path),
            "family": w.family.name if w.family else None, "kind": w.kind, "repo": w.repo, "revision": w.revision,
            "preset": w.preset, "size": w.size, "parameters": w.parameters,
            "components": [{**vars(c), "files": list(c.files), "dtypes": list(c.dtypes)} for c in w.components]}
    if json_:
        sys.stdout.write(json.dumps(data) + "\n")
        return
    family = f"{w.family.label} ({w.family.name})" if w.family else "unknown"
    for key, value in [("family", family), ("kind", w.kind), ("repo", w.repo), ("revision", w.revision),
                       ("preset", w.preset), ("path", str(w.path)),
                       ("weights", f"{human_size(w.size)}, {_count(w.parameters)} parameters")]:
        if value:
            sys.stdout.write(f"{key:9} {value}\n")
    sys.stdout.write("\n")
    _print_table(["component", "size", "parameters", "tensors", "dtypes"], [
        [c.name, human_size(c.bytes), _count(c.parameters), str(c.tensors), ", ".join(c.dtypes)]
        for c in w.components])


def _count(n: int) -> str:
    """A parameter count as people say it: 2.6B, 860.0M, 12.3K."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)
