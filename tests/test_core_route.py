"""Every lesson has a core route and deep dives, tagged as `.ci/core_route.py` reads them (no execution
here: `make core` runs each core route on its own in CI)."""

from pathlib import Path

import core_route
import exercise_cells
import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
LESSONS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def test_every_lesson_is_found():
    assert [p.name[:2] for p in LESSONS] == [f"{i:02d}" for i in range(12)]


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.stem)
def test_lesson_has_a_core_route_and_announced_deep_dives(path):
    nb = nbformat.read(path, as_version=4)
    assert core_route.tagging_problems(nb) == []
    deep = [core_route.is_deep(c) for c in nb.cells]
    banners = [c for i, c in enumerate(nb.cells) if deep[i] and (i == 0 or not deep[i - 1])]
    assert banners, "no deep dive"
    for cell in banners:
        text = cell.source.strip()
        assert text.startswith(core_route.BANNER + " (optional, ~") and "min):**" in text, text[:120]
        assert "Skip it on the core route" in text, text[:120]
    # The core route keeps the lesson's frame and every exercise.
    assert not deep[0] and not deep[1], "the title and the setup cell are core"
    recap = [i for i, c in enumerate(nb.cells) if c.cell_type == "markdown" and c.source.startswith("## Recap")]
    assert recap and not any(deep[i] for i in recap), "the recap is core"
    for ex in exercise_cells.find_exercises(nb):
        assert not deep[ex.cell], f"exercise {ex.name} (cell {ex.cell}) is in a deep dive"
    # Cell ids stay unique after the banners were inserted (nbdime merges cell by cell).
    ids = [c.get("id") for c in nb.cells]
    assert len(set(ids)) == len(ids)


def test_tag_deep_dive_tags_a_range_and_inserts_its_banner():
    import tag_deep_dive

    nb = nbformat.v4.new_notebook()
    for i, text in enumerate(["# title", "x = 1", "## More", "y = x + 1", "## Recap"]):
        cell = (nbformat.v4.new_markdown_cell if text.startswith("#") else nbformat.v4.new_code_cell)(text)
        cell.id = f"c{i}"
        nb.cells.append(cell)
    assert "no cell is tagged" in core_route.tagging_problems(nb)[0]
    tag_deep_dive.tag_deep_dive(nb, "c2", "c3", "More of it.")
    assert core_route.tagging_problems(nb) == []
    assert [c.id for c in nb.cells if c.id.startswith("c")] == ["c0", "c1", "c2", "c3", "c4"]
    banner = nb.cells[2]
    assert banner.source.startswith(core_route.BANNER + " (optional, ~1 min):** More of it. Skip it")
    assert [core_route.is_deep(c) for c in nb.cells] == [False, False, True, True, True, False]
    tag_deep_dive.tag_deep_dive(nb, "c2", "c3", "More of it.")  # again: no second banner
    assert len(nb.cells) == 6
    with pytest.raises(SystemExit, match="no cell with id"):
        tag_deep_dive.tag_deep_dive(nb, "nope", "c3", "x")


def test_instructor_guide_cites_cells_that_exist_on_the_core_route():
    import re

    guide = (ROOT / "notebooks" / "INSTRUCTORS.md").read_text(encoding="utf-8")
    cited = set(re.findall(r"`([0-9a-f]{8})`", guide))
    assert len(cited) >= 8, "the guide points each learner question at a cell id"
    core_ids = {c.get("id") for p in LESSONS for c in nbformat.read(p, as_version=4).cells if not core_route.is_deep(c)}
    assert sorted(cited - core_ids) == []
