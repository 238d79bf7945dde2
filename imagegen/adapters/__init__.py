"""Adapters: add-ons that condition or change a pipeline, each implementing the protocol in adapters/base.py.
Registering one is one line below; its fields, preset table, record and options then appear everywhere."""

from __future__ import annotations

from .base import Adapter, ResolveContext
from .controlnet import ControlNet
from .ip_adapter import IPAdapter

ADAPTERS: tuple[Adapter, ...] = (
    ControlNet(),
    IPAdapter(),
)

__all__ = ["ADAPTERS", "Adapter", "ResolveContext"]
