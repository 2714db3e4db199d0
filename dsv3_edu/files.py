"""Writing files without ever losing what was there: output paths checked first, writes atomic as a whole.

Every command line of the course (``train``, ``bench``, ``experiments``) calls :func:`ensure_writable` on
its output path *before* the long work starts, so a typo in ``--json`` or ``--out`` costs seconds, not
the run. Every file it then writes goes through :func:`atomic_write_text` (or :func:`write_json`): the
new content is written to a temporary file in the same folder, flushed to disk, and renamed over the
old file in one step, so a reader (or a kill at any instant) sees either the old file or the new one.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


class OutputPathError(ValueError):
    """An output path that cannot be written (explains why and what to do)."""


def ensure_writable(path: str | Path, *, is_dir: bool = False, what: str = "output") -> Path:
    """Create ``path``'s folder (or ``path`` itself when ``is_dir``) and prove a file can be written there.

    Returns the path. Raises :class:`OutputPathError` naming the path and the reason, before any work.
    """
    path = Path(path).expanduser()
    folder = path if is_dir else path.parent
    if not is_dir and path.is_dir():
        example = str(path / "out.json")
        raise OutputPathError(f"{what} path {str(path)!r} is a folder; give a file name such as {example!r}")
    if is_dir and path.exists() and not path.is_dir():
        raise OutputPathError(f"{what} folder {str(path)!r} exists and is a file; choose another folder name")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputPathError(
            f"cannot write the {what} to {str(path)!r}: {exc.strerror or exc}. "
            "Choose a folder you can write to (for example one under your home folder)."
        ) from exc
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` all at once: a temporary file in the same folder, fsync, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any, *, quiet: bool = True) -> None:
    """Write ``obj`` as indented JSON (with a final newline), atomically; say where unless ``quiet``."""
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")
    if not quiet:
        print(f"wrote {path}")
