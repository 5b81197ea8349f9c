"""Lazy package exports: `from lora_train.model import VGGT` imports torch only when asked for."""

import importlib


def lazy_getattr(exports: dict[str, str], package: str):
    """A module `__getattr__` that imports `name` from `exports[name]` on first access."""

    def __getattr__(name):
        if name in exports:
            return getattr(importlib.import_module(exports[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
