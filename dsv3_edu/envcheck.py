"""Is this machine ready for the course? ``check_environment()`` prints one line per requirement
and, for anything missing, the exact command that fixes it. `python -m dsv3_edu.envcheck` prints the
report (exit status 1 if anything needs attention); `--failures` prints an example of every failure it
can report, for the instructor guide.

The printed table is the same on every machine that has the pinned environment (no absolute
paths, no CPU model, no Python patch version), so lesson 00 can keep it as a checked output.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent
MIN_PYTHON = (3, 10)
# (import name, distribution name, what it is for)
PACKAGES = (
    ("torch", "torch", "tensors and autograd"),
    ("numpy", "numpy", "arrays"),
    ("matplotlib", "matplotlib", "plots"),
    ("ipywidgets", "ipywidgets", "sliders in the lessons"),
    ("safetensors", "safetensors", "checkpoint files"),
    ("tqdm", "tqdm", "progress bars"),
    ("jupyterlab", "jupyterlab", "the notebook interface"),
)
# Pinned when .ci/constraints.txt cannot be read (a non-editable install).
FALLBACK_PINS = {"torch": "2.13.0"}
WIDGET_LABEXTENSION = "@jupyter-widgets/jupyterlab-manager"
REQUIRED_DATA = ("deepseek_v3_config.json",)
FIX_INSTALL = "run `make lab` from the repository root (creates .venv and installs everything)"
FIX_PIP = "pip install -c .ci/constraints.txt -e '.[lab,dev]'"


@dataclass
class Check:
    """One line of the report. ``status`` is "ok", "missing" or "differs"; ``fix`` is empty when ok."""

    name: str
    status: str
    shown: str
    fix: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def _version(dist: str) -> str | None:
    """Installed version without a local suffix (2.13.0+cpu -> 2.13.0), or None if not installed."""
    try:
        return importlib.metadata.version(dist).split("+")[0]
    except importlib.metadata.PackageNotFoundError:
        return None


def _importable(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def read_pins(root: Path = REPO_ROOT) -> dict[str, str]:
    """Pinned versions from .ci/constraints.txt (lower-case names), or the fallback pins."""
    path = root / ".ci" / "constraints.txt"
    if not path.exists():
        return dict(FALLBACK_PINS)
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[name.strip().lower().replace("_", "-")] = version.strip()
    return pins


def mask_path(path: Path | str, root: Path = REPO_ROOT) -> str:
    """A path as the report prints it: relative to the repository, else with the home folder as ~."""
    path = Path(path).resolve()
    try:
        return path.relative_to(root.resolve()).as_posix()
    except ValueError:
        home = Path.home().resolve()
        try:
            return "~/" + path.relative_to(home).as_posix()
        except ValueError:
            return "<outside the repository>"


def _check_python(version_info=sys.version_info) -> Check:
    need = ".".join(map(str, MIN_PYTHON))
    if tuple(version_info[:2]) >= MIN_PYTHON:
        return Check("python", "ok", f">= {need}")
    found = f"{version_info[0]}.{version_info[1]}"
    return Check("python", "missing", f"{found}, need >= {need}",
                 f"install Python >= {need}, then {FIX_INSTALL}")


def _check_package(module: str, dist: str, purpose: str, pins: dict[str, str]) -> Check:
    version = _version(dist)
    if version is None or not _importable(module):
        return Check(module, "missing", f"not installed ({purpose})", f"{FIX_INSTALL}, or: {FIX_PIP}")
    pin = pins.get(dist.lower().replace("_", "-"))
    if pin is None or pin == version:
        return Check(module, "ok", version if pin is None else f"{version} (pinned)")
    return Check(module, "differs", f"{version}, pinned {pin}",
                 f"{FIX_PIP}  (recorded lesson outputs assume the pinned versions)")


def _check_widget_extension(pins: dict[str, str], version: str | None | bool = True,
                            found: bool | None = None) -> Check:
    """``version`` and ``found`` default to what is installed; failure_examples() passes simulated ones."""
    version = _version("jupyterlab_widgets") if version is True else version
    if version is None:
        return Check("widget extension", "missing", "jupyterlab_widgets not installed: sliders will not show",
                     f"{FIX_INSTALL}, or: {FIX_PIP}")
    pin = pins.get("jupyterlab-widgets")
    if pin is not None and pin != version:
        return Check("widget extension", "differs", f"jupyterlab_widgets {version}, pinned {pin}", FIX_PIP)
    if not (_labextension_installed() if found is None else found):
        return Check("widget extension", "missing",
                     f"jupyterlab_widgets {version} is installed but JupyterLab cannot find {WIDGET_LABEXTENSION}",
                     f"reinstall it into the environment that runs JupyterLab: {FIX_PIP}")
    return Check("widget extension", "ok", f"jupyterlab_widgets {version}")


def _labextension_installed() -> bool:
    """Is @jupyter-widgets/jupyterlab-manager in one of JupyterLab's labextensions folders?"""
    try:
        from jupyter_core.paths import jupyter_path
    except ImportError:  # no Jupyter at all: the jupyterlab check already says how to fix it
        return False
    return any((Path(folder) / WIDGET_LABEXTENSION).is_dir() for folder in jupyter_path("labextensions"))


def _check_package_location(root: Path = REPO_ROOT) -> Check:
    spec = importlib.util.find_spec("dsv3_edu")
    if spec is None or spec.origin is None:
        return Check("dsv3_edu", "missing", "not importable", f"{FIX_INSTALL}, or: {FIX_PIP}")
    origin = Path(spec.origin).resolve()
    if not (root / "pyproject.toml").exists() or root.resolve() not in origin.parents:
        return Check("dsv3_edu", "differs", f"imported from {mask_path(origin, root)}, not from a checkout",
                     f"from the repository root: {FIX_PIP}  (an editable install, so lessons use this code)")
    return Check("dsv3_edu", "ok", f"{mask_path(origin, root)} (this repository)")


def _check_data(root: Path = REPO_ROOT) -> Check:
    missing = [name for name in REQUIRED_DATA if not (root / "data" / name).exists()]
    if missing:
        return Check("data/", "missing", "missing " + ", ".join(f"data/{m}" for m in missing),
                     "git checkout -- data/  (the files ship with the repository)")
    return Check("data/", "ok", ", ".join(REQUIRED_DATA))


def _check_threads() -> Check:
    import torch

    threads = torch.get_num_threads()
    omp = os.environ.get("OMP_NUM_THREADS")
    shown = f"torch uses {threads} thread{'s' if threads != 1 else ''}"
    return Check("CPU threads", "ok", shown + (f" (OMP_NUM_THREADS={omp})" if omp else ""))


def environment_checks(root: Path = REPO_ROOT) -> list[Check]:
    """Every check, in report order (nothing printed)."""
    pins = read_pins(root)
    checks = [_check_python()]
    checks += [_check_package(module, dist, purpose, pins) for module, dist, purpose in PACKAGES]
    checks += [_check_widget_extension(pins), _check_package_location(root), _check_data(root)]
    if _importable("torch"):
        checks.append(_check_threads())
    return checks


def format_report(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    lines = []
    for c in checks:
        lines.append(f"{c.name:<{width}}  {c.status:<7}  {c.shown}")
        if c.fix:
            lines.append(f"{'':<{width}}  {'':<7}  fix: {c.fix}")
    bad = [c for c in checks if not c.ok]
    lines.append(
        f"All {len(checks)} checks passed." if not bad else f"{len(bad)} of {len(checks)} checks need attention."
    )
    return "\n".join(lines)


def check_environment(print_report: bool = True, root: Path = REPO_ROOT) -> list[Check]:
    """Check Python, the pinned packages, the widget extension, this package and data/; print a table."""
    checks = environment_checks(root)
    if print_report:
        print(format_report(checks))
    return checks


def failure_examples() -> list[Check]:
    """One example of every failure the report can show, made by the checks themselves on simulated
    problems: the list an instructor guide shows learners (`python -m dsv3_edu.envcheck --failures`)."""
    import tempfile

    elsewhere = Path(tempfile.gettempdir()) / "not-a-dsv3-edu-checkout"
    return [
        _check_python((3, 9, 0)),  # too old a Python
        _check_package("torch", "dsv3-edu-simulated-missing", "tensors and autograd", {}),  # not installed
        _check_package("torch", "torch", "tensors and autograd", {"torch": "0.0.0-simulated"}),  # another version
        _check_widget_extension({}, version=None),  # no widget package: sliders do not show
        _check_widget_extension({}, version="3.0.17", found=False),  # package in another environment than Lab's
        _check_package_location(elsewhere),  # dsv3_edu imported from elsewhere than this checkout
        _check_data(elsewhere),  # data/ missing
    ]


if __name__ == "__main__":
    if sys.argv[1:] == ["--failures"]:
        print(format_report(failure_examples()).rsplit("\n", 1)[0])
        sys.exit(0)
    if sys.argv[1:]:
        sys.exit("usage: python -m dsv3_edu.envcheck [--failures]   (--failures: every failure it can report)")
    sys.exit(0 if all(c.ok for c in check_environment()) else 1)
