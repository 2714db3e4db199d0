"""Print the requirements of one optional-dependency group of pyproject.toml, one per line.

Usage: python .ci/extra_requirements.py EXTRA   (the Makefile installs them into the tools' venv, without
the course's own dependencies: the site and the browser test need neither torch nor dsv3_edu there)
"""

import sys
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10
    sys.exit("extra_requirements.py needs Python 3.11 or newer (tomllib): run make with PYTHON=python3.11")

extras = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())["project"][
    "optional-dependencies"]
if len(sys.argv) != 2 or sys.argv[1] not in extras:
    sys.exit(f"usage: python .ci/extra_requirements.py EXTRA, one of: {', '.join(extras)}")
print("\n".join(extras[sys.argv[1]]))
