"""The Triton kernels and their launchers, shipped as ``llmaccel.kernels`` (one module per kernel family)."""
