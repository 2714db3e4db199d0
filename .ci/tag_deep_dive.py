"""Mark a run of cells as a deep dive: tag them `deep-dive` and insert the banner cell before the first.

Usage: python .ci/tag_deep_dive.py notebooks/NN_x.ipynb FIRST_ID LAST_ID "What it adds."
FIRST_ID and LAST_ID are cell ids (the range is inclusive). The banner states the minutes estimated with the
instructor guide's rates (markdown at 155 words a minute, code at 15 lines a minute). Only metadata changes
and one new cell with a fresh id; no source or output is touched. Then run `make core NB=...`.
"""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import nbformat
from core_route import BANNER, TAG

WORDS_PER_MIN, LINES_PER_MIN = 155, 15


def minutes(cells) -> int:
    total = 0.0
    for cell in cells:
        if cell.cell_type == "markdown":
            total += len(cell.source.split()) / WORDS_PER_MIN
        else:
            lines = [x for x in cell.source.splitlines() if x.strip() and not x.strip().startswith("#")]
            total += len(lines) / LINES_PER_MIN
    return max(1, round(total + 0.5))


def tag_deep_dive(nb, first_id: str, last_id: str, what: str) -> None:
    ids = [c.get("id") for c in nb.cells]
    for cid in (first_id, last_id):
        if cid not in ids:
            raise SystemExit(f"no cell with id {cid!r} in this notebook (ids are in the .ipynb file)")
    a, b = ids.index(first_id), ids.index(last_id)
    if b < a:
        raise SystemExit(f"cell {last_id!r} comes before {first_id!r}: give the first cell of the range first")
    for cell in nb.cells[a : b + 1]:
        tags = cell.metadata.setdefault("tags", [])
        if TAG not in tags:
            tags.append(TAG)
    if a > 0 and TAG in nb.cells[a - 1].metadata.get("tags", []) and nb.cells[a - 1].source.startswith(BANNER):
        return  # the range already has its banner
    banner = nbformat.v4.new_markdown_cell(
        f"{BANNER} (optional, ~{minutes(nb.cells[a : b + 1])} min):** {what.strip()} "
        "Skip it on the core route; nothing later depends on it.")
    while (new_id := "dd" + uuid.uuid4().hex[:6]) in ids:
        pass
    banner.id = new_id
    banner.metadata["tags"] = [TAG]
    nb.cells.insert(a, banner)


def main() -> int:
    if len(sys.argv) != 5:
        print(__doc__)
        return 2
    path = Path(sys.argv[1])
    nb = nbformat.read(path, as_version=4)
    tag_deep_dive(nb, *sys.argv[2:])
    tmp = path.with_suffix(".ipynb.tmp")
    nbformat.write(nb, tmp)
    tmp.replace(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
