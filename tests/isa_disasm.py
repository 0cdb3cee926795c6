"""Static ISA check of the built extension: which instructions each function
uses, and which functions each entry point can reach.

Why: a variant translation unit compiled with -mavx512f emits out-of-line
copies of every inline function and template it uses.  Such copies have
weak (COMDAT) linkage, and the linker keeps ONE copy per name for the whole
library -- possibly the AVX-512 one, which the generic code then calls on a
CPU without AVX-512 (SIGILL).  Per-capability namespaces stop this for our
own code; this module checks the linked result, including std:: and
pybind11 templates that no namespace of ours can cover.

Model (x86-64, read from ``objdump -d``):
  * a function uses AVX-512 if any instruction is EVEX-encoded (first opcode
    byte 0x62 after legacy/REX prefixes) or names a zmm or opmask (%k0-%k7)
    register (the VEX-encoded kmov* are AVX-512 too);
  * a function uses AVX if any instruction is VEX-encoded (0xc4 / 0xc5) or
    EVEX-encoded, or names a ymm/zmm register;
  * edges: direct call / jmp / jcc into another function, and any
    instruction whose rip-relative operand is the first byte of a function
    (its address is taken: OpenMP outlined bodies, tile tables filled at run
    time, pybind11 dispatchers).  Function pointers stored in initialized
    data (the variant registry's table, constexpr tile tables) are not
    followed: the registry is the gate the check is about, and a constexpr
    table inside a variant unit only points at code of that unit.
"""

from __future__ import annotations

import bisect
import re
import shutil
import subprocess
from dataclasses import dataclass, field

_LEGACY_PREFIXES = {0x66, 0x67, 0xF0, 0xF2, 0xF3, 0x2E, 0x36, 0x3E, 0x26, 0x64, 0x65}
_BRANCH = re.compile(r"^(call|jmp|j[a-z]{1,3})\s+([0-9a-f]+) <")
_RIP_REF = re.compile(r"#\s*([0-9a-f]+) <")
_AVX512_REG = re.compile(r"%zmm\d|%k[0-7]\b")
_AVX_REG = re.compile(r"%ymm\d|%zmm\d")
# AMX: the tile instructions (VEX-encoded, so they also count as AVX) and the tile registers.
_AMX_INSN = re.compile(r"^(?:tile\w*|tdp\w*|ldtilecfg|sttilecfg)\b|%tmm\d")
# AVX512-VBMI: the byte permutes and the multishift (the avx512vbmi level's only additions).
_VBMI_INSN = re.compile(r"^(?:vpermb|vpermi2b|vpermt2b|vpmultishiftqb)\b")
# AVX-VNNI: the VEX-encoded dot products (the avxvnni level's only additions; their EVEX forms are AVX-512 VNNI).
_VNNI_INSN = re.compile(r"^(?:\{vex\}\s*)?vpdp(?:bus|ws)ds?\b")


def objdump_available() -> bool:
    return shutil.which("objdump") is not None


@dataclass
class Function:
    name: str
    start: int
    size: int
    avx: bool = False
    avx512: bool = False
    first_avx: str = ""     # an example instruction, for messages
    first_avx512: str = ""
    amx: bool = False
    first_amx: str = ""
    vbmi: bool = False
    first_vbmi: str = ""
    avxvnni: bool = False   # a VEX-encoded vpdpbusd / vpdpwssd (AVX-VNNI)
    first_avxvnni: str = ""
    edges: set = field(default_factory=set)


def _opcode_kind(raw: list[int]) -> str:
    i = 0
    while i < len(raw) and raw[i] in _LEGACY_PREFIXES:
        i += 1
    if i < len(raw) and 0x40 <= raw[i] <= 0x4F:  # REX
        i += 1
    if i >= len(raw):
        return ""
    return {0xC4: "vex", 0xC5: "vex", 0x62: "evex"}.get(raw[i], "")


class Library:
    """Functions of a shared library with their ISA use and call/address-taken edges."""

    def __init__(self, path: str):
        self.path = path
        self.functions: dict[str, Function] = {}
        self._by_start: dict[int, Function] = {}
        self._read_symbols()
        self._starts = sorted(self._by_start)
        self._read_code()

    def _read_symbols(self):
        out = subprocess.run(["objdump", "-t", self.path], check=True, capture_output=True, text=True).stdout
        # "0000000000012340 l     F .text\t00000000000001a2              name"
        for line in out.splitlines():
            parts = line.split()
            if len(parts) < 6 or " F " not in line:
                continue
            m = re.match(r"^([0-9a-f]+) .{6}F (\S+)\t([0-9a-f]+)\s+(?:\.hidden\s+)?(\S+)$", line)
            if not m or m.group(2) != ".text":
                continue
            start, size, name = int(m.group(1), 16), int(m.group(3), 16), m.group(4)
            if size == 0 or start in self._by_start:
                continue
            f = Function(name, start, size)
            self.functions[name] = f
            self._by_start[start] = f

    def function_at(self, addr: int):
        i = bisect.bisect_right(self._starts, addr) - 1
        if i < 0:
            return None
        f = self._by_start[self._starts[i]]
        return f if addr < f.start + f.size else None

    def _read_code(self):
        raw_out = subprocess.run(["objdump", "-d", "-j", ".text", "-w", self.path], check=True,
                                 capture_output=True, text=True).stdout
        cur = None
        for line in raw_out.splitlines():
            # "   7c7b:\t48 8d 35 b0 f3 09 00 \tlea    0x9f3b0(%rip),%rsi        # a7032 <...>"
            parts = line.split("\t")
            if len(parts) < 3 or not parts[0].strip().endswith(":"):
                continue
            try:
                addr = int(parts[0].strip()[:-1], 16)
            except ValueError:
                continue
            if cur is None or not (cur.start <= addr < cur.start + cur.size):
                cur = self.function_at(addr)
                if cur is None:
                    continue
            insn = parts[2].strip()
            raw = [int(b, 16) for b in parts[1].split()]
            kind = _opcode_kind(raw)
            if kind == "evex" or _AVX512_REG.search(insn):
                if not cur.avx512:
                    cur.avx512, cur.first_avx512 = True, insn
            if _AMX_INSN.search(insn) and not cur.amx:
                cur.amx, cur.first_amx = True, insn
            if _VBMI_INSN.search(insn) and not cur.vbmi:
                cur.vbmi, cur.first_vbmi = True, insn
            if kind == "vex" and _VNNI_INSN.search(insn) and not cur.avxvnni:
                cur.avxvnni, cur.first_avxvnni = True, insn
            if kind or _AVX_REG.search(insn):
                if not cur.avx:
                    cur.avx, cur.first_avx = True, insn
            m = _BRANCH.match(insn)
            target = int(m.group(2), 16) if m else None
            if target is None:
                r = _RIP_REF.search(insn)
                if r and int(r.group(1), 16) in self._by_start:
                    target = int(r.group(1), 16)
            if target is not None:
                g = self.function_at(target)
                if g is not None and g is not cur:
                    cur.edges.add(g.name)

    def reachable(self, roots) -> set[str]:
        seen, todo = set(), [r for r in roots if r in self.functions]
        while todo:
            name = todo.pop()
            if name in seen:
                continue
            seen.add(name)
            todo.extend(self.functions[name].edges - seen)
        return seen


def demangle(names) -> dict[str, str]:
    names = list(names)
    if not names or shutil.which("c++filt") is None:
        return {n: n for n in names}
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()
    return dict(zip(names, out)) if len(out) == len(names) else {n: n for n in names}
