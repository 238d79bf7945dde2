"""imagegen: reproducible image generation with diffusers pipelines, from the command line or Python."""

__version__ = "0.1.0"

from .errors import ImagegenError, RunError, UsageError, VerifyError
from .generate import GenerationResult, ImageResult, generate, run
from .metadata import parse_parameters, read_record
from .presets import Preset, list_presets, load_preset
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
    "generate",
    "list_presets",
    "load_preset",
    "parse_parameters",
    "read_record",
    "reproduce",
    "resolve",
    "resolve_scheduler",
    "run",
    "scheduler_table",
]
