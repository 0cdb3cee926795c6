"""Shared test configuration.

scripts/test.sh runs these tests in labelled passes (its run_pass lines), among them:
  * default:             pytest tests
  * triton-interpreter:  TRITON_INTERPRET=1 LLMACCEL_BACKEND=triton pytest tests -m "triton and not slow"
    (Triton reads TRITON_INTERPRET when kernels are defined, so it must be in
    the environment before anything imports llmaccel.)
Tests marked ``cuda`` are skipped where no CUDA GPU exists.
"""

import os

import pytest
import torch

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
HAS_CUDA = torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    skip_cuda = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_cuda)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
