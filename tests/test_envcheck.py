"""The environment check: all green here, a precise fix for each kind of problem, no machine paths."""

from pathlib import Path

import dsv3_edu.envcheck as env


def test_this_environment_passes(capsys):
    checks = env.check_environment()
    out = capsys.readouterr().out
    assert all(c.ok for c in checks), out
    assert out.strip().endswith(f"All {len(checks)} checks passed.")
    names = [c.name for c in checks]
    for name in ("python", "torch", "numpy", "matplotlib", "ipywidgets", "safetensors", "tqdm", "jupyterlab",
                 "widget extension", "dsv3_edu", "data/", "CPU threads"):
        assert name in names
    assert "2.13.0 (pinned)" in out
    assert str(env.REPO_ROOT) not in out and str(Path.home()) + "/" not in out  # no machine-specific paths
    assert "dsv3_edu/__init__.py (this repository)" in out


def test_missing_package_says_how_to_fix(monkeypatch, capsys):
    real = env._version
    monkeypatch.setattr(env, "_version", lambda dist: None if dist == "safetensors" else real(dist))
    checks = env.check_environment()
    out = capsys.readouterr().out
    bad = [c for c in checks if not c.ok]
    assert [c.name for c in bad] == ["safetensors"] and bad[0].status == "missing"
    assert "make lab" in bad[0].fix and "pip install -c .ci/constraints.txt -e '.[lab,dev]'" in bad[0].fix
    assert "fix: run `make lab`" in out and "1 of" in out


def test_wrong_version_is_flagged(monkeypatch):
    pins = env.read_pins() | {"torch": "9.9.9"}
    check = env._check_package("torch", "torch", "tensors", pins)
    assert check.status == "differs" and "pinned 9.9.9" in check.shown and "constraints" in check.fix
    assert env._check_package("torch", "torch", "tensors", {}).ok  # no pin: any version is fine


def test_pins_and_fallback(tmp_path):
    pins = env.read_pins()
    assert pins["torch"] == "2.13.0" and pins["jupyterlab-widgets"]
    assert env.read_pins(tmp_path) == env.FALLBACK_PINS


def test_old_python():
    check = env._check_python((3, 9, 1))
    assert check.status == "missing" and "need >= 3.10" in check.shown and "make lab" in check.fix
    assert env._check_python((3, 10, 0)).ok


def test_widget_extension_missing(monkeypatch):
    monkeypatch.setattr(env, "_labextension_installed", lambda: False)
    check = env._check_widget_extension(env.read_pins())
    assert check.status == "missing" and "jupyterlab-manager" in check.shown
    real = env._version
    monkeypatch.setattr(env, "_version", lambda dist: None if dist == "jupyterlab_widgets" else real(dist))
    assert "sliders will not show" in env._check_widget_extension({}).shown


def test_data_and_package_location(tmp_path):
    check = env._check_data(tmp_path)
    assert check.status == "missing" and "data/deepseek_v3_config.json" in check.shown and "git checkout" in check.fix
    other = env._check_package_location(tmp_path)  # a folder that is not this checkout
    assert other.status == "differs" and "not from a checkout" in other.shown
    assert str(env.REPO_ROOT) not in other.shown


def test_mask_path(tmp_path):
    assert env.mask_path(env.REPO_ROOT / "data" / "x.json") == "data/x.json"
    assert env.mask_path(Path.home() / "a" / "b", root=tmp_path).startswith("~/")
    assert env.mask_path("/", root=tmp_path) == "<outside the repository>"


def test_failure_examples_list_every_kind_of_failure():
    examples = env.failure_examples()
    assert all(not c.ok and c.fix for c in examples)
    assert {(c.name, c.status) for c in examples} == {
        ("python", "missing"), ("torch", "missing"), ("torch", "differs"), ("widget extension", "missing"),
        ("dsv3_edu", "differs"), ("data/", "missing")}
    assert any("cannot find @jupyter-widgets/jupyterlab-manager" in c.shown for c in examples)
    assert any("sliders will not show" in c.shown for c in examples)
