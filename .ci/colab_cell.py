"""The first code cell of every lesson on Colab (and anywhere dsv3_edu is not installed): fetch the course
and install it. In a course checkout, in CI and offline, dsv3_edu is importable and the cell does nothing
(no output, so strict nbval is unaffected).

Usage: python .ci/colab_cell.py NOTEBOOK ...   inserts the cell before the first code cell, or updates it
(found by its tag "colab-install"); then re-record with `make notebooks NB=...`.
Set REPO_URL below to the course's public repository before applying it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO_URL = "https://github.com/OWNER/dsv3-edu"  # the public repository: set before applying
TAG = "colab-install"
SOURCE = f'''\
# On Colab (or wherever the course is not installed) this fetches and installs it; here it does nothing.
import importlib.util

if importlib.util.find_spec("dsv3_edu") is None:
    import os
    import subprocess
    import sys

    subprocess.run(["git", "clone", "--depth", "1", "{REPO_URL}", "dsv3-edu"], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "-e", "dsv3-edu"], check=True)
    sys.path.insert(0, os.path.abspath("dsv3-edu"))  # importable now, without restarting the kernel
    os.chdir("dsv3-edu/notebooks")  # the lessons read ../data
    if "google.colab" in sys.modules:
        from google.colab import output

        output.enable_custom_widget_manager()  # ipywidgets 8 on Colab
'''


def apply(nb: dict) -> dict:
    """nb with the install cell first among its code cells (inserted once, updated after)."""
    cell = {"cell_type": "code", "execution_count": None, "metadata": {"tags": [TAG]}, "outputs": [],
            "source": SOURCE.splitlines(keepends=True)}
    for existing in nb["cells"]:
        if TAG in existing.get("metadata", {}).get("tags", []):
            existing["source"] = cell["source"]
            return nb
    first_code = next((i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code"), len(nb["cells"]))
    nb["cells"].insert(first_code, cell)
    return nb


def main() -> int:
    if "OWNER" in REPO_URL:
        sys.exit("set REPO_URL in .ci/colab_cell.py to the course's public repository first")
    for name in sys.argv[1:]:
        path = Path(name)
        nb = apply(json.loads(path.read_text(encoding="utf-8")))
        tmp = path.with_suffix(".ipynb.tmp")
        tmp.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        tmp.replace(path)
        print(f"colab cell: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
