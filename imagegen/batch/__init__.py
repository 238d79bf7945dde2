"""`batch`: a prompt file run at scale: validated first, grouped into micro-batches, resumable, crash-safe.

The run, in order:
1. plan (plan.py): parse the file, read the output folder's manifest (for the base seed), resolve every job; all bad
   lines are reported together and nothing loads unless every line is valid (or --skip-invalid).
2. resume (resume.py): images already in the manifest whose files still hash right are skipped, and images written
   just before a crash (file in place, manifest line missing) are adopted.
3. run (run.py): the pending images are grouped by model and group key and handed to the engine (engines/: local,
   accelerate), which makes them in micro-batches (make.py, wherever the engine runs it); this process's background
   writer saves each image and then appends its manifest line.
"""

from __future__ import annotations

from ..session import auto_batch_size  # the rule both runners share; part of batch's API as before
from .engines import ENGINES, Engine, engine_name, get_engine
from .plan import BATCH_NAME, BatchPlan, PlannedImage, derive_seed, prepare
from .result import BatchResult
from .run import run_batch

__all__ = ["BATCH_NAME", "ENGINES", "BatchPlan", "BatchResult", "Engine", "PlannedImage", "auto_batch_size",
           "derive_seed", "engine_name", "get_engine", "prepare", "run_batch"]
