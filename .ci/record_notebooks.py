"""Re-execute notebooks in place, exactly as CI checks them (called by `make notebooks`).

Usage: python .ci/record_notebooks.py [NOTEBOOK ...]   (default: every notebooks/*.ipynb)
Run it through `make notebooks NB=notebooks/03_mla.ipynb` so the environment variables match CI.
"""

import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

root = Path(__file__).resolve().parent.parent
paths = [Path(p) for p in sys.argv[1:]] or sorted((root / "notebooks").glob("*.ipynb"))
for path in paths:
    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    nb.metadata.pop("widgets", None)  # widget state is per-run noise
    nbformat.write(nb, path)
    print(f"{time.perf_counter() - start:6.1f} s  {path}")
