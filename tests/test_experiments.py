"""The experiment runner: its contract, the JSON shape, what it writes (and never overwrites), determinism,
clear errors, and the helpers the lessons use (load, summarize, plot)."""

import json
import math
import types

import pytest

import dsv3_edu.experiments as experiments
from dsv3_edu.experiments import runner
from dsv3_edu.files import OutputPathError


def fake_module(values=None):
    """A cheap experiment that follows the contract: the value is a function of (arm, seed) only."""
    values = values or {}

    def run(arm, seed, settings, progress):
        for i in range(3):
            progress(i, 3)
        progress(3, 3)
        value = values.get((arm, seed), settings["scale"] * (1 + seed) + (0.5 if arm == "b" else 0.0))
        return value, {"twice": 2 * value, "per_domain": {"x": seed}}

    return types.SimpleNamespace(
        NAME="balancing", QUESTION="Is b worse than a?", METRIC="a number", HIGHER_IS_BETTER=False,
        ARMS={"a": {"knob": 1}, "b": {"knob": 2}}, SEEDS=(0, 1, 2),
        settings=lambda quick: {"scale": 1.0, "quick": quick}, run=run)


@pytest.fixture
def fake(monkeypatch, tmp_path):
    """The runner sees the fake module as "balancing"; data/experiments is a temporary folder."""
    mod = fake_module()
    monkeypatch.setattr(runner, "module", lambda name: mod)
    monkeypatch.setattr(experiments, "RESULTS_DIR", tmp_path / "experiments")
    return mod


def test_full_run_writes_the_json_in_the_issue_shape(fake, tmp_path):
    res = runner.run_experiment("balancing", progress=False)
    path = tmp_path / "experiments" / "balancing.json"
    kept = json.loads(path.read_text())
    assert kept == json.loads(json.dumps(res))
    for key in ("experiment", "question", "metric", "higher_is_better", "command", "settings", "arms"):
        assert key in kept
    assert kept["experiment"] == "balancing" and kept["command"] == "python -m dsv3_edu.experiments balancing"
    assert kept["higher_is_better"] is False and kept["settings"] == {"scale": 1.0, "quick": False}
    a = kept["arms"]["a"]
    assert a["seeds"] == [0, 1, 2] and a["values"] == [1.0, 2.0, 3.0]
    assert a["mean"] == 2.0 and a["std"] == pytest.approx(1.0)  # sample std (ddof=1) of 1, 2, 3
    assert a["extra"] == {"twice": [2.0, 4.0, 6.0], "per_domain": [{"x": 0}, {"x": 1}, {"x": 2}]}
    assert a["arm_settings"] == {"knob": 1} and len(a["seconds"]) == 3
    assert kept["arms"]["b"]["values"] == [1.5, 2.5, 3.5]
    assert experiments.load("balancing") == kept


def test_an_existing_results_file_is_never_replaced_without_force(fake, tmp_path):
    runner.run_experiment("balancing", progress=False)
    path = tmp_path / "experiments" / "balancing.json"
    path.write_text(path.read_text().replace('"a number"', '"kept"'))
    with pytest.raises(OutputPathError, match="--force"):
        runner.run_experiment("balancing", progress=False)
    assert '"kept"' in path.read_text()
    runner.run_experiment("balancing", progress=False, force=True)
    assert '"kept"' not in path.read_text()


def test_partial_and_quick_runs_write_nothing_and_compare_with_the_record(fake, tmp_path, capsys):
    runner.run_experiment("balancing", progress=False)
    path = tmp_path / "experiments" / "balancing.json"
    before = path.read_text()
    capsys.readouterr()
    res = runner.run_experiment("balancing", arms=["b"], seeds=[1], progress=False)
    out = capsys.readouterr().out
    assert "b seed 1: recorded 2.5, new 2.5, relative difference 0.00e+00" in out
    assert res["recorded"] == {"b": {1: 2.5}} and res["command"].endswith("--arms b --seeds 1")
    runner.run_experiment("balancing", quick=True, progress=False)
    runner.run_experiment("balancing", seeds=[0, 1], progress=False)
    assert path.read_text() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["balancing.json"]
    # a changed value shows up as a relative difference
    mod = fake_module({("a", 0): 1.1})
    runner.module = lambda name: mod  # restored by monkeypatch (the fixture patched it first)
    runner.run_experiment("balancing", arms=["a"], seeds=[0], progress=False)
    assert "relative difference 1.00e-01" in capsys.readouterr().out


def test_quick_with_json_writes_there(fake, tmp_path):
    target = tmp_path / "quick.json"
    res = runner.run_experiment("balancing", quick=True, json_path=target, progress=False)
    assert json.loads(target.read_text())["arms"]["a"]["seeds"] == [0]  # the quick default: one seed
    assert res["arms"]["a"]["std"] is None and res["command"].endswith("--quick")
    assert not (tmp_path / "experiments").exists()


def test_bad_names_arms_seeds_and_jobs_say_what_to_do(fake):
    with pytest.raises(ValueError, match="no arm 'c': choose among a, b"):
        runner.run_experiment("balancing", arms=["c"], progress=False)
    with pytest.raises(ValueError, match="seed -1"):
        runner.run_experiment("balancing", seeds=[-1], progress=False)
    with pytest.raises(ValueError, match="twice"):
        runner.run_experiment("balancing", seeds=[0, 0], progress=False)
    with pytest.raises(ValueError, match="jobs"):
        runner.run_experiment("balancing", jobs=0, progress=False)


def test_unknown_experiment_and_missing_results():
    with pytest.raises(ValueError, match="unknown experiment 'nope': choose one of attention"):
        experiments.module("nope")
    with pytest.raises(FileNotFoundError, match="python -m dsv3_edu.experiments balancing"):
        experiments.load("balancing", path="/nonexistent/balancing.json")


def test_command_line_errors(capsys):
    for argv, message in ((["nope", "--quick"], "unknown experiment 'nope'"),
                          (["break_it", "--quick", "--arms", "bogus"], "no arm 'bogus'"),
                          (["break_it", "--quick", "--seeds", "a,b"], "comma-separated list")):
        with pytest.raises(SystemExit) as exc:
            runner.main(argv)
        assert exc.value.code == 2 and message in capsys.readouterr().err


def test_same_arm_and_seed_give_the_same_value_and_jobs_do_not_matter():
    kw = dict(arms=["half_split_rope"], seeds=[0, 1], quick=True, progress=False)
    one = runner.run_experiment("break_it", jobs=1, **kw)["arms"]["half_split_rope"]
    two = runner.run_experiment("break_it", jobs=2, **kw)["arms"]["half_split_rope"]  # each run in its own process
    assert one["values"] == two["values"] and one["extra"] == two["extra"]
    assert one["values"][0] != one["values"][1]  # the seed matters (it draws the validation blocks)


def test_mean_std_is_the_sample_std():
    assert experiments.mean_std([2.0]) == (2.0, None)
    mean, std = experiments.mean_std([1.0, 2.0, 4.0])
    assert mean == pytest.approx(7 / 3) and std == pytest.approx(math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2
                                                                            + (4 - 7 / 3) ** 2) / 2))


def _results(arms):
    out = {"experiment": "balancing", "metric": "loss", "higher_is_better": False, "arms": {}}
    for arm, values in arms.items():
        mean, std = experiments.mean_std(values)
        out["arms"][arm] = {"seeds": list(range(len(values))), "values": values, "mean": mean, "std": std,
                            "extra": {"maxvio": [v / 10 for v in values]}}
    return out


def test_summarize_compares_differences_with_the_seed_spread(capsys):
    res = _results({"base": [1.0, 1.1, 0.9], "close": [1.05, 1.15, 0.95], "far": [2.0, 2.1, 1.9]})
    rows = experiments.summarize(res, baseline="base")
    assert rows["base"]["diff"] is None
    assert rows["close"]["diff"] == pytest.approx(0.05) and rows["close"]["beyond_spread"] is False
    assert rows["far"]["beyond_spread"] is True and rows["far"]["better"] is False
    out = capsys.readouterr().out
    assert "close" in out and "within the seed spread" in out and "beyond the seed spread" in out
    assert experiments.conclusion(res, "close", "base") == (
        "close: 1.0500 ± 0.1000 against base: 1.0000 ± 0.1000 (3 seeds each): higher by 0.0500, "
        "within the seed spread, so these seeds show no difference.")
    assert experiments.conclusion(res, "far", "base").endswith("beyond the seed spread: far is worse on this metric.")
    assert experiments.extra_stats(res, "maxvio")["far"][0] == pytest.approx(0.2)
    with pytest.raises(ValueError, match="baseline 'x' is not an arm"):
        experiments.summarize(res, baseline="x", show=False)


def test_plot_draws_mean_and_std_from_the_results():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = _results({"a": [1.0, 2.0, 3.0], "b": [2.0, 2.0, 2.0]})
    ax = experiments.plot(res)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b"]
    ax = experiments.plot(res, x="maxvio")
    (line,) = ax.containers[0].lines[0].get_xydata()  # the first arm's point: (mean maxvio, mean value)
    assert tuple(line) == pytest.approx((0.2, 2.0))
    with pytest.raises(KeyError, match="no extra 'nope'"):
        experiments.plot(res, x="nope")
    plt.close("all")
