"""Integrations with other libraries (imported on demand: none of them is a dependency of llmaccel).

* :mod:`llmaccel.integrations.transformers`: ``register()`` makes
  ``attn_implementation="llmaccel"`` available to Hugging Face transformers.
"""

__all__ = ["transformers"]
