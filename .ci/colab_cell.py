"""The first code cell of every lesson on Colab (and anywhere dsv3_edu is not installed): fetch the course
and install it. In a course checkout, in CI and offline, dsv3_edu is importable and the cell does nothing
(no output, so strict nbval is unaffected). Also writes the README's Colab and Binder links.

Usage: make colab REPO_URL=https://github.com/OWNER/NAME   (the course's public repository, once it has one)
  = python .ci/colab_cell.py --repo URL [--branch main], then `make notebooks` to re-record the lessons.
The cell goes before each lesson's first code cell, or replaces the one there (found by its tag
"colab-install"); the links go between the README's colab-links markers.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from dsv3_edu.files import atomic_write_text

ROOT = Path(__file__).resolve().parent.parent
TAG = "colab-install"
README_START, README_END = "<!-- colab links: written by .ci/colab_cell.py -->", "<!-- end of colab links -->"
GITHUB = re.compile(r"^https://github\.com/([A-Za-z0-9][A-Za-z0-9-]*)/([A-Za-z0-9._-]+?)(?:\.git)?/?$")
SOURCE = """\
# On Colab (or wherever the course is not installed) this fetches and installs it; here it does nothing.
import importlib.util

if importlib.util.find_spec("dsv3_edu") is None:
    import os
    import subprocess
    import sys

    subprocess.run(["git", "clone", "--depth", "1", "{repo}", "dsv3-edu"], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "-e", "dsv3-edu"], check=True)
    sys.path.insert(0, os.path.abspath("dsv3-edu"))  # importable now, without restarting the kernel
    os.chdir("dsv3-edu/notebooks")  # the lessons read ../data
    if "google.colab" in sys.modules:
        from google.colab import output

        output.enable_custom_widget_manager()  # ipywidgets 8 on Colab
"""


def github_repo(url: str) -> tuple[str, str]:
    """(owner, name) of a GitHub repository address; Colab opens notebooks from GitHub only."""
    found = GITHUB.match(url.strip())
    if not found:
        raise SystemExit(f"REPO_URL={url!r} is not a GitHub repository address: give https://github.com/OWNER/NAME "
                         "(Colab's 'Open in Colab' links and Binder's gh/ links need one)")
    return found.group(1), found.group(2)


def apply(nb: dict, repo: str) -> dict:
    """nb with the install cell first among its code cells (inserted once, updated after)."""
    github_repo(repo)
    cell = {"cell_type": "code", "execution_count": None, "metadata": {"tags": [TAG]}, "outputs": [],
            "source": SOURCE.format(repo=repo).splitlines(keepends=True)}
    for existing in nb["cells"]:
        if TAG in existing.get("metadata", {}).get("tags", []):
            existing["source"] = cell["source"]
            return nb
    first_code = next((i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code"), len(nb["cells"]))
    nb["cells"].insert(first_code, cell)
    return nb


def readme_links(text: str, lessons: list[str], repo: str, branch: str = "main") -> str:
    """The README with its Colab and Binder links, between the colab-links markers, written for repo."""
    owner, name = github_repo(repo)
    if README_START not in text or README_END not in text:
        raise SystemExit(f"README.md lacks the markers {README_START!r} ... {README_END!r}")
    rows = [f"[![Binder](https://mybinder.org/badge_logo.svg)](https://mybinder.org/v2/gh/{owner}/{name}/{branch}"
            "?urlpath=lab/tree/notebooks) opens the whole course in JupyterLab. Each lesson on Colab:", ""]
    rows += [f"- [{Path(n).stem}](https://colab.research.google.com/github/{owner}/{name}/blob/{branch}/notebooks/{n})"
             for n in lessons]
    head, rest = text.split(README_START, 1)
    return f"{head}{README_START}\n" + "\n".join(rows) + f"\n{README_END}{rest.split(README_END, 1)[1]}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", required=True, help="the course's public GitHub repository, https://github.com/OWNER/NAME")
    parser.add_argument("--branch", default="main")
    args = parser.parse_args(argv)
    github_repo(args.repo)
    lessons = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    for path in lessons:
        nb = apply(json.loads(path.read_text(encoding="utf-8")), args.repo)
        atomic_write_text(path, json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    readme = ROOT / "README.md"
    links = readme_links(readme.read_text(encoding="utf-8"), [p.name for p in lessons], args.repo, args.branch)
    atomic_write_text(readme, links)
    print(f"colab: install cell in {len(lessons)} lessons, links in README.md; now re-record: make notebooks")
    return 0


if __name__ == "__main__":
    sys.exit(main())
