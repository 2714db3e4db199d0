"""pytest plugin: print how long each notebook took under nbval (all its cells together)."""

from collections import defaultdict

_totals: dict[str, float] = defaultdict(float)


def pytest_runtest_logreport(report):
    # report.location, not nodeid: with --nbval-sanitize-with nbval's node ids lose the path.
    path = str(report.location[0])
    if path.endswith(".ipynb"):
        _totals[path] += report.duration


def pytest_terminal_summary(terminalreporter):
    if not _totals:
        return
    terminalreporter.section("time per notebook (kernel start + all cells)")
    for path, seconds in sorted(_totals.items()):
        terminalreporter.write_line(f"{seconds:7.1f} s  {path}")
    terminalreporter.write_line(f"{sum(_totals.values()):7.1f} s  total (notebooks run 2 at a time)")
