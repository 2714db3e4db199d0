"""Benchmarks: `python -m dsv3_edu.bench {mla,balance,mtp,ep,all} [--json PATH]`.

Each prints a table of medians and ratios measured in one run; --json writes them.
"""

import argparse
from pathlib import Path

from .. import files


def write_json(path: Path, results: dict) -> None:
    """Write a benchmark's results as indented JSON, atomically (creating the folder), and say where.
    Each benchmark calls ``dsv3_edu.files.ensure_writable`` on the path before it measures anything."""
    files.write_json(path, results, quiet=False)


def check_json_arg(parser: argparse.ArgumentParser, path: str | Path | None) -> None:
    """Before any measuring: prove ``--json`` can be written, or stop with argparse's error naming why."""
    if path:
        try:
            files.ensure_writable(path, what="--json results")
        except files.OutputPathError as err:
            parser.error(str(err))
