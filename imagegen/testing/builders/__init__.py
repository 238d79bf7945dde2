"""Tiny builders, one module per family (each registers itself with @tiny("<family>")): a module dropped here is
imported with the package, as a family module in imagegen/families is."""

from __future__ import annotations

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
