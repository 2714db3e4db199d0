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


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """``parser.parse_args(argv)``, then a test write of ``--json`` (if given) before anything is measured: an
    unwritable path is a usage error now, not a lost run later."""
    args = parser.parse_args(argv)
    if getattr(args, "json", None):
        try:
            files.ensure_writable(args.json, what="--json results")
        except files.OutputPathError as err:
            parser.error(str(err))
    return args
