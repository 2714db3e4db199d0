"""Re-execute notebooks in place, exactly as CI checks them (called by `make notebooks`).

Usage: python .ci/record_notebooks.py [NOTEBOOK ...]   (default: every notebooks/*.ipynb)
Run it through `make notebooks NB=notebooks/03_mla.ipynb` so the environment variables match CI.

Cells marked `# NBVAL_SKIP` (reruns of long training or benchmarks) are not executed, as under
nbval: they run only when a learner runs them by hand. Their outputs are cleared.
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
    skipped = {}
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and "NBVAL_SKIP" in cell.source:
            skipped[i], cell.source = cell.source, "# NBVAL_SKIP: not run when recording"
    start = time.perf_counter()
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    for i, source in skipped.items():
        nb.cells[i].source, nb.cells[i].outputs = source, []
    nb.metadata.pop("widgets", None)  # widget state is per-run noise
    for cell in nb.cells:
        cell.metadata.pop("execution", None)  # per-run timestamps: noise in every diff and merge
    nbformat.write(nb, path)
    print(f"{time.perf_counter() - start:6.1f} s  {path}")
