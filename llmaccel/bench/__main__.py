"""``python -m llmaccel.bench``: see :mod:`llmaccel.bench.cli`."""

import sys

from .cli import main

sys.exit(main())
