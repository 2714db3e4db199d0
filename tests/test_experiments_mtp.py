"""The MTP lambda experiment: a --quick smoke run of the script, its metrics, and the shipped results."""

import json

from dsv3_edu import load_pretrained
from dsv3_edu.experiments import mtp_lambda as exp


def test_quick_run_writes_results_and_the_depth2_model(tmp_path, capsys):
    assert exp.main(["--quick", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "3 runs in" in printed and "D=2 lambda=0.3" in printed
    results = json.loads((tmp_path / exp.RESULTS_FILE).read_text())
    assert results["quick"] is True and results["train_config"]["steps"] == exp.QUICK["steps"]
    assert [r["name"] for r in results["runs"]] == ["D1_lambda0_seed0", "D1_lambda0.3_seed0", "D2_lambda0.3_seed0"]
    for run in results["runs"]:
        final = run["final"]
        assert len(final["mtp_loss"]) == len(final["mtp_acc"]) == len(final["agree"]) == run["depth"]
        assert set(final["domains"]) == {"prose", "arithmetic", "code", "csv"}
        assert len(run["curve"]["main_loss"]) == exp.QUICK["steps"]
        assert run["val_curve"]["step"] == [3, 6]
        assert 0 < final["main_loss"] < 10 and 0 <= final["mtp_acc"][0] <= 1
    assert [(row["depth"], row["mtp_lambda"]) for row in results["summary"]] == [(1, 0.0), (1, 0.3), (2, 0.3)]
    model = load_pretrained(tmp_path / exp.model_dir_name(2, 0.3))
    assert len(model.mtp) == 2 and model.config.hidden_size == exp.MODEL["hidden_size"]


def test_shipped_results_support_the_lesson():
    results = exp.load_results()
    assert results["quick"] is False and results["lambdas"] == [0.0, 0.1, 0.3, 1.0]
    assert len(results["runs"]) == 2 * 4 + 1
    by = {(r["depth"], r["mtp_lambda"], r["seed"]): r["final"] for r in results["runs"]}
    for seed in results["seeds"]:
        assert by[(1, 0.0, seed)]["mtp_acc"][0] < 0.05  # an untrained MTP module drafts noise
        assert all(by[(1, lam, seed)]["mtp_acc"][0] > 0.5 for lam in (0.1, 0.3, 1.0))
        assert by[(1, 1.0, seed)]["main_loss"] > by[(1, 0.0, seed)]["main_loss"] + 0.05  # lambda=1 costs
    assert (exp.OUT_DIR / exp.model_dir_name(2, 0.3) / "config.json").exists()
