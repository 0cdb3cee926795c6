"""Loads the C++ extension ``llmaccel._C`` once, remembering why it failed if it did.

torch is imported first on purpose: the extension links OpenMP (libgomp), and
with torch's copy already loaded both share one OpenMP runtime.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Optional

import torch  # noqa: F401  (see module docstring)

_module: Optional[ModuleType] = None
_error: Optional[str] = None
_tried = False


def _load() -> None:
    global _module, _error, _tried
    if _tried:
        return
    _tried = True
    try:
        _module = importlib.import_module("llmaccel._C")
    except ImportError as exc:
        _error = f"the C++ extension llmaccel._C is not built ({exc}); reinstall with pip install -e ."


def load_error() -> Optional[str]:
    _load()
    return _error


def ext() -> ModuleType:
    _load()
    if _module is None:
        raise RuntimeError(_error)
    return _module
