"""What a batch run did: counts, failures and timings (the CLI shows it as a table or --json)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class BatchResult:
    """What a batch run did: counts, failures and timings (the CLI shows it as a table or --json)."""

    out_dir: Path
    total: int
    done: int = 0
    skipped: int = 0
    adopted: int = 0
    failed: int = 0
    invalid: int = 0
    wall_s: float = 0.0
    denoise_s: float = 0.0
    batch_size: str = ""
    failures: list[dict] = field(default_factory=list)
    interrupted: bool = False
    compile_warmup_s: float | None = None
    rank: int = 0
    world: int = 1
    images: list[dict] = field(default_factory=list)  # every image of the plan with its file: see add_image
    engine: str = "local"
    workers: list[dict] = field(default_factory=list)  # the ray engine's: per worker, what it made and how fast
    retries: int = 0  # micro-batches made again after their worker was lost
    driver_cpu_s: float = 0.0  # CPU time of this process (all its threads) over the run

    def add_image(self, item, path: Path, status: str) -> None:
        """Record an image that has its file: "written" now, "skipped" (already done) or "adopted" (crash orphan)."""
        self.images.append({"path": str(path), "seed": item.seed, "line": item.job.line, "job": item.job.index,
                            "image": item.image, "index": item.index, "status": status})

    @property
    def images_per_s(self) -> float:
        return self.done / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def remaining(self) -> int:
        return self.total - self.done - self.skipped - self.adopted - self.failed

    def to_json(self) -> dict:
        return {
            "out": str(self.out_dir),
            "total": self.total,
            "done": self.done,
            "skipped": self.skipped,
            "adopted": self.adopted,
            "failed": self.failed,
            "invalid": self.invalid,
            "remaining": self.remaining,
            "wall_s": round(self.wall_s, 3),
            "denoise_s": round(self.denoise_s, 3),
            "images_per_s": round(self.images_per_s, 4),
            "batch_size": self.batch_size,
            "interrupted": self.interrupted,
            "compile_warmup_s": None if self.compile_warmup_s is None else round(self.compile_warmup_s, 3),
            "failures": self.failures,
            "images": sorted(self.images, key=lambda i: i["index"]),
            "process": {"rank": self.rank, "world": self.world},
            "engine": self.engine,
            "workers": self.workers,
            "retries": self.retries,
            "driver_cpu_s": round(self.driver_cpu_s, 3),
        }

    @classmethod
    def merge(cls, results: list[BatchResult]) -> BatchResult:
        """One result for the processes of a run (each made its share): counts add up, the wall time is the longest."""
        first = results[0]
        if len(results) == 1:
            return first
        merged = cls(out_dir=first.out_dir, total=sum(r.total for r in results), rank=0, world=len(results),
                     invalid=first.invalid)  # every process saw the same invalid lines
        for name in ("done", "skipped", "adopted", "failed", "denoise_s"):
            setattr(merged, name, sum(getattr(r, name) for r in results))
        merged.wall_s = max(r.wall_s for r in results)
        sizes = dict.fromkeys(r.batch_size for r in results if r.done or r.failed)  # a process with no work chose none
        merged.batch_size = " / ".join(sizes) or first.batch_size
        merged.failures = [f for r in results for f in r.failures]
        merged.images = [i for r in results for i in r.images]
        merged.engine, merged.driver_cpu_s = first.engine, sum(r.driver_cpu_s for r in results)
        merged.interrupted = any(r.interrupted for r in results)
        warmups = [r.compile_warmup_s for r in results if r.compile_warmup_s is not None]
        merged.compile_warmup_s = max(warmups) if warmups else None
        return merged
