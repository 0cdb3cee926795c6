"""The benchmark's output: the results table (plain, markdown, wide) and the JSON / CSV files."""

from __future__ import annotations

import csv
import json
import textwrap
from typing import Any, Optional, Sequence

TABLE_WIDTH = 120        # the default table fits this many columns (--wide: every column)
_RATE_KEYS = {"GOP/s": "gops", "GFLOP/s": "gflops", "GB/s": "gbps"}  # row keys of each throughput unit


# Short peer names for the default table (--wide and the JSON/CSV keep the registry's names).
_PEER_SHORT = {
    "F.scaled_dot_product_attention": "SDPA",
    "torch.ao dynamic int8": "torch.ao int8",
    "read of packed weights": "read (ceiling)",
    "memcpy of weight bytes": "memcpy",
}

# (key, heading) of the default table: one section per op, then a row per case.
_COLUMNS = [
    ("case", "case"), ("backend", "backend"), ("ours_ms", "ours ms"), ("peer_short", "peer"), ("peer_ms", "peer ms"),
    ("speedup", "speedup"), ("paired", "q1-q3"), ("rates", "throughput ours / peer"),
]
# --wide and markdown: everything.
_WIDE_COLUMNS = [
    ("op", "op"), ("case", "case"), ("shape", "shape"), ("backend", "backend"),
    ("ours_ms", "ours ms"), ("ours_rate", "ours throughput"), ("peer", "peer"), ("peer_ms", "peer ms"),
    ("peer_rate", "peer throughput"), ("speedup", "speedup"), ("paired", "q1-q3"),
    ("ratio_of_medians", "ratio of medians"), ("reps", "calls"), ("foreign_cpu", "other procs"),
]
_NUMERIC = {"ours ms", "peer ms", "speedup", "q1-q3", "ratio of medians", "calls", "other procs"}


def _num(v: float) -> str:
    """Three significant digits: 785, 28.6, 5.07, 0.681."""
    return f"{v:.0f}" if v >= 100 else f"{v:.3g}" if v >= 1 else f"{v:.2g}"


def _cell(row: dict[str, Any], key: str) -> str:
    ok = row.get("status") == "ok"
    if key == "peer_short":
        return _PEER_SHORT.get(row.get("peer", "-"), row.get("peer", "-"))
    if not ok and key in ("ours_ms", "ours_rate", "peer_ms", "peer_rate", "speedup", "paired", "rates",
                          "ratio_of_medians", "reps"):
        return row.get("status", "?") if key == "speedup" else "-"
    ref = [side for side in ("peer", "ours") if row.get(f"{side}_reference_path")]
    if key in ("ours_ms", "peer_ms"):
        v = row[key]
        return f"{v:.3f}" if v < 10 else f"{v:.2f}"
    if key == "foreign_cpu":
        v = row.get(key)
        return "-" if v is None else f"{v:.0%} cpu"
    if key == "speedup":
        return f"{ref[0]}-ref" if ref else f"{row['speedup']:.2f}x"
    if key == "paired":
        return "-" if ref else f"{row['paired_q1']:.2f}-{row['paired_q3']:.2f}"
    if key == "ratio_of_medians":
        v = row.get(key)
        return "-" if v is None else f"{v:.2f}x"
    if key == "rates":
        unit = row.get("unit")
        if not unit:
            return "-"
        k = _RATE_KEYS[unit]
        return f"{_num(row[f'ours_{k}'])} / {_num(row[f'peer_{k}'])} {unit}"
    return str(row.get(key, "-"))


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[:max(1, width - 1)] + "~"


def format_table(rows: Sequence[dict[str, Any]], markdown: bool = False, wide: bool = False,
                 width: int = TABLE_WIDTH) -> str:
    """The results table.

    Default: at most ``width`` characters per line, one section per op (the op's name on a line of its own),
    short peer names, one throughput column.  ``wide`` (and ``markdown``, for RESULTS.md): every column.
    Under the table, a note per case where a side ran a reference path (:func:`flag_reference_paths`).
    """
    notes = [r["reference_note"] for r in rows if r.get("reference_note")]
    if markdown or wide:
        columns = [(k, h) for k, h in _WIDE_COLUMNS if k != "foreign_cpu" or any(r.get(k) is not None for r in rows)]
        heads = [h for _, h in columns]
        body = [[_cell(r, k) for k, _ in columns] for r in rows]
        if markdown:
            out = ["| " + " | ".join(heads) + " |", "|" + "|".join("---" for _ in heads) + "|"]
            out += ["| " + " | ".join(cells) + " |" for cells in body]
            return "\n".join(out + ([""] + [f"* {n}" for n in notes] if notes else []))
        return _plain_table(heads, [(None, b) for b in body], notes, width=None)

    heads = [h for _, h in _COLUMNS]
    lines: list[tuple[Optional[str], list[str]]] = []
    op = None
    for r in rows:
        if r.get("op") != op:
            op = r.get("op")
            lines.append((str(op), []))
        lines.append((None, [_cell(r, k) for k, _ in _COLUMNS]))
    return _plain_table(heads, lines, notes, width=width)


def _plain_table(heads: list[str], lines: list[tuple[Optional[str], list[str]]], notes: list[str],
                 width: Optional[int]) -> str:
    body = [cells for title, cells in lines if title is None]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(heads)]
    if width is not None:
        over = sum(widths) + 2 * (len(widths) - 1) - width
        if over > 0:  # shorten the first (case) column rather than exceed the width
            widths[0] = max(len(heads[0]), widths[0] - over)

    def fmt(cells):
        return "  ".join(_fit(c, w).rjust(w) if h in _NUMERIC else _fit(c, w).ljust(w)
                         for c, w, h in zip(cells, widths, heads)).rstrip()

    out = [fmt(heads), fmt(["-" * w for w in widths])]
    out += [title if title is not None else fmt(cells) for title, cells in lines]
    for n in notes:
        out += [""] + _wrap(f"ref path: {n}", width or 119)
    return "\n".join(out)


def _wrap(text: str, width: int) -> list[str]:
    return textwrap.wrap(text, width=width, subsequent_indent="  ")


def _write_json(path: str, cond: dict, timing: dict, rows: list[dict]) -> None:
    with open(path, "w") as f:
        json.dump({"conditions": cond, "timing": timing,
                   "results": [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]}, f, indent=2)
        f.write("\n")


_CSV_FIELDS = ["op", "case", "shape", "device", "backend", "status", "reps", "unit", "ours_ms", "ours_min_ms",
               "ours_iqr_ms", "ours_gops", "ours_gflops", "ours_gbps", "peer", "peer_ms", "peer_min_ms", "peer_iqr_ms",
               "peer_gops", "peer_gflops", "peer_gbps", "speedup", "paired_q1", "paired_q3", "ratio_of_medians",
               "peer_reference_path", "fp32_gemm_gflops", "read_gbps", "foreign_cpu", "error"]


def _write_csv(path: str, cond: dict, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["date"] + _CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({"date": cond["date"], **r})


# --------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------
