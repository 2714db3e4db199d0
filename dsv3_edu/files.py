"""Writing files without ever losing what was there: output paths checked first, writes atomic as a whole.

Every command line of the course (``train``, ``bench``, ``experiments``) calls :func:`ensure_writable` on
its output path *before* the long work starts, so a typo in ``--json`` or ``--out`` costs seconds, not
the run. Every file it then writes goes through :func:`atomic_write_text` (or :func:`write_json`): the
new content is written to a temporary file in the same folder, flushed to disk, and renamed over the
old file in one step, so a reader (or a kill at any instant) sees either the old file or the new one.

A training checkpoint is several files that belong together; ``dsv3_edu.train`` writes them into a temporary
folder with :func:`write_durably` and switches the folder in with one rename. A process killed mid-write
leaves ``.NAME.tmp-PID`` files or ``.tmp-...-PID`` folders behind; :func:`remove_stale_temps` removes those
of processes that no longer run.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
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
        fd, probe = tempfile.mkstemp(prefix=".write-test-", suffix=f"-{os.getpid()}", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputPathError(
            f"cannot write the {what} to {str(path)!r}: {exc.strerror or exc}. "
            "Choose a folder you can write to (for example one under your home folder)."
        ) from exc
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` all at once: :func:`write_temp` (a fsynced ``.NAME.tmp-PID`` next to it), then
    one rename over ``path``. On any error the temporary file is removed and ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = write_temp(path, lambda p: p.write_bytes(data))
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any, *, quiet: bool = True) -> None:
    """Write ``obj`` as indented JSON (with a final newline), atomically; say where unless ``quiet``."""
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")
    if not quiet:
        print(f"wrote {path}")


# ------------------------------------------------------------------ several files that belong together


def fsync_dir(folder: str | Path) -> None:
    """Make the renames and new names in ``folder`` durable (POSIX; skipped where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on a folder; the rename is still atomic
    finally:
        os.close(fd)


def write_durably(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """``write(path)``, then fsync the file: for a file inside a temporary folder that is later renamed
    into place as a whole (the folder's rename is the atomic step, so the file needs no name of its own)."""
    path = Path(path)
    write(path)
    with open(path, "rb+") as f:
        os.fsync(f.fileno())
    return path


def write_temp(path: Path, write: Callable[[Path], Any]) -> Path:
    """Write through ``write(tmp_path)`` to a temporary file next to ``path``, fsync it and return it; the
    caller os.replace()s it into place. On any error the temporary file is removed and ``path`` is untouched."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write_durably(tmp, write)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
    return tmp


def link_or_copy(src: str | Path, dst: str | Path) -> None:
    """Make ``dst`` show ``src``'s content, atomically: a hard link (no second copy on disk) or, where the file
    system has none, a copy; staged under a temporary name and renamed over ``dst``."""
    src, dst = Path(src), Path(dst)
    if dst.exists() and os.path.samefile(src, dst):
        return  # already linked (and renaming one link over another of the same file would do nothing)
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    try:
        tmp.unlink(missing_ok=True)
        try:
            os.link(src, tmp)
        except OSError:
            write_durably(tmp, lambda p: shutil.copyfile(src, p))
        os.replace(tmp, dst)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


def remove_tree(path: str | Path) -> None:
    """Delete a folder without ever leaving a half-deleted folder under its real name: rename it to a
    temporary name first (one atomic step), then delete that."""
    path = Path(path)
    doomed = path.with_name(f".old-{path.name}-{os.getpid()}")
    os.rename(path, doomed)
    shutil.rmtree(doomed)


_TEMP = re.compile(r"^\.(?:.+\.tmp(?:-.+)?|tmp-.+|old-.+|write-test-.+)-(\d+)$")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # this process has nothing in flight when it cleans up
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by another user (or no permission to ask)
        return True
    return True


def remove_stale_temps(folder: str | Path) -> list[str]:
    """Remove the temporary files and folders (``.NAME.tmp-PID``, ``.tmp-NAME-PID``, ``.old-NAME-PID``,
    ``.write-test-...-PID``) that a killed process left in ``folder``; those of processes still running are
    kept. Returns the names removed."""
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for entry in sorted(folder.iterdir()):
        match = _TEMP.match(entry.name)
        if match is None or _alive(int(match.group(1))):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
        removed.append(entry.name)
    return removed
