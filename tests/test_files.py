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


def test_link_or_copy_shows_the_source_and_leaves_no_temporary(tmp_path):
    from dsv3_edu.files import link_or_copy

    (tmp_path / "a").write_text("new")
    (tmp_path / "b").write_text("old")
    link_or_copy(tmp_path / "a", tmp_path / "b")
    assert (tmp_path / "b").read_text() == "new" and os.path.samefile(tmp_path / "a", tmp_path / "b")
    link_or_copy(tmp_path / "a", tmp_path / "b")  # already the same file: renaming a link over it would leave one
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]


def test_link_or_copy_copies_where_links_fail(tmp_path, monkeypatch):
    from dsv3_edu.files import link_or_copy

    def no_links(src, dst):
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    (tmp_path / "a").write_text("content")
    link_or_copy(tmp_path / "a", tmp_path / "b")
    assert (tmp_path / "b").read_text() == "content" and not os.path.samefile(tmp_path / "a", tmp_path / "b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]


def test_remove_tree_never_leaves_a_half_folder_under_its_name(tmp_path, monkeypatch):
    import shutil

    from dsv3_edu.files import remove_stale_temps, remove_tree

    folder = tmp_path / "step-000002"
    folder.mkdir()
    (folder / "w").write_text("x")

    def interrupted(path, *args, **kwargs):
        raise OSError("interrupted")

    monkeypatch.setattr(shutil, "rmtree", interrupted)
    with pytest.raises(OSError):
        remove_tree(folder)
    monkeypatch.undo()
    assert not folder.exists() and [p.name for p in tmp_path.iterdir()] == [f".old-step-000002-{os.getpid()}"]
    assert remove_stale_temps(tmp_path) == [f".old-step-000002-{os.getpid()}"] and list(tmp_path.iterdir()) == []


def test_remove_stale_temps_only_touches_temporaries(tmp_path):
    from dsv3_edu.files import remove_stale_temps

    names = [f".model.safetensors.tmp-{os.getpid()}", f".tmp-step-000004-{os.getpid()}", ".hidden", "model.safetensors",
             f".r.json.tmp-abc_12-{os.getpid()}", ".tmp-no-pid"]
    for name in names:
        (tmp_path / name).write_text("x")
    removed = remove_stale_temps(tmp_path)
    assert sorted(removed) == sorted(names[:2] + names[4:5])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([".hidden", "model.safetensors", ".tmp-no-pid"])
