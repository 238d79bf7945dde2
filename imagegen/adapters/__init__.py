"""Adapters: add-ons that condition or change a pipeline, each implementing the protocol in adapters/base.py, and the
parts of a mode that work the same way (an init image and its mask, the hires pass). Registering one is one line
below; its fields, preset table, record, replay and options then appear everywhere."""

from __future__ import annotations

from .base import Adapter, ResolveContext
from .controlnet import ControlNet
from .edit import Edit
from .embedding import Embedding
from .hires import Hires
from .init_image import InitImage
from .ip_adapter import IPAdapter
from .lora import Lora
from .vae import Vae

ADAPTERS: tuple[Adapter, ...] = (
    InitImage(),
    Edit(),
    ControlNet(),
    IPAdapter(),
    Lora(),
    Embedding(),
    Hires(),
    Vae(),
)

__all__ = ["ADAPTERS", "Adapter", "ResolveContext"]
