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
    # The core route keeps the lesson's frame and at least two exercises (the course asks 2-4 per lesson).
    assert not deep[0] and not deep[1], "the title and the setup cell are core"
    recap = [i for i, c in enumerate(nb.cells) if c.cell_type == "markdown" and c.source.startswith("## Recap")]
    assert recap and not any(deep[i] for i in recap), "the recap is core"
    core_exercises = [ex.name for ex in exercise_cells.find_exercises(nb) if not deep[ex.cell]]
    assert len(core_exercises) >= 2, f"only {core_exercises} on the core route"
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


def test_untag_puts_a_range_back_on_the_core_route_and_drops_an_empty_banner():
    import tag_deep_dive

    nb = nbformat.v4.new_notebook()
    for i, text in enumerate(["# title", "x = 1", "## More", "y = x + 1", "z = 2", "## Recap"]):
        cell = (nbformat.v4.new_markdown_cell if text.startswith("#") else nbformat.v4.new_code_cell)(text)
        cell.id = f"c{i}"
        nb.cells.append(cell)
    tag_deep_dive.tag_deep_dive(nb, "c2", "c4", "More of it.")
    tag_deep_dive.untag(nb, "c4", "c4")  # the tail comes back: the banner stays
    assert [core_route.is_deep(c) for c in nb.cells] == [False, False, True, True, True, False, False]
    assert core_route.tagging_problems(nb) == []
    tag_deep_dive.untag(nb, "c2", "c3")  # the whole section comes back: its banner goes
    assert [c.id for c in nb.cells] == [f"c{i}" for i in range(6)]
    assert not any(core_route.is_deep(c) for c in nb.cells)
    assert all("tags" not in c.metadata for c in nb.cells), "untag leaves the metadata as it found it"


def test_every_core_route_fits_the_workshop_and_every_stated_minute_is_current():
    """Each core route takes 20-30 minutes by the guide's method (exercises right at the first attempt), and
    the minutes the lessons, banners and guide state are what .ci/lesson_minutes.py computes from the files."""
    import lesson_minutes

    for path in LESSONS:
        minutes = lesson_minutes.measure(nbformat.read(path, as_version=4))
        low, high = lesson_minutes.CORE_TARGET
        assert low <= minutes.core(lesson_minutes.EXERCISE_MIN) <= high, (path.name, minutes)
    assert lesson_minutes.main(["--check"]) == 0, "run: python .ci/lesson_minutes.py --write"


def test_lesson_minutes_follow_the_method_on_a_hand_counted_notebook():
    import lesson_minutes

    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell(" ".join(["word"] * 310)),  # 2 minutes
        nbformat.v4.new_code_cell("# a comment\n\n" + "\n".join(f"x{i} = {i}" for i in range(30))),  # 2 minutes
        nbformat.v4.new_markdown_cell("> **Deep dive (optional, ~9 min):** More. Skip it on the core route."),
        nbformat.v4.new_code_cell("\n".join(f"y{i} = {i}" for i in range(45))),  # 3 minutes
    ]
    nb.cells[2].metadata["tags"] = nb.cells[3].metadata["tags"] = ["deep-dive"]
    m = lesson_minutes.measure(nb)
    assert round(m.core_reading, 6) == 4.0 and m.core_exercises == 0
    # The Colab install cell (.ci/colab_cell.py) is setup, not lesson: applying it changes no minute.
    import colab_cell

    colab = nbformat.from_dict(colab_cell.apply({"cells": [dict(c) for c in nb.cells]}, "https://github.com/someone/dsv3-edu"))
    assert len(colab.cells) == 5 and lesson_minutes.measure(colab).core_reading == m.core_reading
    assert round(m.reading, 2) == round(4 + 3 + 12 / 155, 2)
    assert [(i, round(x, 2)) for i, x, _ in m.dives] == [(2, 3.0)]


def test_instructor_guide_cites_cells_that_exist_on_the_core_route():
    import re

    guide = (ROOT / "notebooks" / "INSTRUCTORS.md").read_text(encoding="utf-8")
    cited = set(re.findall(r"`([0-9a-f]{8})`", guide))
    assert len(cited) >= 8, "the guide points each learner question at a cell id"
    core_ids = {c.get("id") for p in LESSONS for c in nbformat.read(p, as_version=4).cells if not core_route.is_deep(c)}
    assert sorted(cited - core_ids) == []
