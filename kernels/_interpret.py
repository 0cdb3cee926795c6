"""Whether the Triton kernels run in Triton's CPU interpreter: the one place that reads ``TRITON_INTERPRET``.

Read once at import, like Triton itself: the interpreter is chosen when kernels are defined, so flipping the
variable later changes nothing.  No Triton import here, so ``llmaccel.backends`` can ask without loading Triton.
"""

import os

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
