"""Every ```python block of README.md runs as written, so the examples cannot silently rot.

Each block runs on its own (fresh namespace, as a reader pasting it would),
in README order.  A block that cannot run here says so in a comment line:

* ``# readme-test: skip (reason)``  -- never run (network, downloads, ...);
* ``# readme-test: cuda``           -- run only where a CUDA GPU exists.
"""

import re
import textwrap
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"
FENCE = re.compile(r"^([ \t]*)```python[^\n]*\n(.*?)^\1```[ \t]*$", re.S | re.M)
SKIP = re.compile(r"#\s*readme-test:\s*skip\b\s*(.*)")
CUDA = re.compile(r"#\s*readme-test:\s*cuda\b")


def python_blocks(text: str):
    """(first line number of the code, code) for every ```python fence."""
    out = []
    for m in FENCE.finditer(text):
        line = text.count("\n", 0, m.start(2)) + 1
        out.append((line, textwrap.dedent(m.group(2))))
    return out


BLOCKS = python_blocks(README.read_text(encoding="utf-8"))


def test_readme_has_the_examples():
    assert len(BLOCKS) >= 3, "README.md lost its python examples (or the fence pattern no longer matches them)"
    text = "\n".join(code for _, code in BLOCKS)
    for call in ("llmaccel.quantize_(", "llmaccel.smooth_(", "filter_fn=", "backends.explain("):
        assert call in text, call


def test_extraction_and_markers():
    sample = ("x\n```python\nprint(1)\n```\n\n  ```python\n  # readme-test: skip (needs the network)\n"
              "  import urllib\n  ```\n```bash\nls\n```\n")
    blocks = python_blocks(sample)
    assert [code for _, code in blocks] == ["print(1)\n", "# readme-test: skip (needs the network)\nimport urllib\n"]
    assert [line for line, _ in blocks] == [3, 7]
    assert SKIP.search(blocks[1][1]).group(1) == "(needs the network)" and not SKIP.search(blocks[0][1])


@pytest.mark.parametrize("line, code", BLOCKS, ids=[f"README.md:{line}" for line, _ in BLOCKS])
def test_readme_block_runs(line, code):
    skip = SKIP.search(code)
    if skip:
        pytest.skip(f"README.md:{line} is marked readme-test: skip {skip.group(1)}".rstrip())
    if CUDA.search(code) and not torch.cuda.is_available():
        pytest.skip(f"README.md:{line} needs a CUDA GPU")
    namespace = {"__name__": "__readme__"}
    exec(compile(code, f"README.md:{line}", "exec"), namespace)  # line numbers in tracebacks are README's - 1
