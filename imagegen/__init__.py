"""imagegen: reproducible image generation with diffusers pipelines, from the command line or Python."""

__version__ = "0.1.0"

from .checkpoints import inspect_checkpoint
from .errors import ImagegenError, RunError, UsageError, VerifyError
from .generate import GenerationResult, ImageResult, generate, run
from .hubcache import plan_removal, remove, scan_cache, verify_cache, weights_info
from .metadata import parse_parameters, read_record
from .presets import Preset, list_presets, load_preset
from .pull import cache_report, pull
from .request import Request, ResolvedRequest
from .reproduce import reproduce
from .resolve import resolve
from .schedulers import resolve_scheduler, scheduler_table

__all__ = [
    "GenerationResult",
    "ImageResult",
    "ImagegenError",
    "Preset",
    "Request",
    "ResolvedRequest",
    "RunError",
    "UsageError",
    "VerifyError",
    "cache_report",
    "generate",
    "inspect_checkpoint",
    "list_presets",
    "load_preset",
    "parse_parameters",
    "plan_removal",
    "pull",
    "read_record",
    "remove",
    "reproduce",
    "resolve",
    "resolve_scheduler",
    "run",
    "scan_cache",
    "scheduler_table",
    "verify_cache",
    "weights_info",
]
