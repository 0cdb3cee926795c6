"""Benchmarks of llmaccel against its PyTorch peers: the case registry (``cases.py``) and the table CLI."""
