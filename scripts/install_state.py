"""What scripts/install.sh may skip: installed versions and the llmaccel build stamp.

Standard library only (it runs before anything is installed; ``packaging``
comes from pip's vendored copy when it is not installed itself).

    python scripts/install_state.py satisfied "torch==2.13.0"       # exit 0: installed at a matching version
    python scripts/install_state.py satisfied -r requirements-dev.txt
    python scripts/install_state.py llmaccel-current                 # exit 0: editable install of this checkout,
                                                                     #   C++ build up to date (stamp matches)
    python scripts/install_state.py write-stamp                      # after a successful build

Each check prints one line saying why not, when it fails.  The stamp
(``build/llmaccel-install.stamp``, git-ignored, so a fresh clone has none
and always builds) is a hash of everything the C++ build reads: csrc/,
setup.py, pyproject.toml, the build-time environment variables and the
Python it was built for.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAMP = os.path.join(ROOT, "build", "llmaccel-install.stamp")
BUILD_ENV = ("LLMACCEL_NATIVE", "LLMACCEL_DEBUG", "CC", "CXX", "CFLAGS", "CXXFLAGS", "LDFLAGS")

try:
    from packaging.requirements import Requirement
    from packaging.version import Version
except ImportError:  # a bare Python: pip's own copy
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.version import Version


def _requirements(args: list[str]) -> list[str]:
    if args[:1] == ["-r"]:
        lines = []
        with open(args[1]) as f:
            for line in f:
                line = line.split("#", 1)[0].strip()
                if line:
                    lines.append(line)
        return lines
    return args


def satisfied(args: list[str]) -> int:
    for line in _requirements(args):
        req = Requirement(line)
        try:
            have = md.version(req.name)
        except md.PackageNotFoundError:
            print(f"  {req.name}: not installed")
            return 1
        if req.specifier and not req.specifier.contains(Version(have), prereleases=True):
            print(f"  {req.name}: {have} installed, {line} wanted")
            return 1
    return 0


def fingerprint() -> str:
    h = hashlib.sha256()
    files = sorted(os.path.relpath(os.path.join(d, f), ROOT)
                   for d, _, names in os.walk(os.path.join(ROOT, "csrc")) for f in names)
    for rel in files + ["setup.py", "pyproject.toml"]:
        h.update(rel.encode() + b"\0")
        with open(os.path.join(ROOT, rel), "rb") as f:
            h.update(hashlib.sha256(f.read()).digest())
    for var in BUILD_ENV:
        h.update(f"{var}={os.environ.get(var, '')}\0".encode())
    h.update(f"{sys.executable}\0{sys.version}".encode())
    return h.hexdigest()


def llmaccel_current() -> int:
    try:
        dist = md.distribution("llmaccel")
    except md.PackageNotFoundError:
        print("  llmaccel: not installed")
        return 1
    url = json.loads(dist.read_text("direct_url.json") or "{}")
    editable = url.get("dir_info", {}).get("editable", False)
    where = url.get("url", "").removeprefix("file://")
    if not editable or os.path.realpath(where) != os.path.realpath(ROOT):
        print(f"  llmaccel: installed from {where or '?'}{'' if editable else ' (not editable)'}, not this checkout")
        return 1
    built = [f for f in os.listdir(os.path.join(ROOT, "llmaccel")) if f.startswith("_C.") and f.endswith(".so")]
    if not built:
        print("  llmaccel: C++ extension llmaccel/_C*.so not built")
        return 1
    try:
        with open(STAMP) as f:
            stamp = f.read().strip()
    except OSError:
        print("  llmaccel: no build stamp (first install from this checkout)")
        return 1
    if stamp != fingerprint():
        print("  llmaccel: csrc/, setup.py, pyproject.toml, the build environment or the Python changed since the "
              "last build")
        return 1
    return 0


def write_stamp() -> int:
    os.makedirs(os.path.dirname(STAMP), exist_ok=True)
    with open(STAMP, "w") as f:
        f.write(fingerprint() + "\n")
    return 0


def main(argv: list[str]) -> int:
    cmd, args = (argv[0], argv[1:]) if argv else ("", [])
    if cmd == "satisfied" and args:
        return satisfied(args)
    if cmd == "llmaccel-current":
        return llmaccel_current()
    if cmd == "write-stamp":
        return write_stamp()
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
