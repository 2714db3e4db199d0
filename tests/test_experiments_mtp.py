"""The MTP lambda experiment: a --quick smoke run of the script, its metrics, and the shipped results."""

import json

import pytest
import torch

from dsv3_edu import DeepSeekV3, ModelConfig, load_pretrained
from dsv3_edu.data import BlockDataset
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


def test_evaluate_mtp_matches_the_model_losses():
    torch.manual_seed(0)
    model = DeepSeekV3(ModelConfig.tiny(num_nextn_predict_layers=2))
    data = BlockDataset("validation", block_size=32)
    metrics = exp.evaluate_mtp(model, data, batch_size=4, blocks_per_domain=1)  # one batch: one block per domain
    assert model.training  # mode restored
    batch = next(iter(data.eval_batches(4, 1))).input_ids
    model.eval()
    with torch.no_grad():
        out = model(batch, labels=batch)
    assert metrics["main_loss"] == pytest.approx(float(out.main_loss), rel=1e-5)
    for k in (1, 2):
        assert metrics["mtp_loss"][k - 1] == pytest.approx(float(out.mtp_losses[k - 1]), rel=1e-5)
        pred = out.mtp_logits[k - 1][:, :-1].argmax(-1)
        acc = (pred == batch[:, k + 1 :]).float().mean()
        agree = (pred == out.logits[:, k:-1].argmax(-1)).float().mean()
        assert metrics["mtp_acc"][k - 1] == pytest.approx(float(acc))
        assert metrics["agree"][k - 1] == pytest.approx(float(agree))


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
