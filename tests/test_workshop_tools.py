"""The workshop tooling's own logic, without building anything: the site's offline check, the widget
notes, the Colab install cell. (`make site`, `make browser-test`, `make answers` run the real thing.)"""

import json
import subprocess
import sys
from pathlib import Path

import build_site
import check_site
import colab_cell
import pytest

ROOT = Path(__file__).resolve().parent.parent


def _site(tmp_path, page_html: str):
    for name in ("index.html", "REFERENCE.html", "INSTRUCTORS.html"):  # pages of notebooks/REFERENCE.md etc.
        (tmp_path / name).write_text("<html></html>")
    (tmp_path / "_static").mkdir(exist_ok=True)
    (tmp_path / "_static" / "local.js").write_text("")
    (tmp_path / "page.html").write_text(page_html)
    return check_site.problems_in(tmp_path, [])


def test_site_check_finds_network_loads_and_missing_files(tmp_path):
    ok = '<script src="_static/local.js"></script><a href="https://example.org">a link is fine</a>'
    assert _site(tmp_path, ok) == []
    for bad, words in (('<script src="https://cdn.example/x.js"></script>', "from the network"),
                       ('<link rel="stylesheet" href="//fonts.example/f.css">', "from the network"),
                       ('<img src="http://example.org/a.png">', "from the network"),
                       ('<script src="_static/missing.js"></script>', "not in the site"),
                       ('<a href="02_rope.html">next</a>', "not in the site")):
        problems = _site(tmp_path, bad)
        assert len(problems) == 1 and words in problems[0], (bad, problems)
    (tmp_path / "_static" / "x.css").write_text("@font-face { src: url(https://fonts.example/a.woff2) }")
    assert any("x.css" in p for p in _site(tmp_path, ok))


def test_widget_outputs_become_notes_naming_their_controls():
    repr_ = ("VBox(children=(HBox(children=(IntSlider(value=1, description='layer', max=3), "
             "Dropdown(description='dtype', options=('bf16', 'fp8'), value='bf16'))),))")
    nb = {"metadata": {"widgets": {}}, "cells": [{"cell_type": "code", "source": "# NBVAL_IGNORE_OUTPUT\nexplorer()",
          "outputs": [{"output_type": "display_data", "metadata": {},
                       "data": {"application/vnd.jupyter.widget-view+json": {"model_id": "x"},
                                "text/plain": repr_}}]}]}
    nb, widgets = build_site.prepare_notebook(nb)
    cell = nb["cells"][0]
    assert widgets == 1 and cell["source"] == "explorer()" and "widgets" not in nb["metadata"]
    note = cell["outputs"][0]["data"]["text/html"]
    assert "Live in JupyterLab" in note
    assert "<code>layer</code> (slider)" in note and "<code>dtype</code> (dropdown)" in note


def test_colab_cell_is_inserted_once_and_does_nothing_here():
    nb = {"cells": [{"cell_type": "markdown", "metadata": {}, "source": "# 00"},
                    {"cell_type": "code", "metadata": {}, "source": "import torch", "outputs": []}]}
    nb = colab_cell.apply(colab_cell.apply(nb, "https://github.com/old/x"), "https://github.com/someone/dsv3-edu")
    assert [c["cell_type"] for c in nb["cells"]] == ["markdown", "code", "code"]
    assert colab_cell.TAG in nb["cells"][1]["metadata"]["tags"]
    assert '"https://github.com/someone/dsv3-edu"' in "".join(nb["cells"][1]["source"]), "applied again: updated"
    # dsv3_edu is importable here: the cell must not clone, install or print anything.
    code = "import subprocess\nsubprocess.run = None\n" + "".join(nb["cells"][1]["source"])
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0 and result.stdout == "" and result.stderr == "", result


def test_tools_extras_are_pinned_consistently_with_the_course():
    course = dict(line.strip().split("==") for line in (ROOT / ".ci/constraints.txt").read_text().splitlines()
                  if "==" in line)
    tools = dict(line.strip().split("==") for line in (ROOT / ".ci/constraints-tools.txt").read_text().splitlines()
                 if "==" in line)
    assert {"Sphinx", "myst-nb", "furo", "playwright"} <= set(tools)
    assert {k: (v, tools[k]) for k, v in course.items() if k in tools and tools[k] != v} == {}
    assert "Sphinx" not in course and "playwright" not in course  # make test's environment does not grow
    json.loads(json.dumps(tools))


def test_core_route_tagging_rules():
    import core_route
    import nbformat

    def nb(*cells):
        out = nbformat.v4.new_notebook()
        for kind, text, deep in cells:
            cell = (nbformat.v4.new_code_cell if kind == "code" else nbformat.v4.new_markdown_cell)(text)
            if deep:
                cell.metadata["tags"] = ["deep-dive"]
            out.cells.append(cell)
        return out

    banner = core_route.BANNER + " (optional):** more. Skip it on the core route."
    good = nb(("markdown", "# 00", False), ("code", "x = 1", False),
              ("markdown", banner, True), ("code", "y = x", True))
    assert core_route.tagging_problems(good) == []
    assert "no cell is tagged" in core_route.tagging_problems(nb(("code", "x = 1", False)))[0]
    no_banner = nb(("code", "x = 1", False), ("code", "y = x", True))
    assert "without its banner" in core_route.tagging_problems(no_banner)[0]
    all_deep = nb(("markdown", banner, True), ("code", "y = 1", True))
    assert any("no core route" in p for p in core_route.tagging_problems(all_deep))


def test_colab_links_need_a_github_address_and_land_between_the_readme_markers():
    for bad in ("", "https://gitlab.com/a/b", "github.com/a/b", "https://github.com/a", "https://github.com/a/b/c"):
        with pytest.raises(SystemExit, match="not a GitHub repository address"):
            colab_cell.github_repo(bad)
    assert colab_cell.github_repo("https://github.com/some-one/dsv3-edu.git") == ("some-one", "dsv3-edu")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert colab_cell.README_START in readme and colab_cell.README_END in readme, "README lost its colab markers"
    out = colab_cell.readme_links(readme, ["00_welcome.ipynb", "01_x.ipynb"], "https://github.com/o/n", "dev")
    block = out.split(colab_cell.README_START)[1].split(colab_cell.README_END)[0]
    assert "https://mybinder.org/v2/gh/o/n/dev?urlpath=lab/tree/notebooks" in block
    assert "(https://colab.research.google.com/github/o/n/blob/dev/notebooks/01_x.ipynb)" in block
    assert out.replace(block, "") == readme.replace(readme.split(colab_cell.README_START)[1].split(
        colab_cell.README_END)[0], ""), "only the block between the markers changes"
    again = colab_cell.readme_links(out, ["00_welcome.ipynb"], "https://github.com/o/n")
    assert again.count(colab_cell.README_START) == 1 and "01_x" not in again
