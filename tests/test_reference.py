"""The course's reference page, notebooks/REFERENCE.md, defines every citation key, trap number and section the
package, the tests and the lessons cite; and every lesson's "Stuck?" hint names an object that exists.

The scan reads prose only: docstrings, comments and string literals of Python files, markdown cells and the
comments and strings of code cells in notebooks, and markdown files. It finds citations by their form, so it
keeps working when files move or are renamed.
"""

from __future__ import annotations

import importlib
import io
import json
import re
import tokenize
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "notebooks" / "REFERENCE.md"

# A citation key is a bracketed word with two capitals, or a capital and a digit ([V2], [OFF], [DSMoE], [YaRN]),
# or one of the lower-case project names; not preceded by a word character or "]" (so list[MoE] is a type).
KEY = re.compile(r"(?<![\w\]])\[([A-Z][A-Za-z]*[A-Z0-9][A-Za-z0-9]*|vLLM)\]")
TRAP = re.compile(r"\btraps?[ _]?(\d+)(?:\s*(?:-|–|and|to)\s*(\d+))?", re.IGNORECASE)
SECTION = re.compile(r"REFERENCE\.md,? section (\d+)")
ANCHOR_LINK = re.compile(r"REFERENCE\.md#([\w-]+)")
HINT = re.compile(r"Stuck\?[^`]*`(dsv3_edu(?:\.\w+)+)\?\?`")


def prose_of_python(source: str) -> str:
    """Comments and string literals of a Python source (docstrings included), one per line."""
    parts = []
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type in (tokenize.COMMENT, tokenize.STRING) or tok.type == getattr(tokenize, "FSTRING_MIDDLE", -1):
            parts.append(tok.string)
    return "\n".join(parts)


def notebook_cells(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))["cells"]


def prose_of_notebook(path: Path) -> str:
    parts = []
    for cell in notebook_cells(path):
        source = "".join(cell["source"])
        if cell["cell_type"] == "markdown":
            parts.append(source)
        elif cell["cell_type"] == "code":
            lines = [line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))]
            try:
                parts.append(prose_of_python("\n".join(lines) + "\n"))
            except (tokenize.TokenError, IndentationError, SyntaxError):
                parts.append(source)
    return "\n".join(parts)


@cache
def citing_files() -> dict[str, str]:
    """Relative path -> prose, for every file of the package, the tests and the lessons (not the page itself)."""
    files = {}
    for path in sorted([*(ROOT / "dsv3_edu").rglob("*.py"), *(ROOT / "tests").rglob("*.py")]):
        if path.resolve() != Path(__file__).resolve():
            files[str(path.relative_to(ROOT))] = prose_of_python(path.read_text(encoding="utf-8"))
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        files[str(path.relative_to(ROOT))] = prose_of_notebook(path)
    for path in sorted([ROOT / "README.md", *(ROOT / "notebooks").glob("*.md"), *(ROOT / "data").rglob("*.md")]):
        if path.resolve() != PAGE.resolve():
            files[str(path.relative_to(ROOT))] = path.read_text(encoding="utf-8")
    return files


def page() -> str:
    assert PAGE.is_file(), "notebooks/REFERENCE.md is missing: the reference page every citation points to"
    return PAGE.read_text(encoding="utf-8")


def anchors() -> set[str]:
    return set(re.findall(r'<a id="([\w-]+)"></a>', page()))


def cited(pattern: re.Pattern) -> dict[str, set[str]]:
    """Each match (as a string) -> the files citing it."""
    found: dict[str, set[str]] = {}
    for name, text in citing_files().items():
        for m in pattern.finditer(text):
            if pattern is TRAP:
                first, last = int(m.group(1)), int(m.group(2) or m.group(1))
                for n in range(first, last + 1):
                    found.setdefault(str(n), set()).add(name)
            else:
                found.setdefault(m.group(1), set()).add(name)
    return found


def test_the_scan_finds_the_citations_it_must_find():
    """Guards the scan itself: keys and traps that the lessons are known to cite are found."""
    keys, traps = cited(KEY), cited(TRAP)
    assert {"V2", "V3", "LF", "OFF", "HF", "DSMoE"} <= set(keys)
    assert {"1", "2", "3", "6", "7", "8", "9", "10", "14", "15"} <= set(traps)
    assert any(f.startswith("dsv3_edu/") for f in traps["8"]) and any(f.startswith("notebooks/") for f in traps["14"])
    assert not {"None", "True", "False", "MoE", "Check", "Path"} & set(keys)


def test_every_citation_key_is_defined_on_the_page():
    defined = set(re.findall(r'<a id="([\w-]+)"></a>\[([\w]+)\]', page()))
    defined_keys = {key for anchor, key in defined if anchor == key}
    missing = {key: sorted(files) for key, files in cited(KEY).items() if key not in defined_keys}
    assert not missing, f"citation keys not defined in notebooks/REFERENCE.md (section Sources): {missing}"


def test_every_cited_trap_is_on_the_page():
    have = {int(a.removeprefix("trap-")) for a in anchors() if a.startswith("trap-")}
    assert have == set(range(1, len(have) + 1)), f"the traps are numbered 1..N without gaps: {sorted(have)}"
    missing = {n: sorted(files) for n, files in cited(TRAP).items() if int(n) not in have}
    assert not missing, f"trap numbers cited but not on notebooks/REFERENCE.md: {missing}"


def test_every_cited_section_and_anchor_exists():
    text = page()
    sections = set(re.findall(r"^## (\d+)\. ", text, flags=re.MULTILINE))
    missing = {n: sorted(f) for n, f in cited(SECTION).items() if n not in sections}
    assert not missing, f"REFERENCE.md sections cited but missing: {missing}"
    missing = {a: sorted(f) for a, f in cited(ANCHOR_LINK).items() if a not in anchors()}
    assert not missing, f"REFERENCE.md#anchor links that do not resolve: {missing}"
    for anchor in re.findall(r"\]\(#([\w-]+)\)", text):  # the page's own table of contents
        assert anchor in anchors(), f"the page links to #{anchor}, which it does not define"


def test_every_reference_names_the_page_by_its_path():
    """'REFERENCE.md' alone, without notebooks/, would send a reader looking elsewhere."""
    bare = {name for name, text in citing_files().items()
            if re.search(r"(?<![/\w])REFERENCE(?:\.md)?\b", text) and not name.startswith("notebooks/")
            and "notebooks/REFERENCE.md" not in text}
    assert not bare, f"files that cite REFERENCE without its path notebooks/REFERENCE.md: {sorted(bare)}"


def test_the_page_is_linked_from_the_readme_and_lesson_00():
    assert "notebooks/REFERENCE.md" in (ROOT / "README.md").read_text(encoding="utf-8")
    welcome = next((ROOT / "notebooks").glob("00_*.ipynb"))
    assert "REFERENCE.md" in prose_of_notebook(welcome)


def test_citations_stay_inside_the_repository():
    """The lessons cite by key; web addresses of sources live on the reference page only."""
    outside = {name: sorted(set(re.findall(r"https?://[^\s)>\"']+", text)))
               for name, text in citing_files().items() if name.startswith("notebooks/")}
    outside = {name: urls for name, urls in outside.items() if urls}
    assert not outside, f"lessons that link outside the repository (cite a key of the reference page): {outside}"


# ----------------------------------------------------------------------------- "Stuck?" hints
def lessons() -> list[Path]:
    return sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def hints(path: Path) -> list[str]:
    return [m.group(1) for cell in notebook_cells(path) if cell["cell_type"] == "markdown"
            for m in HINT.finditer("".join(cell["source"]))]


def resolve(dotted: str):
    """Import the longest importable module prefix, then follow attributes: what `dotted??` shows in IPython."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(dotted)


def test_lessons_have_hints():
    assert sum(len(hints(p)) for p in lessons()) >= 20


@pytest.mark.parametrize("lesson", lessons(), ids=lambda p: p.name)
def test_every_hint_resolves_in_its_lesson(lesson):
    """Typing the hint in the lesson works: its name is bound by the setup cell and the object exists."""
    found = hints(lesson)
    if not found:
        pytest.skip("no Stuck? hint in this lesson")
    code = [("".join(c["source"])) for c in notebook_cells(lesson) if c["cell_type"] == "code"]
    setup = code[0]
    assert re.search(r"^import dsv3_edu\b", setup, flags=re.MULTILINE), (
        f"{lesson.name}: the first code cell must `import dsv3_edu` so that `dsv3_edu.exercises...??` resolves")
    for dotted in found:
        try:
            obj = resolve(dotted)
        except (ModuleNotFoundError, AttributeError) as err:
            raise AssertionError(f"{lesson.name}: the hint `{dotted}??` names nothing: {err}") from err
        assert callable(obj), f"{lesson.name}: `{dotted}` is not a function"
