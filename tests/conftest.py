"""Shared test configuration.

scripts/test.sh runs these tests in labelled passes (its run_pass lines), among them:
  * default:             pytest tests
  * triton-interpreter:  TRITON_INTERPRET=1 LLMACCEL_BACKEND=triton pytest tests -m "triton and not slow"
    (Triton reads TRITON_INTERPRET when kernels are defined, so it must be in
    the environment before anything imports llmaccel.)
Tests marked ``cuda`` are skipped where no CUDA GPU exists.
"""

import os
import tempfile

# torch.compile tests get their own Inductor cache, for this run only.  Inductor's FX graph cache keys a
# compiled graph by its code and inputs, not by the fake (meta) rules of the custom ops in it, so a graph
# compiled by an older llmaccel whose op returned other strides would be reused and fail its own stride
# asserts (the twelfth session changed attention's output layout and hit exactly that).  An explicit
# TORCHINDUCTOR_CACHE_DIR is respected.
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="llmaccel-tests-inductor-"))

import pytest  # noqa: E402
import torch  # noqa: E402

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
