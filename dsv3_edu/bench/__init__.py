"""Benchmarks: `python -m dsv3_edu.bench {mla,balance,mtp,all} [--json PATH]`.

Each prints a table of medians and ratios measured in one run; --json writes them.
"""

import json
from pathlib import Path


def write_json(path: Path, results: dict) -> None:
    """Write a benchmark's results as indented JSON (creating the folder) and say where."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {path}")
