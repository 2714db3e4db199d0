"""A learner's minutes per lesson, core route and in full, estimated from the notebook files with one method
(the instructor guide explains it); writes them where they are stated, or checks that they still agree.

Usage:
  python .ci/lesson_minutes.py            print the table (and what is out of date)
  python .ci/lesson_minutes.py --write    update each lesson's "**Time:**" sentence, every deep-dive banner's
                                          minutes, and the guide's generated tables; exit 1 if a core route
                                          is outside CORE_TARGET
  python .ci/lesson_minutes.py --check    exit 1 if anything stated differs from what the files give now

The method: markdown at WORDS_PER_MIN words a minute; code at LINES_PER_MIN non-blank, non-comment lines a
minute (reading a line, running the cell, reading its output), exercise cells excepted; each exercise
EXERCISE_MIN minutes (right at the first attempt) to EXERCISE_MAX (one wrong attempt, read the checker's
message, fix). A core route is sized so that a learner who gets each exercise right at the first attempt
takes CORE_TARGET minutes.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

import core_route
import exercise_cells
import nbformat
from colab_cell import TAG as COLAB_TAG

from dsv3_edu.files import atomic_write_text

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "notebooks" / "INSTRUCTORS.md"
WORDS_PER_MIN, LINES_PER_MIN = 155, 15
EXERCISE_MIN, EXERCISE_MAX = 5, 8
CORE_TARGET = (20, 30)
TIME_SENTENCE = re.compile(r"\*\*Time:\*\* .*?every lesson's numbers\.", re.S)
BANNER_MINUTES = re.compile(r"^(> \*\*Deep dive \(optional, ~)(\d+)( min\):\*\*)")
TABLE_START, TABLE_END = "<!-- minutes table: written by .ci/lesson_minutes.py -->", "<!-- end of minutes table -->"
DIVES_START, DIVES_END = "<!-- deep dives: written by .ci/lesson_minutes.py -->", "<!-- end of deep dives -->"


def lessons() -> list[Path]:
    return sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def cell_minutes(cell, exercise: bool = False) -> float:
    if COLAB_TAG in cell.get("metadata", {}).get("tags", []):
        return 0.0  # the Colab install cell: does nothing outside Colab, and nobody reads it as the lesson
    if cell.cell_type == "markdown":
        return len(cell.source.split()) / WORDS_PER_MIN
    if exercise:
        return 0.0  # counted as an exercise
    lines = [x for x in cell.source.splitlines() if x.strip() and not x.strip().startswith("#")]
    return len(lines) / LINES_PER_MIN


@dataclass
class Minutes:
    core_cells: int
    cells: int
    core_reading: float
    reading: float
    core_exercises: int
    exercises: int
    dives: list[tuple[int, float, str]]  # (banner cell index, minutes of the section, what it adds)

    def core(self, per_exercise: float) -> int:
        return round(self.core_reading + per_exercise * self.core_exercises)

    def full(self, per_exercise: float) -> int:
        return round(self.reading + per_exercise * self.exercises)


def measure(nb) -> Minutes:
    ex_cells = {ex.cell for ex in exercise_cells.find_exercises(nb)}
    deep = [core_route.is_deep(c) for c in nb.cells]
    each = [cell_minutes(c, i in ex_cells) for i, c in enumerate(nb.cells)]
    dives, current = [], None
    for i, cell in enumerate(nb.cells):
        if deep[i] and cell.cell_type == "markdown" and cell.source.lstrip().startswith(core_route.BANNER):
            what = cell.source.split(":**", 1)[-1].split("Skip it on the core route")[0].strip()
            current = [i, 0.0, what]
            dives.append(current)
        elif deep[i] and current is not None:
            current[1] += each[i] + (EXERCISE_MIN if i in ex_cells else 0)
        elif not deep[i]:
            current = None
    return Minutes(
        core_cells=deep.count(False),
        cells=len(nb.cells),
        core_reading=sum(m for m, d in zip(each, deep) if not d),
        reading=sum(each),
        core_exercises=sum(1 for i in ex_cells if not deep[i]),
        exercises=len(ex_cells),
        dives=[tuple(d) for d in dives],
    )


def banner_minutes(minutes: float) -> int:
    return max(1, round(minutes))


def time_sentence(m: Minutes) -> str:
    core_lo, core_hi, full_lo, full_hi = m.core(EXERCISE_MIN), m.core(EXERCISE_MAX), m.full(EXERCISE_MIN), m.full(
        EXERCISE_MAX)
    extra = m.exercises - m.core_exercises
    more = f" (and {extra} more in the deep dives)" if extra else ""
    return (
        f"**Time:** about {core_lo} minutes on the core route (the cells not marked as deep dives), with its "
        f"{m.core_exercises} exercises{more}; up to {core_hi} if every exercise takes a second attempt. The whole "
        f"lesson, deep dives included, takes about {full_lo}-{full_hi} minutes. These are estimates, not timings: "
        f"{WORDS_PER_MIN} words of text and {LINES_PER_MIN} lines of code a minute, {EXERCISE_MIN}-{EXERCISE_MAX} "
        "minutes an exercise, rates that match two learners' measured sessions (about 65 minutes for lesson 05, "
        "60 for lesson 08); the [instructor guide](INSTRUCTORS.md) has the method and every lesson's numbers."
    )


def sentence_case(text: str) -> str:
    """'The name map' -> 'the name map', but 'DeepSeek-V3's ...', 'MLA ...', 'FP8 ...' stay as written."""
    word = text.split(maxsplit=1)[0] if text.strip() else ""
    return text[0].lower() + text[1:] if word[:1].isupper() and (len(word) == 1 or word[1:].islower()) else text


def title(nb) -> str:
    return nb.cells[0].source.splitlines()[0].lstrip("# ").strip()


def guide_tables(measured: list[tuple[Path, object, Minutes]]) -> tuple[str, str]:
    rows = [
        "| lesson | cells on the core route | exercises on the core route | core route | core, every exercise "
        "twice | deep dives | full lesson |",
        "|---|---|---|---|---|---|---|",
    ]
    for path, _, m in measured:
        rows.append(
            f"| {path.name[:2]} | {m.core_cells} of {m.cells} | {m.core_exercises} of {m.exercises} | "
            f"{m.core(EXERCISE_MIN)} | {m.core(EXERCISE_MAX)} | {len(m.dives)} | "
            f"{m.full(EXERCISE_MIN)}-{m.full(EXERCISE_MAX)} |")
    dives = []
    for _, nb, m in measured:
        dives.append(f"- **{title(nb)}**")
        dives += [f"  - {sentence_case(what).rstrip('.')} (~{banner_minutes(mins)} min)" for _, mins, what in m.dives]
    return "\n".join(rows), "\n".join(dives)


def replace_between(text: str, start: str, end: str, body: str) -> str:
    if start not in text or end not in text:
        raise SystemExit(f"{GUIDE.name} lacks the markers {start!r} ... {end!r}: put them where the table goes")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{body}\n{end}{tail}"


def stale(path: Path, nb, m: Minutes) -> tuple[list[str], bool]:
    """What in this lesson states other minutes than the files give; updates nb in place."""
    problems, changed = [], False
    header = nb.cells[0]
    found = TIME_SENTENCE.search(header.source)
    if not found:
        problems.append(f"{path.name}: its first cell has no '**Time:** ... every lesson's numbers.' sentence")
    elif found.group(0) != time_sentence(m):
        problems.append(f"{path.name}: the header's minutes are out of date")
        header.source = header.source[: found.start()] + time_sentence(m) + header.source[found.end():]
        changed = True
    for index, mins, _ in m.dives:
        cell = nb.cells[index]
        hit = BANNER_MINUTES.match(cell.source.lstrip())
        if hit and int(hit.group(2)) != banner_minutes(mins):
            problems.append(f"{path.name}: cell {index}'s banner says ~{hit.group(2)} min, the section is "
                            f"~{banner_minutes(mins)}")
            cell.source = BANNER_MINUTES.sub(rf"\g<1>{banner_minutes(mins)}\g<3>", cell.source.lstrip(), count=1)
            changed = True
    return problems, changed


def write_notebook(path: Path, nb) -> None:
    """nbformat.write, atomically: a reader never sees half a notebook."""
    text = nbformat.writes(nb)
    atomic_write_text(path, text if text.endswith("\n") else text + "\n")


def main(argv: list[str]) -> int:
    write, check = "--write" in argv, "--check" in argv
    measured = [(p, nb := nbformat.read(p, as_version=4), measure(nb)) for p in lessons()]
    problems = []
    print(f"{'lesson':<36} {'core':>5} {'core x2':>8} {'core reading':>13} {'ex':>6} {'full':>8}")
    for path, nb, m in measured:
        flag = "" if CORE_TARGET[0] <= m.core(EXERCISE_MIN) <= CORE_TARGET[1] else "  <- outside the core target"
        print(f"{path.stem:<36} {m.core(EXERCISE_MIN):>5} {m.core(EXERCISE_MAX):>8} {m.core_reading:>13.1f} "
              f"{m.core_exercises:>3}/{m.exercises:<2} {m.full(EXERCISE_MIN):>4}-{m.full(EXERCISE_MAX):<3}{flag}")
        if flag:
            problems.append(f"{path.name}: the core route takes {m.core(EXERCISE_MIN)} minutes, outside "
                            f"{CORE_TARGET[0]}-{CORE_TARGET[1]}")
        found, changed = stale(path, nb, m)
        problems += found
        if write and changed:
            write_notebook(path, nb)
    table, dives = guide_tables(measured)
    text = GUIDE.read_text(encoding="utf-8")
    new = replace_between(replace_between(text, TABLE_START, TABLE_END, table), DIVES_START, DIVES_END, dives)
    if new != text:
        problems.append(f"{GUIDE.name}: its generated tables are out of date")
        if write:
            atomic_write_text(GUIDE, new)
    for line in problems:
        print(("fixed: " if write and "outside" not in line else "") + line)
    if write:
        return 1 if any("outside" in p for p in problems) else 0
    return 1 if check and problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
