"""Resuming a batch: which planned images are already done (verified on disk), which were written just before a
crash and can be adopted, and which are still to make; stale files are moved aside, never overwritten."""

from __future__ import annotations

import glob
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UsageError
from ..metadata import PNG_KEY
from ..output import first_free, pixels_sha256
from .manifest import ManifestWriter, file_sha256, read_manifest
from .plan import BatchPlan, PlannedImage

SIDECAR_SUFFIX = ".json"


@dataclass
class Resume:
    pending: list[PlannedImage]
    skipped: int = 0
    done: list[tuple[PlannedImage, Path]] = field(default_factory=list)  # the skipped images and their files
    adopted: list[tuple[PlannedImage, dict]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def check_done(plan: BatchPlan, *, act: bool) -> Resume:
    """Split the plan into images already done (verified on disk), adoptable orphans, and pending.

    Every process computes the same split; only the one that acts (rank 0) moves stale files aside.
    """
    _, entries = read_manifest(plan.out_dir)
    referenced = {str(e.data.get("png")) for group in entries.values() for e in group if e.status == "done"}
    state = Resume(pending=[])
    matched = missing = changed = 0
    for item in plan.images:
        done = [e for e in entries.get(item.key, []) if e.status == "done"]
        same = [e for e in done if e.hash == item.hash]
        if same:
            matched += 1
            entry = same[-1]
            png = plan.out_dir / str(entry.data.get("png", ""))
            if png.is_file() and file_sha256(png) == entry.data.get("sha256"):
                state.skipped += 1
                sidecar = entry.data.get("sidecar")
                if act and sidecar and not (plan.out_dir / sidecar).exists() and _restore_sidecar(png, entry):
                    state.notes.append(f"{sidecar}: deleted since it was written; restored from its PNG's record")
                state.done.append((item, png))
                continue
            if png.is_file():
                if act:
                    aside = _move_aside(png, "mismatch")
                    state.notes.append(f"{png} no longer matches its recorded sha256: moved to {aside.name}, made again")
            else:
                missing += 1
            sidecar = plan.out_dir / str(entry.data.get("sidecar") or "")
            if act and entry.data.get("sidecar") and sidecar.is_file():
                _move_aside(sidecar, "stale")  # it describes the file that is gone; the new image gets its name
        elif done:
            changed += 1
        elif (orphan := _orphan(plan.out_dir, item, referenced)) is not None:
            state.adopted.append((item, orphan))
            continue
        state.pending.append(item)
    done_entries = sum(1 for group in entries.values() if any(e.status == "done" for e in group))
    if done_entries and not matched and not state.adopted:
        raise UsageError(
            f"--out {plan.out_dir}: it holds {done_entries} images of a different batch (no image of "
            f"{plan.source} matches its manifest); pass --restart to start over in a new folder, or another --out"
        )
    if missing:
        state.notes.append(f"{_count(missing, 'image')} in the manifest missing on disk: made again")
    if changed:
        state.notes.append(f"{_count(changed, 'image')} whose line changed since they were made: made again")
    return state


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _move_aside(path: Path, label: str) -> Path:
    """Rename a file to <name>.<label> (or .<label>-2, ...), never replacing anything."""
    aside = path.with_name(f"{path.name}.{label}")
    aside = first_free(aside, lambda n: aside.with_name(f"{aside.name}-{n}"))
    path.rename(aside)
    return aside


def _orphan(out_dir: Path, item: PlannedImage, referenced: set[str]) -> dict | None:
    """The record of a file written for this image before a crash kept its manifest line from being appended."""
    import json

    from PIL import Image

    png = out_dir / f"{item.name}.png"
    if not png.is_file() or png.relative_to(out_dir).as_posix() in referenced:
        return None
    try:
        with Image.open(png) as im:
            im.load()  # complete: it was linked into place whole, but check
            text = getattr(im, "text", {}).get(PNG_KEY)
            pixels = None if text else pixels_sha256(im)
        record = json.loads(text) if text else None
    except Exception:  # noqa: BLE001 - not ours or unreadable: leave it, write the new image beside it
        return None
    if item.req.metadata == "none":
        # No recipe inside to check: the name (unique in this batch, with its index and seed by default) is the proof.
        return None if text else {"output": {"pixels_sha256": pixels}}
    if not isinstance(record, dict) or (record.get("batch") or {}).get("request_hash") != item.hash:
        return None
    return record


def adopt(out_dir: Path, item: PlannedImage, record: dict, manifest: ManifestWriter) -> Path:
    """Finish an orphan: write its missing sidecar from the PNG's record, then its manifest line; returns the PNG."""
    png = out_dir / f"{item.name}.png"
    sha = file_sha256(png)
    sidecar = None
    if "schema" in record:  # the PNG carries the record the sidecar repeats
        sidecar = png.with_suffix(SIDECAR_SUFFIX)
        if not sidecar.exists():
            write_sidecar(png, record, sha)
    manifest.append(done_line(out_dir, item, png, sidecar, sha, (record.get("output") or {}).get("pixels_sha256")))
    return png


def write_sidecar(png: Path, record: dict, sha: str) -> None:
    """Write a PNG's sidecar again from the record in its text chunk (with the derived images beside it)."""
    from ..output import sidecar_data, write_new  # looked up per call: tests stand in for write_new

    data = sidecar_data(record, png.name, sha, save_s=None)
    if maps := sorted(p.name for p in png.parent.glob(f"{glob.escape(png.stem)}.control*.png")):
        data["output"]["control_maps"] = maps
    write_new(png.with_suffix(SIDECAR_SUFFIX), data)


def _restore_sidecar(png: Path, entry) -> bool:
    """Restore a deleted sidecar of a verified image; False when the PNG holds no record to restore it from."""
    import json

    from PIL import Image

    try:
        with Image.open(png) as im:
            record = json.loads(getattr(im, "text", {}).get(PNG_KEY) or "null")
    except Exception:  # noqa: BLE001 - an unreadable chunk: nothing to restore from
        return False
    if not isinstance(record, dict) or "schema" not in record or png.with_suffix(SIDECAR_SUFFIX).name != Path(
            entry.data["sidecar"]).name:
        return False
    write_sidecar(png, record, entry.data["sha256"])
    return True


def done_line(out_dir: Path, item: PlannedImage, png: Path, sidecar: Path | None, sha: str, pixels: str | None) -> dict:
    return {
        "type": "done", "key": item.key, "hash": item.hash, "job": item.job.index, "line": item.job.line,
        "image": item.image, "index": item.index, "seed": item.seed,
        "png": png.relative_to(out_dir).as_posix(),
        "sidecar": sidecar.relative_to(out_dir).as_posix() if sidecar else None,
        "sha256": sha, "pixels_sha256": pixels,
    }


def clean_temp_files(out_dir: Path) -> int:
    """Remove the temp files a killed run left (they never became images)."""
    removed = 0
    if out_dir.is_dir():
        for tmp in out_dir.rglob(".imagegen-*.tmp"):
            try:
                tmp.unlink()
                removed += 1
            except OSError:
                pass
    return removed


