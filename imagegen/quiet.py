"""Keeping backends' chatter out of the user's terminal, in one place: once torchao is importable, diffusers imports
it on every model load, and it (and torch's pytree registry under it) logs warnings about kernels the machine cannot
load; imagegen's errors are one line, and a run prints only its own progress."""

from __future__ import annotations

import logging
import os

LOGGERS = ("torchao", "torch.utils._pytree", "bitsandbytes")


def quiet_backends() -> None:
    """Silence the quantization backends' import-time warnings and the libraries' own log lines."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "critical")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "critical")
    for name in LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
