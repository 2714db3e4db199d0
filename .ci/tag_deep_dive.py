"""Mark a run of cells as a deep dive: tag them `deep-dive` and insert the banner cell before the first.

Usage: python .ci/tag_deep_dive.py notebooks/NN_x.ipynb FIRST_ID LAST_ID "What it adds."
FIRST_ID and LAST_ID are cell ids (the range is inclusive). The banner states the section's minutes
(the instructor guide's rates, from .ci/lesson_minutes.py). Only metadata changes and one new cell with a fresh
id; no source or output is touched. Then run `make core NB=...` and `python .ci/lesson_minutes.py --write`.
To take a range out of a deep dive again: python .ci/tag_deep_dive.py NOTEBOOK --untag FIRST_ID LAST_ID
(a banner left with nothing after it goes).
"""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import nbformat
from core_route import BANNER, TAG
from lesson_minutes import banner_minutes, cell_minutes, write_notebook


def minutes(cells) -> int:
    return banner_minutes(sum(cell_minutes(c) for c in cells))


def cell_range(nb, first_id: str, last_id: str) -> tuple[int, int]:
    """Indexes of the first and last cell of an inclusive range given by cell ids, or a message saying what is wrong."""
    ids = [c.get("id") for c in nb.cells]
    for cid in (first_id, last_id):
        if cid not in ids:
            raise SystemExit(f"no cell with id {cid!r} in this notebook (ids are in the .ipynb file)")
    a, b = ids.index(first_id), ids.index(last_id)
    if b < a:
        raise SystemExit(f"cell {last_id!r} comes before {first_id!r}: give the first cell of the range first")
    return a, b


def tag_deep_dive(nb, first_id: str, last_id: str, what: str) -> None:
    ids = [c.get("id") for c in nb.cells]
    a, b = cell_range(nb, first_id, last_id)
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


def untag(nb, first_id: str, last_id: str) -> None:
    """Put a range back on the core route; a banner whose section is now empty is removed."""
    a, b = cell_range(nb, first_id, last_id)
    for cell in nb.cells[a : b + 1]:
        tags = cell.metadata.get("tags", [])
        if TAG in tags:
            tags.remove(TAG)
            if not tags:
                del cell.metadata["tags"]
    is_banner = [c.cell_type == "markdown" and TAG in c.metadata.get("tags", []) and c.source.startswith(BANNER)
                 for c in nb.cells]
    orphans = [i for i, banner in enumerate(is_banner)
               if banner and (i + 1 == len(nb.cells) or TAG not in nb.cells[i + 1].metadata.get("tags", [])
                              or is_banner[i + 1])]
    for i in reversed(orphans):
        del nb.cells[i]


def main() -> int:
    args = sys.argv[1:]
    if len(args) == 4 and args[1] == "--untag":
        args = [args[0], *args[2:]]
        action = untag
    elif len(args) == 4:
        action = tag_deep_dive
    else:
        print(__doc__)
        return 2
    path = Path(args[0])
    nb = nbformat.read(path, as_version=4)
    action(nb, *args[1:])
    write_notebook(path, nb)
    return 0


if __name__ == "__main__":
    sys.exit(main())
