import json
import os

import pytest

from dsv3_edu.files import OutputPathError, atomic_write_text, ensure_writable, write_json


def test_ensure_writable_creates_the_folder_and_leaves_nothing_behind(tmp_path):
    out = ensure_writable(tmp_path / "a" / "b" / "r.json")
    assert out.parent.is_dir() and list(out.parent.iterdir()) == []


def test_ensure_writable_refuses_a_folder_given_as_a_file(tmp_path):
    with pytest.raises(OutputPathError, match="is a folder"):
        ensure_writable(tmp_path)


def test_ensure_writable_refuses_a_file_given_as_a_folder(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputPathError, match="is a file"):
        ensure_writable(tmp_path / "f", is_dir=True)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_ensure_writable_names_an_unwritable_folder(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(OutputPathError, match="cannot write"):
            ensure_writable(locked / "r.json")
    finally:
        locked.chmod(0o700)


def test_ensure_writable_under_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputPathError, match="cannot write"):
        ensure_writable(tmp_path / "f" / "r.json")


def test_atomic_write_replaces_whole_and_cleans_up_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "r.json"
    write_json(path, {"a": 1})
    assert json.loads(path.read_text()) == {"a": 1}

    def boom(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk gone"):
        atomic_write_text(path, "new")
    assert json.loads(path.read_text()) == {"a": 1}  # the old file is whole
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temporary file left
