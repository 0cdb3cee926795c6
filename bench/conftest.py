"""pytest-benchmark suites for llmaccel: ``pytest bench --benchmark-only``.

* Collects ``bench_*.py`` here (the project's ``python_files`` is pytest's
  default ``test_*.py`` and ``testpaths`` is ``tests``, so a plain ``pytest``
  never runs benchmarks).
* Records each benchmark's median per group and impl, and prints a
  "speedup vs peer" table at the end of the run: ``ratio = peer / ours``,
  above 1 means llmaccel is faster.

Each impl runs in its own test here, one after the other, so drift on a busy
machine can bias the ratio; ``python -m llmaccel.bench`` interleaves the two
call by call and is the figure to quote.

``pytest bench --benchmark-disable`` runs every case once, untimed (a quick
check that the suites and the correctness checks work).
"""

from __future__ import annotations

import pytest

OURS = "llmaccel"

# group -> impl -> median seconds, in the order the tests ran
_MEDIANS: dict[str, dict[str, float]] = {}


def pytest_collect_file(file_path, parent):
    if file_path.suffix != ".py" or not file_path.name.startswith("bench_"):
        return None
    if parent.session.isinitpath(file_path):
        return None  # named on the command line: pytest's python plugin collects it already
    return pytest.Module.from_parent(parent, path=file_path)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if call.when == "call" and report.passed:
        bm = getattr(item, "funcargs", {}).get("benchmark")
        stats = getattr(bm, "stats", None) if bm is not None else None
        if stats is not None:
            params = getattr(getattr(item, "callspec", None), "params", {})
            impl = params.get("impl", item.name)
            _MEDIANS.setdefault(bm.group or item.originalname, {})[impl] = stats.stats.median
    return report


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.3f}"


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not _MEDIANS:
        return
    tr = terminalreporter
    tr.write_sep("-", "speedup vs peer (ratio = peer median / ours median; > 1: llmaccel is faster)")
    rows = []
    for group, by_impl in _MEDIANS.items():
        ours = by_impl.get(OURS)
        peers = [(k, v) for k, v in by_impl.items() if k != OURS] or [("-", None)]
        for peer, med in peers:
            ratio = f"{med / ours:.2f}x" if ours and med else "-"
            rows.append((group, _ms(ours), peer, _ms(med), ratio))
    heads = ("group", "ours median ms", "peer", "peer median ms", "ratio")
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(heads)]
    for cells in [heads] + rows:
        padded = (c.ljust(w) if i in (0, 2) else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
        tr.write_line("  ".join(padded))
    tr.write_line("(each impl timed in its own test, not interleaved: `python -m llmaccel.bench` gives the "
                  "interleaved ratio)")
