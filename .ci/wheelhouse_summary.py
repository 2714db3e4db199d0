"""Write WHEELHOUSE/wheelhouse.txt (what the folder holds, for whom) and print its size (called by
`make wheelhouse` as its last step: the Makefile installs from the folder only once this file exists).

Usage: python .ci/wheelhouse_summary.py WHEELHOUSE
"""

import platform
import sys
from pathlib import Path

folder = Path(sys.argv[1])
wheels = sorted(folder.glob("*.whl"))
wanted = [line.split("==")[0].lower().replace("_", "-") for line in (folder / "requirements.txt").read_text().split()]
have = {w.name.split("-")[0].lower().replace("_", "-") for w in wheels}
missing = [name for name in wanted if name not in have]
if missing:
    sys.exit(f"wheelhouse: no wheel for {', '.join(missing)}: run `make wheelhouse` again with a network")
size = sum(w.stat().st_size for w in wheels)
torch = next((w.name for w in wheels if w.name.startswith("torch-")), "none")
lines = [
    "# Written by `make wheelhouse`. `make lab` / `make test` install from this folder with --no-index.",
    f"# For {platform.system()} {platform.machine()}, Python {sys.version_info[0]}.{sys.version_info[1]}: "
    "other platforms or Python versions need their own wheelhouse.",
    f"# {len(wheels)} wheels, {size / 1e6:.0f} MB; torch: {torch}",
    *(w.name for w in wheels),
]
(folder / "wheelhouse.txt.tmp").write_text("\n".join(lines) + "\n")
(folder / "wheelhouse.txt.tmp").replace(folder / "wheelhouse.txt")
print(f"wheelhouse: {len(wheels)} wheels, {size / 1e6:.0f} MB ({size / 2**20:.0f} MiB) in {folder}/; torch: {torch}")
