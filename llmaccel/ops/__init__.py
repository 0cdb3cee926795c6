"""Op layer: one module per op family, each built from an OpSpec (``spec.py``).

Adding an op family adds its module name to ``_OP_MODULES``; ``__all__`` collects each module's ``__all__``
(its public functions and references), which ``llmaccel`` re-exports.
"""

import importlib

_OP_MODULES = ("attention", "int8_linear", "int8_mm", "quantize", "sparse_linear")

_modules = [importlib.import_module(f"{__name__}.{name}") for name in _OP_MODULES]
__all__ = [name for mod in _modules for name in mod.__all__]
globals().update({name: getattr(mod, name) for mod in _modules for name in mod.__all__})
